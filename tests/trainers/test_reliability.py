"""A run killed with SIGKILL resumes to the same result; a NaN stops the run and keeps the last
good checkpoint; a checkpoint that would run code is refused."""
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from minirlhf.checkpoint import CheckpointManager, UnsafeCheckpointError, load_state, load_tensors
from minirlhf.logger import read_metrics
from minirlhf.trainers.common import NonFiniteError
from minirlhf.trainers.pretrain import pretrain
from minirlhf.trainers.sft import sft

from tiny_configs import pretrain_cfg, sft_cfg


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability")
    torch.set_num_threads(1)
    pretrain(pretrain_cfg(out / "pt", steps=4))
    return out / "pt" / "model"


def sft_command(init, out, steps, *extra):
    return [sys.executable, "-m", "minirlhf.cli", "sft", "--init", str(init), "--run.out", str(out),
            "--steps", str(steps), "--batch-size", "8", "--eval-every", "4", "--eval-prompts", "4", "--samples", "0",
            "--run.save-every", "1", "--run.threads", "1", "--run.progress", "false", *extra]


def sigkill_then_resume(command, tmp_path, total: int, kill_after: int, env: dict, dropped) -> dict:
    """Run ``command(out, total, *extra)`` whole in <tmp>/full; run it again in <tmp>/killed, SIGKILL it once
    it has a checkpoint at step ``kill_after`` or later, resume it. Returns the step it was killed at and,
    for both runs, the metrics (less the keys ``dropped`` names) and the final weights."""
    subprocess.run(command(tmp_path / "full", total), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(command(tmp_path / "killed", total), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manager = CheckpointManager(tmp_path / "killed" / "checkpoints")
    deadline = time.time() + 120
    while (manager.latest_step() or 0) < kill_after and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; raise the step count"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = manager.latest_step()
    subprocess.run(command(tmp_path / "killed", total, "--run.resume", "true"), check=True, env=env,
                   capture_output=True)
    runs = {}
    for name in ("full", "killed"):
        metrics = [{k: v for k, v in r.items() if not dropped(k)} for r in read_metrics(tmp_path / name)]
        runs[name] = (metrics, load_tensors(tmp_path / name / "model" / "model.safetensors"))
    return {"killed_at": killed_at, **runs}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(base, tmp_path):
    r = sigkill_then_resume(lambda out, steps, *extra: sft_command(base, out, steps, *extra), tmp_path, total=40,
                            kill_after=5, env={**os.environ, "PYTHONUNBUFFERED": "1"}, dropped=lambda k: k == "time")
    assert 5 <= r["killed_at"] < 40  # killed mid-run, after a checkpoint
    (full_metrics, full_weights), (killed_metrics, killed_weights) = r["full"], r["killed"]
    assert full_metrics == killed_metrics and len(full_metrics) > 0
    assert same_weights(full_weights, killed_weights)


def test_nan_stops_the_run_naming_step_and_quantity_and_keeps_the_last_checkpoint(base, tmp_path, monkeypatch):
    import minirlhf.trainers.sft as sft_module

    real_loss, calls = sft_module.next_token_loss, {"n": 0}

    def loss_that_turns_nan(*args, **kw):
        loss = real_loss(*args, **kw)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(sft_module, "next_token_loss", loss_that_turns_nan)
    cfg = sft_cfg(base, tmp_path / "nan", steps=6, save_every=1)
    with pytest.raises(NonFiniteError, match=r"step 3: loss is not finite.*ckpt-00000002"):
        sft(cfg)
    manager = CheckpointManager(tmp_path / "nan" / "checkpoints")
    assert manager.latest_step() == 2
    weights = load_tensors(manager.latest() / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert load_state(manager.latest() / "state.pt")["step"] == 2
    assert not (tmp_path / "nan" / "model").exists()  # no final model from a broken run


class WouldRunCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the crafted file is protocol 4, on purpose
def test_a_checkpoint_that_would_run_code_is_refused(base, tmp_path):
    cfg = sft_cfg(base, tmp_path / "run", steps=2, save_every=1)
    sft(cfg)
    latest = CheckpointManager(tmp_path / "run" / "checkpoints").latest()
    marker = tmp_path / "pwned"
    with open(latest / "state.pt", "wb") as f:  # an attacker replaces the training state
        pickle.dump({"step": WouldRunCode(str(marker))}, f)
    cfg.run.resume = True
    with pytest.raises(UnsafeCheckpointError):
        sft(cfg)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# The same guarantees in an RL trainer (PPO: policy, critic, optimizer, KL controller, two generators)
# ---------------------------------------------------------------------------------------------


def ppo_command(policy, out, iterations, *extra):
    return [sys.executable, "-m", "minirlhf.cli", "ppo", "--policy", str(policy), "--reward", "verifier",
            "--run.out", str(out), "--iterations", str(iterations), "--batch-size", "4", "--minibatch-size", "2",
            "--ppo-epochs", "1", "--max-new-tokens", "4", "--eval-every", "1000", "--eval-prompts", "4",
            "--run.save-every", "1", "--run.threads", "1", "--run.progress", "false", *extra]


def test_ppo_killed_with_sigkill_then_resumed_gives_the_uninterrupted_result(base, tmp_path):
    r = sigkill_then_resume(lambda out, iterations, *extra: ppo_command(base, out, iterations, *extra), tmp_path,
                            total=40, kill_after=3, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
                            dropped=lambda k: k.startswith("time"))
    assert 3 <= r["killed_at"] < 40  # killed mid-run, after a checkpoint
    (full_metrics, full_weights), (killed_metrics, killed_weights) = r["full"], r["killed"]
    assert full_metrics == killed_metrics and len(full_metrics) > 0
    assert same_weights(full_weights, killed_weights)


def test_a_nan_in_the_ppo_loss_stops_the_run_and_keeps_the_last_checkpoint(base, tmp_path, monkeypatch):
    import minirlhf.trainers.ppo as ppo_module
    from minirlhf.cli import main

    real_loss, calls = ppo_module.ppo_policy_loss, {"n": 0}

    def loss_that_turns_nan(*args, **kw):
        loss, stats = real_loss(*args, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 5 else loss), stats  # iteration 3, its first minibatch

    monkeypatch.setattr(ppo_module, "ppo_policy_loss", loss_that_turns_nan)
    argv = ppo_command(base, tmp_path / "nan", 6)[3:]
    with pytest.raises(NonFiniteError, match=r"step 3: loss is not finite.*ckpt-00000002"):
        main([*argv, "--debug"])
    manager = CheckpointManager(tmp_path / "nan" / "checkpoints")
    assert manager.latest_step() == 2
    for name in ("actor_critic.safetensors",):
        weights = load_tensors(manager.latest() / name)
        assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "nan" / "model").exists()  # no final model from a broken run
