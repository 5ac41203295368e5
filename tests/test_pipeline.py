"""The pipeline's wiring, its overrides and one end-to-end run on a tiny model."""
import json

import pytest

from minirlhf.cli import main as cli_main
from minirlhf.pipeline import ALGORITHMS, PipelineConfig, command_line, parse_overrides, stage_configs


def test_overrides_parse_nested_keys_and_python_literals():
    assert parse_overrides(["ppo.iterations=80", "dpo.dpo.beta=0.2", "sft.lora.targets=['attn.q_proj']",
                            "collect.judge=noisy"]) == {
        "ppo": {"iterations": 80}, "dpo": {"dpo": {"beta": 0.2}}, "sft": {"lora": {"targets": ["attn.q_proj"]}},
        "collect": {"judge": "noisy"}}
    for bad in ("ppo", "ppo=3", "nope.iterations=3"):
        with pytest.raises(ValueError, match="stage.key=value"):
            parse_overrides([bad])


def test_every_stage_starts_from_the_previous_stages_output(tmp_path):
    configs = stage_configs(PipelineConfig(out=str(tmp_path), set=["ppo.iterations=7"]))
    sft = str(tmp_path / "sft" / "model")
    assert configs["sft"].init == str(tmp_path / "pretrain" / "model")
    assert configs["collect"].policy == sft and configs["rm"].init == sft and configs["dpo"].init == sft
    assert configs["rm"].data == str(tmp_path / "prefs")
    for alg in ("ppo", "trpo", "grpo", "rloo"):
        assert configs[alg].policy == sft and configs[alg].run.out == str(tmp_path / alg)
    assert configs["ppo"].reward == configs["trpo"].reward == str(tmp_path / "rm" / "model")
    assert configs["ppo"].iterations == 7  # --set wins over the recipe and the defaults
    assert configs["rm"].unique and configs["sft"].lora.enabled  # the arithmetic recipe
    assert stage_configs(PipelineConfig(out=str(tmp_path), quick=True))["pretrain"].steps == 60
    with pytest.raises(ValueError, match="unknown"):
        stage_configs(PipelineConfig(algorithms=["ppo", "sac"]))
    with pytest.raises(ValueError, match="--task"):
        stage_configs(PipelineConfig(task="chess"))


def test_command_line_names_what_differs_from_the_defaults():
    assert command_line(PipelineConfig()) == "minirlhf pipeline"
    cfg = PipelineConfig(out="/tmp/a b", quick=True, algorithms=["ppo", "dpo"], set=["ppo.iterations=3"])
    assert command_line(cfg) == "minirlhf pipeline --out '/tmp/a b' --quick --algorithms ppo dpo --set ppo.iterations=3"


def test_a_tiny_quick_pipeline_runs_every_stage_and_writes_the_table_and_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "p"
    tiny = ["pretrain.task.args=['max_operand=9', 'max_test=20']", "pretrain.model.n_layer=1",
            "pretrain.model.n_embd=32", "pretrain.model.n_head=2", "pretrain.steps=10", "sft.steps=4",
            "rm.steps=4", "dpo.steps=2"]
    args = ["pipeline", "--quick", "--out", str(out), "--threads", "1", "--eval_prompts", "16"]
    cli_main(args + [x for item in tiny for x in ("--set", item)])
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"sft", *ALGORITHMS}
    assert results["rows"]["sft"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-6)  # the SFT model against itself
    for alg in ALGORITHMS:
        assert 0.0 <= results["rows"][alg]["accuracy"] <= 1.0 and results["rows"][alg]["kl_to_sft"] >= 0.0
        assert (out / alg / "model").is_dir() and results["times"][alg] > 0
    text = (out / "results.md").read_text()
    assert text.startswith("# minirlhf pipeline: arithmetic (quick)") and "| ppo |" in text and "| dpo |" in text
    assert "Command: `minirlhf pipeline --out" in text and "Reward model (held-out pairs)" in text
    assert (out / "curves.png").stat().st_size > 0
    assert "| sft |" in capsys.readouterr().out


def test_the_quick_bandit_pipeline_runs_every_stage(tmp_path):
    out = tmp_path / "b"
    cli_main(["pipeline", "--task", "bandit", "--quick", "--out", str(out), "--threads", "1", "--eval_prompts", "4",
              "--set", "pretrain.steps=40"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"sft", *ALGORITHMS}
    for stage in ("pretrain", "sft", "rm", *ALGORITHMS):
        assert (out / stage / "model").is_dir(), stage
    assert (out / "prefs" / "train.jsonl").stat().st_size > 0
    assert (out / "results.md").read_text().startswith("# minirlhf pipeline: bandit (quick)")
