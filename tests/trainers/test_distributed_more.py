"""Two gloo processes give the same parameters as one process on the same global batch: one
reward-model step and one DPO step (torchrun, each rank its share of the pairs), one TRPO update
and one GRPO update (spawned processes, each holding half of a fixed rollout: whole groups for
GRPO; gradients and TRPO's Hessian-vector products all-reduced)."""
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minirlhf.checkpoint import load_tensors
from minirlhf.data import write_jsonl
from minirlhf.model import GPT, GPTConfig
from minirlhf.saving import save_model
from minirlhf.tasks import get_task

from tiny_configs import TASK

TINY_TASK = get_task(TASK.name, max_operand=9, max_test=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A tiny untrained GPT folder (its tokenizer and task recorded) and 32 preference pairs whose
    answers differ in length, so the two ranks' shares pad differently."""
    root = tmp_path_factory.mktemp("dist_more")
    tok = TINY_TASK.build_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=32))
    save_model(root / "gpt", model, tok, TINY_TASK.template(), meta={"task": {"name": TASK.name, "args": TASK.args}})
    rows = []
    for i, p in enumerate(TINY_TASK.prompts("train")[:32]):
        right = int(TINY_TASK.reference(p))
        rows.append({"prompt": p, "chosen": f" {right}", "rejected": f" {right + (11 if i % 2 else 1)}"})
    (root / "prefs").mkdir()
    write_jsonl(root / "prefs" / "train.jsonl", rows)
    return root


# Adam with eps = 1 moves each weight by about lr * g / (|g| + 1), smooth in g; with the default eps its
# first step is lr * sign(g), which turns float noise in near-zero gradients into full-size differences.
# No clipping: a clipped gradient would hide a wrong loss scale.
COMMON = ["--steps", "1", "--batch-size", "8", "--optim.grad-accum", "2", "--optim.eps", "1.0", "--optim.lr", "0.1",
          "--optim.warmup-steps", "0", "--optim.grad-clip", "0", "--run.threads", "1", "--run.progress", "false"]


def one_and_two_processes(command: list[str], tmp_path):
    """Run the CLI command once in one process and once under torchrun on 2 gloo processes; the saved weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "minirlhf.cli", *command, "--run.out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), "-m", "minirlhf.cli", *command, "--run.out", str(tmp_path / "two")]
    two = subprocess.run(launch, env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    return (load_tensors(tmp_path / "one" / "model" / "model.safetensors"),
            load_tensors(tmp_path / "two" / "model" / "model.safetensors"))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


def test_one_reward_model_step_on_two_processes_equals_one_process(init, tmp_path):
    a, b = one_and_two_processes(["rm", "--init", str(init / "gpt"), "--data", str(init / "prefs"),
                                  "--optim.weight-decay", "0", *COMMON], tmp_path)
    start = load_tensors(init / "gpt" / "model.safetensors")
    assert any(not torch.equal(a["backbone." + k], v) for k, v in start.items())  # the step moved the backbone
    assert_same(a, b)


def test_one_dpo_step_on_two_processes_equals_one_process(init, tmp_path):
    a, b = one_and_two_processes(["dpo", "--init", str(init / "gpt"), "--data", str(init / "prefs" / "train.jsonl"),
                                  "--eval-data", "none", "--eval-at-start", "false", "--eval-prompts", "2",
                                  "--eval-every", "99", *COMMON], tmp_path)
    start = load_tensors(init / "gpt" / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in start)  # the merged LoRA step moved the weights
    assert_same(a, b)
