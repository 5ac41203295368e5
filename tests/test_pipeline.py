"""The pipeline's wiring, its overrides and one end-to-end run on a tiny model."""
import json

import pytest

from minirlhf.cli import main as cli_main
from minirlhf.pipeline import (ALGORITHMS, ALL_ALGORITHMS, VARIANTS, PipelineConfig, command_line, parse_overrides,
                               results_table, stage_configs)


def test_overrides_parse_nested_keys_and_python_literals():
    assert parse_overrides(["ppo.iterations=80", "dpo.dpo.beta=0.2", "sft.lora.targets=['attn.q_proj']",
                            "collect.judge=noisy"]) == {
        "ppo": {"iterations": 80}, "dpo": {"dpo": {"beta": 0.2}}, "sft": {"lora": {"targets": ["attn.q_proj"]}},
        "collect": {"judge": "noisy"}}
    # booleans as the stages' own flags write them, and as Python does
    assert parse_overrides(["rm.share_prompt=false", "dpo.share_prompt=true", "rm.unique=False"]) == {
        "rm": {"share_prompt": False, "unique": False}, "dpo": {"share_prompt": True}}
    assert stage_configs(PipelineConfig(set=["rm.share_prompt=false"]))["rm"].share_prompt is False
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


def test_dtype_applies_to_the_supervised_stages_only(tmp_path, monkeypatch):
    import minirlhf.device as device
    from minirlhf.pipeline import SUPERVISED, precision_line

    def dtypes(**kw):
        configs = stage_configs(PipelineConfig(out=str(tmp_path), **kw))
        return {s: c.run.dtype for s, c in configs.items() if hasattr(c, "run")}

    assert set(dtypes(dtype="fp32").values()) == {"fp32"}
    got = dtypes(dtype="bf16", algorithms=["all"])
    assert set(SUPERVISED) == {"pretrain", "sft", "rm", "dpo"}
    assert {s for s, d in got.items() if d == "bf16"} == {"pretrain", "sft", "rm", "dpo", "kto", "orpo", "simpo"}
    assert all(got[a] == "fp32" for a in ("gspo", "dapo", "reinforce_pp"))
    assert all(got[a] == "fp32" for a in ("ppo", "trpo", "grpo", "rloo"))
    assert dtypes(dtype="bf16", set=["rm.run.dtype=fp32"])["rm"] == "fp32"  # --set has the last word
    assert set(dtypes().values()) == {"fp32"}  # the default, whatever the CPU
    assert precision_line(PipelineConfig()).startswith("Precision: pretrain, sft, rm, dpo in fp32 (--dtype fp32)")
    monkeypatch.setattr(device, "cpu_bf16_speedup", lambda: 0.5)  # a CPU that converts bf16 in software
    assert set(dtypes(dtype="auto").values()) == {"fp32"}
    assert "in fp32 (--dtype auto, no native bf16 here)" in precision_line(PipelineConfig(dtype="auto"))
    monkeypatch.setattr(device, "cpu_bf16_speedup", lambda: 3.0)
    assert dtypes(dtype="auto")["pretrain"] == "bf16" and dtypes(dtype="auto")["ppo"] == "fp32"
    assert "in bf16 autocast (--dtype auto on a CPU with native bf16 matmul)" in precision_line(PipelineConfig(dtype="auto"))
    with pytest.raises(ValueError, match="dtype"):
        stage_configs(PipelineConfig(out=str(tmp_path), dtype="fp16"))


def test_a_tiny_quick_pipeline_runs_every_stage_and_writes_the_table_and_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "p"
    tiny = ["pretrain.task.args=['max_operand=9', 'max_test=20']", "pretrain.model.n_layer=1",
            "pretrain.model.n_embd=32", "pretrain.model.n_head=2", "pretrain.steps=10", "sft.steps=4",
            "rm.steps=4", "dpo.steps=2", "collect.tie_policy=half"]  # a 10-step model is wrong on every test
            # question, so the gold judge ties every test pair: kept as half labels, the rm has held-out rows
    args = ["pipeline", "--quick", "--out", str(out), "--threads", "1", "--eval_prompts", "16"]
    cli_main(args + [x for item in tiny for x in ("--set", item)])
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"sft", *ALGORITHMS, "bon"}
    assert results["rows"]["sft"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-6)  # the SFT model against itself
    for alg in ALGORITHMS:
        assert 0.0 <= results["rows"][alg]["accuracy"] <= 1.0 and results["rows"][alg]["kl_to_sft"] >= 0.0
        assert (out / alg / "model").is_dir() and results["times"][alg] > 0
    text = (out / "results.md").read_text()
    assert text.startswith("# minirlhf pipeline: arithmetic (quick)") and "| ppo |" in text and "| dpo |" in text
    assert "Command: `minirlhf pipeline --out" in text and "Reward model (held-out pairs)" in text
    assert "\nPrecision: pretrain, sft, rm, dpo in " in text
    configs = {s: json.loads((out / s / "config.json").read_text()) for s in ("pretrain", "sft", "rm", "dpo")}
    assert configs["pretrain"]["model"]["n_layer"] == 1 and configs["pretrain"]["steps"] == 10  # every --set applied
    assert configs["sft"]["steps"] == 4 and configs["rm"]["steps"] == 4 and configs["dpo"]["steps"] == 2
    assert (out / "curves.png").stat().st_size > 0
    assert "| sft |" in capsys.readouterr().out


def test_mean_and_sample_sd_match_hand_numbers():
    from minirlhf.pipeline import mean_sd

    m, sd = mean_sd([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7) and sd == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert mean_sd([0.3]) == (0.3, 0.0)


def test_seeds_tables_give_mean_sd_per_cell_and_every_seed_row():
    from minirlhf.pipeline import seeds_tables

    def result(seed, acc, t):
        return {"seed": seed, "total": 10.0 * t, "times": {"pretrain": t, "ppo": 2 * t},
                "rows": {"sft": {"accuracy": 0.5, "accuracy_t1": 0.5, "kl_to_sft": 0.0},
                         "ppo": {"accuracy": acc, "accuracy_t1": acc - 0.1, "reward": 1.0, "kl_to_sft": 0.5},
                         "bon": {"accuracy": acc, "accuracy_t1": acc, "reward": 1.0, "kl_to_sft": 1.835,
                                 "kl_is_bound": True}},
                "rm": {"eval/accuracy": 0.9}}

    text = seeds_tables([result(0, 0.6, 1.0), result(1, 0.8, 3.0)], "accuracy")
    assert "Mean ± sd over 2 seeds (0, 1" in text
    # ppo accuracy: mean 0.7, sd sqrt(2 * 0.1**2 / 1) = 0.141; time: 2 and 6 -> 4 ± 3
    assert "| ppo | 0.700 ± 0.141 | 0.600 ± 0.141 | 1.000 ± 0.000 | 0.500 ± 0.000 | 4 ± 3 |" in text
    assert "| sft | 0.500 ± 0.000 | 0.500 ± 0.000 | - | 0.000 ± 0.000 | - |" in text
    assert "| 1 | ppo | 0.800 | 0.700 | 1.000 | 0.500 |" in text
    assert "| bon | 0.700 ± 0.141 | 0.700 ± 0.141 | 1.000 ± 0.000 | ≤ 1.835 ± 0.000 | - |" in text  # a bound
    assert "| 0 | bon | 0.600 | 0.600 | 1.000 | ≤ 1.835 |" in text
    assert "pretrain 2 ± 1s" in text and "eval/accuracy 0.900 ± 0.000" in text


def test_a_tiny_pipeline_over_two_seeds_writes_each_seed_and_the_summary(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "p"
    tiny = ["pretrain.task.args=['max_operand=9', 'max_test=20']", "pretrain.model.n_layer=1",
            "pretrain.model.n_embd=32", "pretrain.model.n_head=2", "pretrain.steps=6", "sft.steps=2",
            "rm.steps=2", "rloo.iterations=1", "collect.tie_policy=half"]
    args = ["pipeline", "--quick", "--out", str(out), "--threads", "1", "--eval_prompts", "8", "--algorithms", "rloo",
            "--seeds", "3", "5"]
    cli_main(args + [x for item in tiny for x in ("--set", item)])
    summary = json.loads((out / "results.json").read_text())
    assert summary["seeds"] == [3, 5] and [r["seed"] for r in summary["per_seed"]] == [3, 5]
    for seed in (3, 5):
        one = json.loads((out / f"seed-{seed}" / "results.json").read_text())
        assert one["seed"] == seed and set(one["rows"]) == {"sft", "rloo"}
        assert json.loads((out / f"seed-{seed}" / "sft" / "config.json").read_text())["run"]["seed"] == seed
    # different seeds pretrain different models
    a, b = (json.loads((out / f"seed-{s}" / "results.json").read_text())["rows"]["rloo"] for s in (3, 5))
    assert a != b
    text = (out / "results.md").read_text()
    assert "2 seeds" in text and "| 3 | rloo |" in text and "| 5 | sft |" in text and (out / "curves.png").is_file()
    from minirlhf.pipeline import pipeline

    with pytest.raises(ValueError, match="each seed once"):
        pipeline(PipelineConfig(seeds=[1, 1], out=str(tmp_path / "q")))
    assert not (tmp_path / "q").exists()  # refused before anything was written


def test_the_quick_bandit_pipeline_runs_every_stage(tmp_path):
    out = tmp_path / "b"
    cli_main(["pipeline", "--task", "bandit", "--quick", "--out", str(out), "--threads", "1", "--eval_prompts", "4",
              "--set", "pretrain.steps=40"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"sft", *ALGORITHMS, "bon"}
    for stage in ("pretrain", "sft", "rm", *ALGORITHMS):
        assert (out / stage / "model").is_dir(), stage
    assert (out / "prefs" / "train.jsonl").stat().st_size > 0
    assert (out / "results.md").read_text().startswith("# minirlhf pipeline: bandit (quick)")


def test_variants_run_their_base_command_with_fixed_options_and_their_own_folder(tmp_path):
    configs = stage_configs(PipelineConfig(out=str(tmp_path), algorithms=["all"],
                                           set=["kto.dpo.beta=0.5", "grpo.iterations=9", "dapo.iterations=4"]))
    assert set(VARIANTS) <= set(configs) and ALL_ALGORITHMS[: len(ALGORITHMS)] == ALGORITHMS
    for name, (base, _) in VARIANTS.items():
        assert type(configs[name]) is type(configs[base]) and configs[name].run.out == str(tmp_path / name)
    assert configs["kto"].dpo.loss_type == "kto" and configs["kto"].dpo.beta == 0.5  # --set on a variant
    assert configs["dpo"].dpo.loss_type == "sigmoid" and configs["dpo"].dpo.beta == 1.0  # the base is untouched
    assert configs["simpo"].dpo.loss_type == "simpo" and configs["simpo"].dpo.beta == 2.0
    assert configs["orpo"].dpo.loss_type == "orpo" and configs["orpo"].init == configs["dpo"].init
    assert configs["gspo"].ratio == "sequence" and configs["gspo"].iterations == 9  # the base's --set carries over
    assert configs["dapo"].dynamic_sampling and configs["dapo"].clip_eps_high == 0.28 and configs["dapo"].iterations == 4
    assert configs["reinforce_pp"].advantage == "reinforce_pp"
    assert "kto" not in stage_configs(PipelineConfig(out=str(tmp_path)))  # the default: the five and bon
    assert PipelineConfig().algorithms == [*ALGORITHMS, "bon"]
    with pytest.raises(ValueError, match="unknown.*choose from.*kto.*bon or all"):
        stage_configs(PipelineConfig(algorithms=["ppo", "dpo-but-better"]))
    with pytest.raises(ValueError, match="stage.key=value"):
        parse_overrides(["kto2.dpo.beta=1"])


def test_results_table_marks_the_best_of_n_kl_as_a_bound():
    rows = {"sft": {"accuracy": 0.5, "accuracy_t1": 0.4, "reward": 0.0, "kl_to_sft": 0.0},
            "bon": {"accuracy": 0.7, "accuracy_t1": 0.7, "reward": 1.0, "kl_to_sft": 1.835, "kl_is_bound": True, "n": 16}}
    text = results_table(rows, {"bon": 3.0}, "accuracy")
    assert "| bon | 0.700 | 0.700 | 1.000 | ≤ 1.835 | 3 |" in text and "log n - (n-1)/n" in text


def test_a_tiny_quick_pipeline_with_variants_and_best_of_n(tmp_path):
    import math

    out = tmp_path / "p"
    tiny = ["pretrain.task.args=['max_operand=9', 'max_test=20']", "pretrain.model.n_layer=1",
            "pretrain.model.n_embd=32", "pretrain.model.n_head=2", "pretrain.steps=6", "sft.steps=2",
            "rm.steps=2", "kto.steps=2", "simpo.steps=2", "gspo.iterations=1", "collect.tie_policy=half"]
    cli_main(["pipeline", "--quick", "--out", str(out), "--threads", "1", "--eval_prompts", "8", "--bon_n", "4",
              "--algorithms", "kto", "simpo", "gspo", "bon"] + [x for item in tiny for x in ("--set", item)])
    results = json.loads((out / "results.json").read_text())
    assert list(results["rows"]) == ["sft", "kto", "simpo", "gspo", "bon"]
    for name in ("kto", "simpo", "gspo"):
        assert (out / name / "model").is_dir() and results["times"][name] > 0
    assert json.loads((out / "kto" / "config.json").read_text())["dpo"]["loss_type"] == "kto"
    assert json.loads((out / "gspo" / "config.json").read_text())["ratio"] == "sequence"
    bon = results["rows"]["bon"]
    assert bon["accuracy"] == bon["accuracy_t1"] and 0.0 <= bon["accuracy"] <= 1.0
    assert bon["kl_to_sft"] == pytest.approx(math.log(4) - 3 / 4) and bon["kl_is_bound"]
    assert "| bon |" in (out / "results.md").read_text()


def test_results_table_adds_an_on_topic_column_only_when_the_task_reports_it():
    from minirlhf.pipeline import results_table

    rows = {"sft": {"accuracy": 0.5, "accuracy_t1": 0.4, "kl_to_sft": 0.0, "on_topic": 0.9},
            "ppo": {"accuracy": 0.6, "accuracy_t1": 0.5, "kl_to_sft": 0.1, "reward": 1.0, "on_topic": 0.88}}
    lines = results_table(rows, {"sft": 3.0}, "judge_score").splitlines()
    assert lines[0].endswith("| on topic (greedy) |") and lines[1].count("---") == 7
    assert lines[2].endswith("| 3 | 0.900 |") and lines[3].endswith("| - | 0.880 |")
    plain = results_table({"sft": {"accuracy": 0.5, "accuracy_t1": 0.4, "kl_to_sft": 0.0}}, {}, "accuracy")
    assert "on topic" not in plain


def test_results_md_examples_list_every_policys_answer_under_its_prompt():
    from minirlhf.pipeline import examples_section

    rows = {"sft": {"examples": {"What is rain?": "Rain is water.", "Why?": 'Because "so".'}},
            "ppo": {"examples": {"What is rain?": "Imagine rain!"}},
            "bon": {}}
    lines = examples_section(rows).splitlines()
    assert lines[0].startswith("Example answers to the first 2 held-out prompts")
    i = lines.index("**What is rain?**")
    assert lines[i + 2 : i + 4] == ['- sft: "Rain is water."', '- ppo: "Imagine rain!"']
    assert lines[lines.index("**Why?**") + 2 :] == ['- sft: "Because \\"so\\"."']


def test_seeds_tables_add_the_on_topic_column_when_a_seed_reports_it():
    from minirlhf.pipeline import seeds_tables

    def seed(s, on):
        return {"seed": s, "rows": {"sft": {"accuracy": 0.5, "accuracy_t1": 0.4, "kl_to_sft": 0.0, "on_topic": on}},
                "times": {"sft": 1.0}, "total": 2.0}

    text = seeds_tables([seed(0, 0.9), seed(1, 0.8)], "judge_score")
    assert "| on topic (greedy) |" in text and "| sft | 0.500 ± 0.000 | 0.400 ± 0.000 | - | 0.000 ± 0.000 | 0.850 ± 0.071 |" in text
    assert "| 1 | sft | 0.500 | 0.400 | - | 0.000 | 0.800 |" in text
    plain = seeds_tables([{**seed(0, 0), "rows": {"sft": {"accuracy": 0.5, "accuracy_t1": 0.4, "kl_to_sft": 0.0}}}],
                         "accuracy")
    assert "on topic" not in plain
