"""The benchmark and plot scripts run end to end at their smallest settings (their figures are not
checked here: speed is measured by running them, never asserted in tests)."""
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run(script, *args):
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("script, args, expect", [
    ("bench_model.py", ["--threads", "1", "--repeats", "1", "--configs", "TINY", "--matmul-n", "128"],
     "% of matmul"),
    ("bench_generate.py", ["--threads", "1", "--repeats", "1", "--configs", "TINY", "--batches", "1", "2",
                           "--new", "4", "--matmul-n", "128"], "minirlhf"),
    ("bench_trl.py", ["--threads", "1", "--repeats", "1", "--steps", "3", "--warmup", "1", "--matmul-n", "128"],
     "pairs/s"),
    ("bench_dpo.py", ["--threads", "1", "--repeats", "1", "--steps", "2", "--warmup", "1", "--modes", "lora"],
     "pairs/s"),
    ("bench_trpo.py", ["--threads", "1", "--repeats", "1", "--batch", "8", "--cg-iters", "2"], "TRPO update"),
    ("bench_ppo.py", ["--iterations", "3", "--skip-memory"], "update"),
])
def test_benchmark_runs(script, args, expect):
    assert expect in run(script, *args)


def test_make_gpt2_folder_writes_a_folder_that_minirlhf_import_reads(tmp_path):
    from minirlhf.importing import import_gpt2
    from minirlhf.tasks import get_task

    out = run("make_gpt2_folder.py", "--random", "--n-layer", "1", "--n-embd", "16", "--block-size", "32",
              "--out", str(tmp_path / "hf"), "--dolly", str(tmp_path / "dolly.jsonl"), "--test", str(tmp_path / "t.jsonl"))
    assert "max |logit difference| after the round trip" in out
    model, tok, _, _ = import_gpt2(tmp_path / "hf", tmp_path / "gpt2")
    assert model.config.n_layer == 1 and tok.eos_token == "<eos>"
    task = get_task("jsonl", sft=str(tmp_path / "dolly.jsonl"), test_prompts=str(tmp_path / "t.jsonl"))
    instruct = get_task("instruct")  # every demonstration and held-out prompt comes through the Dolly layout
    assert task.sft_rows("train") == instruct.sft_rows("train") and task.prompts("test") == instruct.prompts("test")


def test_bench_pipeline_runs_a_short_quick_pipeline(tmp_path):
    out = run("bench_pipeline.py", "--quick", "--out", str(tmp_path / "p"), "--threads", "1", "--eval-prompts", "16",
              "--matmul-n", "128", "--algorithms", "dpo",
              "--set", "sft.steps=4", "rm.steps=4", "dpo.steps=2", "collect.n_prompts=16")
    for stage in ("pretrain", "sft", "collect", "rm", "dpo", "compare", "total"):
        assert f"| {stage:8s} |" in out
    assert "of matmul" in out
