"""Two gloo processes give the same parameters as one process on the same global batch: one
reward-model step and one DPO step (torchrun, each rank its share of the pairs), one TRPO update
and one GRPO update (spawned processes, each holding half of a fixed rollout: whole groups for
GRPO; gradients and TRPO's Hessian-vector products all-reduced)."""
import contextlib
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


# ---------------------------------------------------------------------------------------------
# TRPO and GRPO: one update on a fixed rollout, split across spawned processes
# ---------------------------------------------------------------------------------------------


class Run:  # the bits of TrainingRun that the update functions use
    def check_finite(self, *a, **k):
        pass

    def autocast(self):
        return contextlib.nullcontext()


def load_rollout(path, rows):
    from minirlhf.rollout import Rollout

    data = torch.load(path, weights_only=True)
    n = data["input_ids"].shape[0]
    full = Rollout(["p"] * n, ["r"] * n, data["input_ids"], data["attention_mask"], int(data["prompt_width"]),
                   data["mask"], data["ended"], data["logprobs"], data["ref_logprobs"], data["values"], data["scores"])
    return full.select(rows)


def save_rollout(r, path, logp, values=None):
    torch.manual_seed(1)
    torch.save({"input_ids": r.input_ids, "attention_mask": r.attention_mask, "prompt_width": torch.tensor(r.prompt_width),
                "mask": r.mask, "ended": r.ended, "logprobs": logp, "ref_logprobs": logp - 0.1 * torch.rand_like(logp),
                "values": torch.randn_like(logp) if values is None else values,
                "scores": torch.randint(0, 2, (logp.shape[0],)).double().to(logp.dtype)}, path)


def spawn_or_call(worker, world, *args):
    """worker(rank, world, port, *args) in this process (world 1) or in ``world`` spawned gloo processes."""
    if world == 1:
        worker(0, 1, 0, *args)
    else:
        mp.spawn(worker, args=(world, free_port(), *args), nprocs=world, join=True)


def join(rank, world, port):
    from minirlhf.distributed import DistInfo

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    return DistInfo(rank, world, rank)


def grpo_worker(rank, world, port, folder, rollout_path, out_path):
    """One GRPO update per loss aggregation on this rank's groups of a fixed rollout (4 groups of 4)."""
    from minirlhf.objectives import broadcast_to_tokens, group_advantages
    from minirlhf.saving import load_model
    from minirlhf.trainers.grpo import GRPOConfig, grpo_update
    from minirlhf.policies import ActorCritic

    d = join(rank, world, port)
    G = 4
    rows = [g * G + j for g in range(rank, 4, world) for j in range(G)]  # whole groups: 0 and 2, or 1 and 3
    r = load_rollout(rollout_path, rows)
    adv = broadcast_to_tokens(group_advantages(r.scores, G), r.mask)
    out = {}
    for agg in ("seq_mean", "token_mean", "seq_sum_const"):
        policy, *_ = load_model(folder)
        cfg = GRPOConfig(group_size=G, minibatch_size=16, mu=1, loss_agg=agg, beta=0.1)
        opt = torch.optim.SGD(policy.parameters(), lr=0.5)
        grpo_update(cfg, ActorCritic(policy, "none"), opt, r, adv, 4, torch.Generator().manual_seed(0), Run(), 1, d)
        out.update({f"{agg}.{k}": v.detach().clone() for k, v in policy.state_dict().items()})
    if rank == 0:
        torch.save(out, out_path)
    if world > 1:
        dist.barrier()  # no rank leaves while another still talks to it (gloo aborts then)
        dist.destroy_process_group()
        os._exit(0)  # skip interpreter teardown, where gloo's threads can abort the process


def test_one_grpo_update_on_two_processes_equals_one_process(init, tmp_path):
    from minirlhf.rollout import response_logprobs, sample
    from minirlhf.saving import load_model

    policy, tok, template, _ = load_model(init / "gpt")
    prompts = ["Q: 3+4=\nA:", "Q: 9-2=\nA:", "Q: 15+5=\nA:", "Q: 7-7=\nA:"]  # prompts of different lengths
    r = sample(policy, tok, template, prompts, 4, 1.0, torch.Generator().manual_seed(0), num_samples=4)
    with torch.no_grad():
        save_rollout(r, tmp_path / "rollout.pt", response_logprobs(policy, r))
    assert r.mask.sum(-1).unique().numel() > 1  # responses of different lengths: the aggregations differ
    for world in (1, 2):
        spawn_or_call(grpo_worker, world, str(init / "gpt"), tmp_path / "rollout.pt", tmp_path / f"{world}.pt")
    a, b = torch.load(tmp_path / "1.pt", weights_only=True), torch.load(tmp_path / "2.pt", weights_only=True)
    start = policy.state_dict()
    assert all(any(not torch.equal(a[f"{agg}.{k}"], start[k]) for k in start)
               for agg in ("seq_mean", "token_mean", "seq_sum_const"))
    assert_same(a, b)


def trpo_worker(rank, world, port, folder, rollout_path, out_path):
    """One TRPO step and one critic pass on this rank's half of a fixed rollout of 8."""
    from minirlhf.objectives import kl_penalized_rewards
    from minirlhf.saving import load_model
    from minirlhf.policies import ActorCritic
    from minirlhf.trainers.rl_run import compute_advantages
    from minirlhf.trainers.trpo import TRPOConfig, fit_critic, trpo_update

    d = join(rank, world, port)
    r = load_rollout(rollout_path, list(range(rank, 8, world)))
    cfg = TRPOConfig(batch_size=8, critic_minibatch_size=8, critic_epochs=1, max_kl=0.02)
    policy, *_ = load_model(folder)
    policy.set_attention("reference")  # Hessian-vector products differentiate twice
    critic, *_ = load_model(folder, kind="value")
    actor = ActorCritic(policy, "none")
    with torch.no_grad():
        old_logits, _ = actor(r, cfg.temperature)
    rewards, _ = kl_penalized_rewards(r.scores, r.logprobs, r.ref_logprobs, r.mask, 0.1)
    adv, ret = compute_advantages(cfg, rewards, r.values, r.mask, d)  # whitened over both ranks
    stats = trpo_update(cfg, actor, list(policy.parameters()), r, old_logits, adv, d)
    critic_opt = torch.optim.SGD(critic.parameters(), lr=0.5)
    fit_critic(cfg, critic, critic_opt, r, ret, torch.Generator().manual_seed(0), Run(), 1, d)
    if rank == 0:
        torch.save({**{"policy." + k: v.detach().clone() for k, v in policy.state_dict().items()},
                    **{"critic." + k: v.detach().clone() for k, v in critic.state_dict().items()},
                    **{"stats." + k: torch.tensor(float(v)) for k, v in stats.items()}}, out_path)
    if world > 1:
        dist.barrier()  # no rank leaves while another still talks to it (gloo aborts then)
        dist.destroy_process_group()
        os._exit(0)  # skip interpreter teardown, where gloo's threads can abort the process


def test_one_trpo_update_on_two_processes_equals_one_process(init, tmp_path):
    from minirlhf.rollout import response_logprobs, sample
    from minirlhf.saving import load_model

    policy, tok, template, _ = load_model(init / "gpt")
    prompts = ["Q: 3+4=\nA:", "Q: 9-2=\nA:", "Q: 15+5=\nA:", "Q: 7-7=\nA:", "Q: 1+8=\nA:", "Q: 16-3=\nA:",
               "Q: 2+2=\nA:", "Q: 9+9=\nA:"]
    r = sample(policy, tok, template, prompts, 4, 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        save_rollout(r, tmp_path / "rollout.pt", response_logprobs(policy, r))
    for world in (1, 2):
        spawn_or_call(trpo_worker, world, str(init / "gpt"), tmp_path / "rollout.pt", tmp_path / f"{world}.pt")
    a, b = torch.load(tmp_path / "1.pt", weights_only=True), torch.load(tmp_path / "2.pt", weights_only=True)
    assert a["stats.step_frac"] > 0 and a["stats.step_frac"] == b["stats.step_frac"]  # the same accepted step
    start = policy.state_dict()
    assert any(not torch.equal(a["policy." + k], start[k]) for k in start)
    assert_same(a, b)
