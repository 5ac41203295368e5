"""minirlhf frontier: each method at several KL strengths from one pipeline folder, best-of-n against its
KL bound; and minirlhf report on a real pipeline's PPO run folder. Tiny models, a few seconds each."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from minirlhf.cli import main as cli_main
from minirlhf.frontier import METHODS, STRENGTHS, FrontierConfig, label, sweep

TINY = ["pretrain.task.args=['max_operand=9', 'max_test=20']", "pretrain.model.n_layer=1", "pretrain.model.n_embd=32",
        "pretrain.model.n_head=2", "pretrain.steps=10", "sft.steps=4", "rm.steps=4", "collect.tie_policy=half"]
SHORT = ["ppo.iterations=2", "trpo.iterations=2", "grpo.iterations=2", "rloo.iterations=2", "dpo.steps=2"]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    """A tiny `minirlhf pipeline --quick --algorithms ppo` folder: sft/model, rm/model, prefs/, ppo/."""
    out = tmp_path_factory.mktemp("frontier") / "pipeline"
    cli_main(["pipeline", "--quick", "--out", str(out), "--threads", "1", "--eval_prompts", "8",
              "--algorithms", "ppo", *_sets(TINY)])
    return out


def test_the_sweep_sets_each_methods_knob_and_refuses_bad_lists(tmp_path):
    cfg = FrontierConfig(from_dir=str(tmp_path / "p"), out=str(tmp_path / "f"), quick=True)
    runs = sweep(cfg)
    assert [name for _, _, name, _ in runs] == [label(m, s) for m in METHODS for s in (STRENGTHS[m][0], STRENGTHS[m][-1])]
    by_name = {name: c for _, _, name, c in runs}
    ppo = by_name["ppo-beta0.01"]
    assert ppo.kl.coef == 0.01 and ppo.kl.adaptive is False and ppo.iterations == 3  # the pipeline's --quick
    assert ppo.policy == str(tmp_path / "p" / "sft" / "model") and ppo.run.out == str(tmp_path / "f" / "ppo" / "ppo-beta0.01")
    assert by_name["trpo-delta0.1"].max_kl == 0.1 and by_name["dpo-beta3"].dpo.beta == 3.0
    rm = str(tmp_path / "p" / "rm" / "model")
    assert by_name["grpo-beta0.64"].beta == 0.64 and by_name["grpo-beta0.64"].reward == rm  # every RL run on the RM
    assert by_name["rloo-beta0.01"].beta == 0.01 and by_name["rloo-beta0.01"].reward == rm
    assert by_name["dpo-beta0.1"].data == str(tmp_path / "p" / "prefs" / "train.jsonl")
    assert len(sweep(FrontierConfig(from_dir="p", methods=["ppo"]))) == len(STRENGTHS["ppo"])  # no --quick: every one
    # the swept knob wins over --set; other --set items still apply
    one = sweep(FrontierConfig(from_dir="p", methods=["rloo"], rloo=[0.2], set=["rloo.beta=9", "rloo.iterations=5"]))
    assert one[0][3].beta == 0.2 and one[0][3].iterations == 5
    with pytest.raises(ValueError, match="unknown"):
        sweep(FrontierConfig(methods=["ppo", "sac"]))
    with pytest.raises(ValueError, match="each strength once"):
        sweep(FrontierConfig(methods=["dpo"], dpo=[0.1, 0.1]))
    with pytest.raises(ValueError, match="at least one"):
        sweep(FrontierConfig(methods=["grpo"], grpo=[]))


def test_frontier_quick_from_a_pipeline_folder(pipe, tmp_path):
    out = tmp_path / "front"
    cli_main(["frontier", str(pipe), "--quick", "--out", str(out), "--threads", "1", "--eval-prompts", "8",
              "--bon-prompts", "4", "--bon-samples", "8", *_sets(SHORT)])
    result = json.loads((out / "frontier.json").read_text())
    rows = result["rows"]
    names = [label(m, s) for m in METHODS for s in (STRENGTHS[m][0], STRENGTHS[m][-1])]
    assert set(rows) == {"sft", *names}
    assert rows["sft"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-6)
    table = (out / "frontier.md").read_text()
    for name in names:
        r = rows[name]
        assert math.isfinite(r["kl_to_sft"]) and r["kl_to_sft"] >= 0.0, name
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["accuracy_t1"] <= 1.0 and math.isfinite(r["reward"])
        assert f"| {name} | {r['method']} |" in table and (out / r["method"] / name / "model").is_dir()
    kl = json.loads((out / "ppo" / "ppo-beta0.3" / "config.json").read_text())["kl"]
    assert kl["coef"] == 0.3 and kl["adaptive"] is False
    # best-of-n: n = 1, 2, 4, 8; the KL of n = 1 is 0 and every KL is at most log n - (n-1)/n (a theorem,
    # here on each prompt's empirical distribution), and the expected best proxy score never falls as n grows
    bon = result["best_of_n"]
    assert [b["n"] for b in bon] == [1, 2, 4, 8]
    assert bon[0]["kl"] == pytest.approx(0.0, abs=1e-12) and bon[0]["kl_bound"] == 0.0
    for b in bon:
        assert 0.0 <= b["kl"] <= math.log(b["n"]) - (b["n"] - 1) / b["n"] + 1e-9
        assert 0.0 <= b["gold"] <= 1.0
    assert all(a["proxy"] <= b["proxy"] + 1e-9 for a, b in zip(bon, bon[1:]))
    # PPO's log along the run with the smallest beta
    assert result["ppo_run"] == "ppo-beta0.01" and [p["step"] for p in result["ppo_curve"]] == [1, 2]
    assert "## Over-optimisation" in table and "| 8 |" in table
    if importlib.util.find_spec("matplotlib") is None:  # an optional extra: no figures, the rest as above
        return
    assert (out / "frontier.png").stat().st_size > 0 and (out / "overoptimisation.png").stat().st_size > 0


def test_frontier_without_a_pipeline_folder_trains_its_own_start(tmp_path, capsys):
    out = tmp_path / "f"
    cli_main(["frontier", "--quick", "--out", str(out), "--threads", "1", "--eval-prompts", "4", "--methods", "rloo",
              "--rloo", "0.1", "--overopt", "false", *_sets(TINY + ["rloo.iterations=1"])])
    for stage in ("pretrain", "sft", "rm"):
        assert (out / stage / "model").is_dir(), stage
    rows = json.loads((out / "frontier.json").read_text())["rows"]
    assert set(rows) == {"sft", "rloo-beta0.1"} and rows["rloo-beta0.1"]["kl_to_sft"] >= 0.0
    assert cli_main(["frontier", str(tmp_path / "nothing"), "--out", str(tmp_path / "g"), "--methods", "rloo"]) == 1
    assert "expected a minirlhf pipeline folder" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_report_on_a_quick_pipelines_ppo_folder(pipe):
    """`minirlhf report runs/pipeline/ppo`: one page with the run's charts and its sampled responses."""
    done = subprocess.run([sys.executable, "-m", "minirlhf.cli", "report", str(pipe / "ppo")], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (pipe / "ppo" / "report.html").read_text(encoding="utf-8")
    for key in ("reward/score", "kl", "eval/accuracy"):
        assert f'aria-label="{key}"' in page, key
    assert "Sampled responses" in page and 'data-advantage="' in page and "config.json" in page
