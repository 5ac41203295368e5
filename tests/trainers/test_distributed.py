"""Two gloo processes give the same parameters as one process on the same global batch:
one SFT step (DistributedDataParallel, launched with torchrun) and one PPO update (each rank
holding half of a fixed rollout, gradients all-reduced, advantages whitened globally)."""
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
from minirlhf.distributed import DistInfo
from minirlhf.trainers.pretrain import pretrain
from minirlhf.trainers.sft import sft

from tiny_configs import pretrain_cfg, sft_cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    torch.set_num_threads(1)
    pretrain(pretrain_cfg(out / "pt", steps=4))
    sft(sft_cfg(out / "pt" / "model", out / "sft", steps=2))
    return out


def test_one_sft_step_on_two_processes_equals_one_process(models, tmp_path):
    args = ["sft", "--init", str(models / "pt" / "model"), "--steps", "1", "--batch-size", "16", "--eval-every", "99",
            "--eval-prompts", "4", "--samples", "0", "--run.threads", "1", "--run.progress", "false",
            "--optim.grad-accum", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "minirlhf.cli", *args, "--run.out", str(tmp_path / "one")], check=True,
                   env=env, capture_output=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(free_port()), "-m", "minirlhf.cli", *args, "--run.out", str(tmp_path / "two")]
    done = subprocess.run(launch, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_tensors(tmp_path / "one" / "model" / "model.safetensors")
    b = load_tensors(tmp_path / "two" / "model" / "model.safetensors")
    start = load_tensors(models / "pt" / "model" / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the step moved the weights
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


def ppo_worker(rank, world, port, sft_folder, rollout_path, out_path):
    """One PPO update on this rank's half of a fixed rollout (or all of it when world == 1)."""
    torch.set_num_threads(1)
    d = DistInfo(rank, world, rank)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from minirlhf.rollout import Rollout
    from minirlhf.saving import load_model
    from minirlhf.policies import ActorCritic
    from minirlhf.trainers.ppo import PPOConfig, ppo_update
    from minirlhf.trainers.rl_run import compute_advantages
    from minirlhf.objectives import kl_penalized_rewards

    torch.manual_seed(0)
    cfg = PPOConfig(ppo_epochs=1,
                    minibatch_size=8, batch_size=8)
    policy, *_ = load_model(sft_folder)
    critic, *_ = load_model(sft_folder, kind="value")
    ac = ActorCritic(policy, "separate", critic)
    # SGD: Adam's first step is lr * sign(g), which turns float noise in near-zero gradients into
    # full-size differences; the gradient is what must agree.
    groups = [{"params": list(policy.parameters()), "lr": 0.5}, {"params": list(critic.parameters()), "lr": 0.5}]
    opt = torch.optim.SGD(groups)
    data = torch.load(rollout_path, weights_only=True)
    rows = list(range(rank, 8, world))
    r = Rollout(["p"] * len(rows), ["r"] * len(rows), data["input_ids"][rows], data["attention_mask"][rows],
                int(data["prompt_width"]), data["mask"][rows], data["ended"][rows], data["logprobs"][rows],
                data["ref_logprobs"][rows], data["values"][rows], data["scores"][rows])
    rewards, _ = kl_penalized_rewards(r.scores, r.logprobs, r.ref_logprobs, r.mask, 0.1)
    adv, ret = compute_advantages(cfg, rewards, r.values, r.mask, d)

    class Run:  # the bits of TrainingRun that ppo_update uses
        def check_finite(self, *a, **k):
            pass

        def autocast(self):
            return contextlib.nullcontext()

    ppo_update(cfg, ac, opt, r, adv, ret, r.ref_logprobs, 0.1, None, torch.Generator().manual_seed(0), Run(), 1, d)
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in ac.state_dict().items()}, out_path)
    if world > 1:
        dist.barrier()  # no rank leaves while another still talks to it (gloo aborts then)
        dist.destroy_process_group()
        os._exit(0)  # skip interpreter teardown, where gloo's threads can abort the process


def test_one_ppo_update_on_two_processes_equals_one_process(models, tmp_path):
    from minirlhf.rollout import response_logprobs, response_values, sample
    from minirlhf.saving import load_model

    policy, tok, template, _ = load_model(models / "sft" / "model")
    critic, *_ = load_model(models / "sft" / "model", kind="value")
    with torch.no_grad():
        critic.head.linear.weight.normal_(std=0.1)  # a critic with something to say
    prompts = ["Q: 3+4=\nA:", "Q: 9-2=\nA:", "Q: 5+5=\nA:", "Q: 7-7=\nA:", "Q: 1+8=\nA:", "Q: 6-3=\nA:",
               "Q: 2+2=\nA:", "Q: 9+9=\nA:"]
    r = sample(policy, tok, template, prompts, 4, 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = response_logprobs(policy, r)
        values = response_values(critic, r)
    torch.save({"input_ids": r.input_ids, "attention_mask": r.attention_mask, "prompt_width": torch.tensor(r.prompt_width),
                "mask": r.mask, "ended": r.ended, "logprobs": logp, "ref_logprobs": logp - 0.1 * torch.rand_like(logp),
                "values": values, "scores": torch.rand(8)}, tmp_path / "rollout.pt")
    from minirlhf.saving import save_model

    save_model(tmp_path / "sft", policy, tok, template)
    ppo_worker(0, 1, 0, str(tmp_path / "sft"), tmp_path / "rollout.pt", tmp_path / "one.pt")
    port = free_port()
    mp.spawn(ppo_worker, args=(2, port, str(tmp_path / "sft"), tmp_path / "rollout.pt", tmp_path / "two.pt"),
             nprocs=2, join=True)
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    b = torch.load(tmp_path / "two.pt", weights_only=True)
    start = dict(policy.state_dict())
    assert any(not torch.equal(a["policy." + k], start[k]) for k in start)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
