"""The package as users install it: a wheel built from this tree, installed into a fresh virtual
environment, run from a folder outside the source tree.

The wheel must hold every module under minirlhf/ and the shipped instruct data; a missing
`__init__.py` or package-data entry would leave them out and only an installed copy would notice.
"""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def package_files() -> set[str]:
    """Every file the package needs at run time, as wheel member names: the modules and the data."""
    pkg = ROOT / "minirlhf"
    files = {p for p in pkg.rglob("*.py")}
    files |= {p for ext in ("*.jsonl", "*.txt", "*.json") for p in (pkg / "tasks" / "data").rglob(ext)}
    return {str(p.relative_to(ROOT)) for p in files if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # no build isolation: the setuptools of this environment (the test extra asks for >= 70.1, which
    # builds wheels by itself) builds it, with no download
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(out)], check=True, capture_output=True)
    wheels = list(out.glob("minirlhf-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_every_module_and_the_instruct_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = package_files()
    assert "minirlhf/trainers/ppo.py" in expected and "minirlhf/tasks/data/instruct/sft.jsonl" in expected
    assert "minirlhf/tasks/data/instruct/topics.json" in expected  # the on_topic metric reads it
    missing = sorted(expected - names)
    assert not missing, f"left out of the wheel: {missing}"


def test_the_installed_wheel_runs_both_quick_pipelines_outside_the_source_tree(wheel, tmp_path):
    pytest.importorskip("ensurepip", reason="this Python cannot make a virtual environment with pip "
                                            "(on Debian: apt install python3-venv)")
    # --system-site-packages lends the venv this environment's torch, numpy, tokenizers and matplotlib
    # (no download); the wheel itself goes into the venv, whose site-packages come first on sys.path.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    subprocess.run([str(bindir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MINIRLHF_DATA", "PYTHONPATH")}
    where = subprocess.run([str(bindir / "python"), "-c", "import minirlhf; print(minirlhf.__file__)"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), f"imported {where}, not the installed wheel"
    for task in ("arithmetic", "instruct"):
        run = subprocess.run([str(bindir / "minirlhf"), "pipeline", "--quick", "--task", task, "--threads", "1",
                              "--out", f"runs-{task}"], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"pipeline --quick --task {task} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        assert (elsewhere / f"runs-{task}" / "results.md").is_file()
