"""The same command on one process and on two (torchrun, gloo) ends with the same weights: whole
training loops, several iterations, through the real command line, for every trainer.

Sampling draws each response's randomness from (seed, iteration, the row's place in the global batch)
and minibatches are cut from the global batch, so the two runs see the same responses and the same
minibatches; what may differ is the order of floating-point sums. The settings would show a wrong
gradient scale: no gradient clipping, and AdamW with eps = 1, whose step is smooth in the gradient
(with the default eps the first step is lr * sign(g), which turns float noise into full-size steps).
"""
import pytest
import torch

from minirlhf.checkpoint import load_tensors
from minirlhf.saving import load_model, save_model

from test_distributed_more import init, one_and_two_processes  # noqa: F401  (init: a tiny GPT folder and pairs)

RUN = ["--run.threads", "1", "--run.progress", "false"]
SMOOTH = ["--optim.grad-clip", "0", "--optim.eps", "1.0", *RUN]
RL = ["--iterations", "3", "--max-new-tokens", "4", "--eval-every", "100", "--eval-prompts", "2", "--log-samples", "0"]


@pytest.fixture(scope="module")
def rm(init):  # noqa: F811
    """A reward model on the GPT's backbone with an untrained head: scores that differ between responses."""
    model, tok, template, meta = load_model(init / "gpt", kind="reward")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and p.shape[0] == 1:  # the scalar head
                p.normal_(0, 1.0)
    save_model(init / "rm", model, tok, template, meta)
    return init / "rm"


def assert_same_and_moved(a: dict, b: dict, start: dict, atol=1e-5):
    assert a.keys() == b.keys()
    moved = max(float((a[k] - start[k]).abs().max()) for k in start if k in a)
    assert moved > 1e-4, "the run did not move the weights: the comparison would prove nothing"
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize("command", [
    # minibatches of 4 and 2 rows cut from 8 global rows: each process holds 0 to all of a minibatch
    ["grpo", "--prompts-per-iteration", "4", "--group-size", "2", "--minibatch-size", "4", "--mu", "2",
     "--optim.lr", "0.05", *SMOOTH],
    ["rloo", "--prompts-per-iteration", "4", "--k", "2", "--optim.lr", "0.05", *SMOOTH],
    ["ppo", "--batch-size", "8", "--minibatch-size", "2", "--ppo-epochs", "2", "--critic-init", "policy",
     "--optim.lr", "0.05", *SMOOTH],
    ["trpo", "--batch-size", "8", "--critic-minibatch-size", "2", "--critic-init", "policy", "--max-kl", "0.05",
     "--critic-optim.grad-clip", "0", "--critic-optim.eps", "1.0", *RUN],
], ids=lambda c: c[0])
def test_rl_trainer_on_two_processes_equals_one_process(init, rm, tmp_path, command):  # noqa: F811
    argv = [command[0], "--policy", str(init / "gpt"), "--reward", str(rm), *command[1:], *RL]
    a, b = one_and_two_processes(argv, tmp_path)
    assert_same_and_moved(a, b, load_tensors(init / "gpt" / "model.safetensors"))


def test_sft_on_two_processes_equals_one_process(init, tmp_path):  # noqa: F811
    a, b = one_and_two_processes(["sft", "--init", str(init / "gpt"), "--steps", "3", "--batch-size", "8",
                                  "--eval-every", "100", "--eval-prompts", "2", "--samples", "0",
                                  "--optim.lr", "0.05", *SMOOTH], tmp_path)
    assert_same_and_moved(a, b, load_tensors(init / "gpt" / "model.safetensors"))


def test_reward_model_on_two_processes_equals_one_process(init, tmp_path):  # noqa: F811
    a, b = one_and_two_processes(["rm", "--init", str(init / "gpt"), "--data", str(init / "prefs"), "--steps", "3",
                                  "--batch-size", "8", "--optim.weight-decay", "0", "--optim.lr", "0.05", *SMOOTH],
                                 tmp_path)
    start = load_tensors(init / "gpt" / "model.safetensors")
    assert_same_and_moved(a, b, {"backbone." + k: v for k, v in start.items()})


def test_dpo_on_two_processes_equals_one_process(init, tmp_path):  # noqa: F811
    a, b = one_and_two_processes(["dpo", "--init", str(init / "gpt"), "--data", str(init / "prefs" / "train.jsonl"),
                                  "--eval-data", "none", "--eval-at-start", "false", "--eval-prompts", "2",
                                  "--eval-every", "99", "--steps", "3", "--batch-size", "8", "--optim.lr", "0.05",
                                  *SMOOTH], tmp_path)
    assert_same_and_moved(a, b, load_tensors(init / "gpt" / "model.safetensors"))


@pytest.fixture(scope="module")
def bandit_gpt(tmp_path_factory):
    """The bandit checks' reference policy (a one-layer GPT pretrained and fine-tuned on the bandit task,
    a few seconds): its samples are arms of distinct rewards, so the judge prefers one response of a
    pair strictly and online DPO has pairs to learn from."""
    from minirlhf.verify_trainers import build_reference

    before = torch.get_num_threads()
    try:
        return build_reference(tmp_path_factory.mktemp("bandit_reference"), pretrain_steps=200, sft_steps=50)
    finally:
        torch.set_num_threads(before)


def test_online_dpo_on_two_processes_equals_one_process(bandit_gpt, tmp_path):
    """Two rounds: each samples K responses per prompt from the current policy, judges the pairs and
    trains on them; the pairs of each round are the same on one process and on two."""
    from minirlhf.data import load_preferences
    from minirlhf.collection import round_file

    a, b = one_and_two_processes(["dpo", "--init", str(bandit_gpt), "--rounds", "2", "--steps-per-round", "2",
                                  "--prompts-per-round", "8", "--samples-per-prompt", "3", "--tie-policy", "half",
                                  "--lora.enabled", "false", "--eval-prompts", "2", "--eval-every", "99",
                                  "--eval-at-start", "false", "--batch-size", "8", "--optim.lr", "0.01",
                                  "--sample-temperature", "2.0", *SMOOTH], tmp_path)
    for r in (1, 2):
        pairs = load_preferences(round_file(tmp_path / "one", r))
        assert pairs and pairs == load_preferences(round_file(tmp_path / "two", r))
    assert_same_and_moved(a, b, load_tensors(bandit_gpt / "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# Resuming on the same number of processes, or another one
# ---------------------------------------------------------------------------------------------


def interrupted_after_first_checkpoint(done, part):
    """A copy of a finished run folder as a run that crashed after its checkpoint at iteration 1."""
    import shutil

    shutil.copytree(done, part)
    for ckpt in sorted((part / "checkpoints").glob("ckpt-*"))[1:]:
        shutil.rmtree(ckpt)
    shutil.rmtree(part / "model")


@pytest.mark.parametrize("first, then", [(2, 2), (2, 1), (1, 2)])
def test_a_run_resumed_on_any_number_of_processes_equals_the_uninterrupted_run(init, rm, tmp_path, first, then):  # noqa: F811
    import os
    import subprocess
    import sys

    from test_distributed_more import free_port

    argv = ["grpo", "--policy", str(init / "gpt"), "--reward", str(rm), "--prompts-per-iteration", "4",
            "--group-size", "2", "--minibatch-size", "4", "--optim.lr", "0.05", "--run.save-every", "1",
            "--run.keep-last", "5", *SMOOTH, *RL]

    def launch(procs, out, *extra):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        head = ([sys.executable, "-m", "minirlhf.cli"] if procs == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
                 str(free_port()), "-m", "minirlhf.cli"])
        done = subprocess.run(head + argv + ["--run.out", str(out), *extra], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    launch(first, tmp_path / "full")
    interrupted_after_first_checkpoint(tmp_path / "full", tmp_path / "part")
    launch(then, tmp_path / "part", "--run.resume", "true")
    a = load_tensors(tmp_path / "full" / "model" / "model.safetensors")
    b = load_tensors(tmp_path / "part" / "model" / "model.safetensors")
    assert_same_and_moved(a, b, load_tensors(init / "gpt" / "model.safetensors"))
