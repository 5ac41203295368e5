"""Nothing lost, nothing mixed: run folders, checked resumes, input kinds and one clean line per error.

One test per case of the issue that asked for them; where the point is that a folder survives, the
test compares every byte of it before and after."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import torch

from minirlhf.checkpoint import load_state
from minirlhf.cli import COMMANDS, main
from minirlhf.config import RANGES, _optional_inner
from minirlhf.heads import RewardModel
from minirlhf.saving import load_model, save_model
from minirlhf.trainers.pretrain import pretrain

from tiny_configs import pretrain_cfg

TASK = ["--task.name", "arithmetic", "--task.args", "max_operand=9", "max_test=20"]
QUIET = ["--run.progress", "false", "--run.log-every", "1000"]


def sft_args(init, out, *extra):
    return ["sft", "--init", str(init), "--run.out", str(out), "--batch-size", "8", "--eval-every", "100",
            "--eval-prompts", "4", "--samples", "0", *TASK, *QUIET, *extra]


def cli(capsys, *args) -> tuple[int, str]:
    """Run the command in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


def snapshot(folder) -> dict[str, bytes]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny pretrained GPT, a reward model folder made from it, and a preference file."""
    root = tmp_path_factory.mktemp("run_folders")
    torch.set_num_threads(1)
    pretrain(pretrain_cfg(root / "pt", steps=4))
    gpt, tok, template, meta = load_model(root / "pt" / "model")
    torch.manual_seed(0)
    save_model(root / "rm", RewardModel(gpt), tok, template, meta)
    return root


@pytest.fixture
def A(models, tmp_path, capsys):
    """A finished sft run with checkpoints at steps 2 and 4."""
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", tmp_path / "A", "--steps", "4", "--run.save-every", "2"))
    assert rc == 0, err
    return tmp_path / "A"


# ---------------------------------------------------------------- 1. a rerun never overwrites part of a run

def test_rerun_into_a_run_folder_is_refused_and_leaves_it_intact(models, A, capsys):
    before = snapshot(A)
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", A, "--steps", "2"))
    assert rc == 1
    assert "already holds a run" in err and "--run.resume true" in err and "--run.overwrite true" in err
    assert "Traceback" not in err
    assert snapshot(A) == before


def test_overwrite_replaces_the_run_whole(models, A, capsys):
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", A, "--steps", "2", "--run.overwrite", "true"))
    assert rc == 0, err
    assert [p.name for p in (A / "checkpoints").glob("ckpt-*")] == ["ckpt-00000002"]
    assert len((A / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((A / "config.json").read_text())["steps"] == 2


def test_overwrite_refuses_a_folder_that_holds_no_run(models, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", tmp_path / "mine", "--steps", "1",
                                    "--run.overwrite", "true"))
    assert rc == 1 and "refusing to delete" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_collect_into_an_existing_output_is_refused(models, tmp_path, capsys):
    out = tmp_path / "prefs"
    args = ["collect", "--policy", models / "pt" / "model", "--out", out, "--n-prompts", "4", "--n-test-prompts", "4",
            "--k", "2", "--max-new-tokens", "3", *TASK]
    rc, err = cli(capsys, *args)
    assert rc == 0, err
    before = snapshot(out)
    rc, err = cli(capsys, *args[:-len(TASK)], "--n-prompts", "1", *TASK)
    assert rc == 1 and "--overwrite true" in err
    assert snapshot(out) == before
    rc, err = cli(capsys, *args, "--overwrite", "true")
    assert rc == 0, err


# ---------------------------------------------------------------- 2. a run that fails early changes nothing

def test_a_failing_run_leaves_the_old_run_untouched(models, A, tmp_path, capsys):
    before = snapshot(A)
    # rejected while the options are read
    rc, err = cli(capsys, "ppo", "--policy", A / "model", "--reward", "verifier", "--run.out", A, "--temperature", "0",
                  "--run.overwrite", "true", *TASK)
    assert rc == 2 and "--temperature" in err
    # rejected when the data is loaded, after the run folder was checked: --run.overwrite waits for it
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", A, "--steps", "2", "--run.overwrite", "true",
                                    "--data", empty))
    assert rc == 1 and str(empty) in err and "no usable sft rows" in err
    assert snapshot(A) == before


# ---------------------------------------------------------------- 3. resume checks the folder

def test_resume_refuses_a_changed_setting_and_names_it(models, A, capsys):
    before = snapshot(A)
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", A, "--steps", "4", "--run.save-every", "2",
                                    "--run.resume", "true", "--optim.lr", "0.01"))
    assert rc == 1 and "optim.lr (0.001 -> 0.01)" in err
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", A, "--steps", "4", "--run.save-every", "2",
                                    "--run.resume", "true", "--lora.enabled", "true"))
    assert rc == 1 and "lora.enabled" in err
    assert snapshot(A) == before
    # what may change on resume does not stop it
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", A, "--steps", "4", "--run.save-every", "3",
                                    "--run.resume", "true", "--run.threads", "1", "--run.keep-last", "3"))
    assert rc == 0, err
    assert "resumed from" in err


def test_resume_uses_only_the_checkpoints_of_its_own_run(models, A, capsys):
    run_id = json.loads((A / "run.json").read_text())["id"]
    assert load_state(A / "checkpoints" / "ckpt-00000004" / "state.pt")["run_id"] == run_id
    # a new run that recorded itself in the folder and stopped before its first checkpoint
    (A / "run.json").write_text(json.dumps({"id": "0" * 32, "command": "sft"}))
    before = snapshot(A)
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", A, "--steps", "4", "--run.save-every", "2",
                                    "--run.resume", "true"))
    assert rc == 1 and "ckpt-00000004 was written by another run" in err
    assert snapshot(A) == before


def test_resume_of_a_different_command_is_refused(models, A, capsys):
    rc, err = cli(capsys, "pretrain", "--run.out", A, "--run.resume", "true", *TASK)
    assert rc == 1 and "holds a sft run, not a pretrain run" in err


# ---------------------------------------------------------------- 4. the output is never an input

@pytest.mark.parametrize("where", ["same", "holds"])
def test_out_may_not_be_an_input(models, tmp_path, capsys, where):
    init = tmp_path / "parent" / "init"
    shutil.copytree(models / "pt" / "model", init)
    before = snapshot(init)
    out = init if where == "same" else init.parent
    rc, err = cli(capsys, *sft_args(init, out, "--steps", "1", "--run.overwrite", "true"))
    assert rc == 1 and "--init" in err
    assert snapshot(init) == before


# ---------------------------------------------------------------- 5. wrong kinds of model

@pytest.mark.parametrize("command", ["ppo", "trpo", "grpo", "rloo"])
def test_reward_option_needs_a_reward_model(models, tmp_path, capsys, command):
    pt = models / "pt" / "model"
    rc, err = cli(capsys, command, "--policy", pt, "--reward", pt, "--run.out", tmp_path / "r", *TASK)
    assert rc == 1 and "holds a language model" in err and "needs a reward model" in err
    rc, err = cli(capsys, command, "--policy", pt, "--reward", "verifer", "--run.out", tmp_path / "r", *TASK)
    assert rc == 1 and "verifer: no such folder" in err and "verifier" in err
    assert not (tmp_path / "r").exists()


def test_reward_model_must_share_the_policy_tokenizer(models, tmp_path, capsys):
    other = tmp_path / "other_rm"
    shutil.copytree(models / "rm", other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["alphabet"][-1] = "Z"  # same size, another character
    (other / "tokenizer.json").write_text(json.dumps(tok))
    rc, err = cli(capsys, "ppo", "--policy", models / "pt" / "model", "--reward", other, "--run.out", tmp_path / "r",
                  *TASK)
    assert rc == 1 and f"--reward {other}" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_policy_options_refuse_a_reward_model(models, tmp_path, capsys):
    rc, err = cli(capsys, *sft_args(models / "rm", tmp_path / "s", "--steps", "1"))
    assert rc == 1 and "holds a reward model" in err
    rc, err = cli(capsys, "generate", "--model", models / "rm", "--n", "1")
    assert rc == 1 and "holds a reward model" in err
    rc, err = cli(capsys, "generate", "--model", models / "pt", "--n", "1")
    assert rc == 1 and "a run folder, not a model folder" in err


def test_a_folder_without_a_kind_is_read_from_its_weights(models, tmp_path, capsys):
    from minirlhf.folders import folder_kind

    for name, kind in (("pt/model", "gpt"), ("rm", "reward")):
        old = tmp_path / name.replace("/", "_")
        shutil.copytree(models / name, old)
        config = json.loads((old / "config.json").read_text())
        del config["kind"]
        (old / "config.json").write_text(json.dumps(config))
        assert folder_kind(old) == kind
        assert type(load_model(old)[0]).__name__ == {"gpt": "GPT", "reward": "RewardModel"}[kind]
    rc, err = cli(capsys, *sft_args(tmp_path / "rm", tmp_path / "s", "--steps", "1"))
    assert rc == 1 and "holds a reward model" in err


# ---------------------------------------------------------------- 6. bad numbers

@pytest.mark.parametrize("args", [
    ["sft", "--optim.lr", "inf"], ["ppo", "--optim.lr", "-1"], ["sft", "--steps", "-5"], ["sft", "--epochs", "-1"],
    ["ppo", "--minibatch-size", "0"], ["generate", "--n", "-2"], ["dpo", "--max-pairs", "-5"],
    ["sft", "--run.threads", "-2"], ["sft", "--run.save-every", "-1"], ["sft", "--optim.warmup-steps", "-5"],
    ["sft", "--batch-size", "0"], ["sft", "--optim.grad-accum", "0"], ["generate", "--temperature", "nan"],
])
def test_out_of_range_numbers_exit_2(capsys, tmp_path, args):
    rc, err = cli(capsys, *args, *(["--run.out", tmp_path / "x"] if args[0] != "generate" else []))
    assert rc == 2 and args[1] in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_empty_data_is_an_error(models, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", tmp_path / "s", "--data", empty))
    assert rc == 1 and f"{empty}: no usable sft rows" in err
    rc, err = cli(capsys, "dpo", "--init", models / "pt" / "model", "--data", empty, "--run.out", tmp_path / "d",
                  *TASK, *QUIET)
    assert rc == 1 and f"{empty}: no usable preference rows" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def test_a_diverged_run_never_saves_nan_weights(models, tmp_path):
    from minirlhf.trainers.common import NonFiniteError
    from minirlhf.trainers.sft import sft

    from tiny_configs import sft_cfg

    cfg = sft_cfg(models / "pt" / "model", tmp_path / "nan", steps=1)
    cfg.optim.lr = float("inf")  # past the command line's check, as a program could
    with pytest.raises(FloatingPointError):
        sft(cfg)
    assert not (tmp_path / "nan" / "model").exists()
    assert not list((tmp_path / "nan").glob("checkpoints/ckpt-*"))
    assert issubclass(NonFiniteError, FloatingPointError)


# ---------------------------------------------------------------- 7. errors are one line, not tracebacks

def test_bad_inputs_give_one_line_naming_the_file(models, tmp_path, capsys):
    pt = models / "pt" / "model"
    cases = {}
    cases["missing"] = (tmp_path / "nowhere", "nowhere: no such")
    truncated = tmp_path / "truncated"
    shutil.copytree(pt, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (truncated, "model.safetensors")
    notjson = tmp_path / "notjson"
    shutil.copytree(pt, notjson)
    (notjson / "config.json").write_text("{not json")
    cases["notjson"] = (notjson, "config.json")
    notok = tmp_path / "notok"
    shutil.copytree(pt, notok)
    (notok / "tokenizer.json").unlink()
    cases["notok"] = (notok, "no tokenizer.json")
    for name, (init, expected) in cases.items():
        rc, err = cli(capsys, *sft_args(init, tmp_path / f"out_{name}", "--steps", "1"))
        assert rc == 1 and expected in err and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) <= 2, err
        assert not (tmp_path / f"out_{name}").exists()
    rc, err = cli(capsys, "sft", "--config", tmp_path / "run.toml")
    assert rc == 2 and "run.toml: no such TOML file" in err
    with pytest.raises(FileNotFoundError):  # --debug shows the real error
        main(sft_args(tmp_path / "nowhere", tmp_path / "o", "--debug"))


def _write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_sft_and_dpo_skip_and_list_bad_rows_with_file_and_line(models, tmp_path, capsys):
    good = {"prompt": "Q: 1+2=\nA:", "response": " 3"}
    rows = [good] * 4 + ["{broken", {"prompt": "Q: 1+2=\nA:", "response": " \u00e9\u00e9"}] + [good] * 3
    data = tmp_path / "sft.jsonl"
    _write_rows(data, rows)
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", tmp_path / "s", "--steps", "1", "--data", data))
    assert rc == 0, err
    assert "skipped 2 bad row(s), kept 7" in err and f"{data}:5:" in err and f"{data}:6:" in err
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", tmp_path / "s2", "--steps", "1", "--data", data,
                                    "--on-bad-row", "raise"))
    assert rc == 1 and f"{data}:5:" in err and "Traceback" not in err
    pair = {"prompt": "Q: 1+2=\nA:", "chosen": " 3", "rejected": " 4"}
    prefs = tmp_path / "prefs.jsonl"
    _write_rows(prefs, [pair] * 3 + [{**pair, "rejected": " 3"}, {**pair, "chosen": " \u00e9"}] + [pair] * 2)
    rc, err = cli(capsys, "dpo", "--init", models / "pt" / "model", "--data", prefs, "--eval-data", "none",
                  "--steps", "1", "--batch-size", "2", "--eval-prompts", "2", "--eval-at-start", "false",
                  "--run.out", tmp_path / "d", *TASK, *QUIET)
    assert rc == 0, err
    assert "skipped 2 bad row(s), kept 5" in err and f"{prefs}:4:" in err and f"{prefs}:5:" in err


# ---------------------------------------------------------------- fuzz: every command, random bad numbers

def _numeric_leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        inner = _optional_inner(tp) or tp
        if is_dataclass(inner):
            yield from _numeric_leaves(inner, f"{prefix}{f.name}.")
        elif inner in (int, float) and f.init:
            yield f"{prefix}{f.name}", inner, f.metadata.get("range") or RANGES.get(
                f"{cls.__name__}.{f.name}") or RANGES.get(f.name)


def _bad_values(tp, r):
    out = ["nan", "inf", "-inf"] if tp is float else ["1.5"]
    if r is not None:
        low, low_open, high, high_open = r
        if low is not None:
            out.append(str(low if low_open else low - 1) if tp is float or not low_open else str(low))
        if high is not None:
            out.append(str(high if high_open else high + 1))
    return out


def test_fuzz_every_command_rejects_out_of_range_values_with_exit_2(capsys, tmp_path):
    import importlib

    rng = random.Random(18)
    tried = 0
    for command, (module, cls_name, _, _) in COMMANDS.items():
        cls = getattr(importlib.import_module(module), cls_name)
        cases = [(key, v) for key, tp, r in _numeric_leaves(cls) for v in _bad_values(tp, r)]
        if command == "import":  # paths, a template and flags: no number to get wrong
            assert not cases
            continue
        assert cases, command
        for key, value in rng.sample(cases, min(8, len(cases))):
            flag = "--" + key.replace("_", "-")
            rc, err = cli(capsys, command, f"{flag}={value}")
            assert rc == 2, (command, flag, value, err)
            assert "Traceback" not in err and flag in err, (command, flag, value, err)
            tried += 1
    assert tried > 50
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- signals

def _check_stopped_run(out, err):
    assert "Traceback" not in err and "--run.resume true" in err
    ckpts = list((out / "checkpoints").glob("ckpt-*"))
    assert len(ckpts) == 1
    step = int(ckpts[0].name.split("-")[1])
    assert step >= 2 and f"step {step}" in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == step


def test_ctrl_c_saves_a_checkpoint_and_exits_130(models, tmp_path, capsys):
    import threading

    out = tmp_path / "int"
    metrics = out / "metrics.jsonl"

    def interrupt():
        deadline = time.time() + 60
        while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", out, "--steps", "100000"))
    assert rc == 130, err
    _check_stopped_run(out, err)
    assert signal.getsignal(signal.SIGINT) is before  # the run's handler is gone with it
    rc, err = cli(capsys, *sft_args(models / "pt" / "model", out, "--steps", "100000", "--run.resume", "true",
                                    "--optim.lr", "0.5"))
    assert rc == 1 and "optim.lr" in err


def test_sigterm_saves_a_checkpoint_and_exits_143(models, tmp_path):
    signum, code = signal.SIGTERM, 143
    out = tmp_path / "sig"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "minirlhf.cli", *sft_args(models / "pt" / "model", out, "--steps", "100000",
                                                            "--run.threads", "1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        metrics = out / "metrics.jsonl"
        while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    _check_stopped_run(out, err)
