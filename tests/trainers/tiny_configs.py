"""Tiny configs for trainer tests: arithmetic with one-digit operands, a one-layer GPT."""
from minirlhf.trainers.common import ModelSize, RunConfig, TaskConfig
from minirlhf.trainers.pretrain import PretrainConfig
from minirlhf.trainers.sft import SFTConfig

TASK = TaskConfig(name="arithmetic", args=["max_operand=9", "max_test=20"])


def run_cfg(out, **kw):
    return RunConfig(out=str(out), progress=False, log_every=1000, **kw)


def pretrain_cfg(out, steps=6, **kw):
    return PretrainConfig(task=TASK, run=run_cfg(out, **kw), steps=steps, batch_size=8, eval_every=3,
                          eval_batches=1, model=ModelSize(n_layer=1, n_head=2, n_embd=32, block_size=24))


def sft_cfg(init, out, steps=6, **kw):
    return SFTConfig(run=run_cfg(out, **kw), init=str(init), steps=steps, batch_size=8, eval_every=3,
                     eval_prompts=8, samples=0)


def crash_then_resume(monkeypatch, module, name: str, crash_at_call: int, train, cfg) -> None:
    """Run ``train(cfg)`` with ``module.name`` raising KeyboardInterrupt on its ``crash_at_call``-th
    call (a crash mid-run, after the checkpoints before it), then resume the run to its end."""
    import pytest

    original, calls = getattr(module, name), {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at_call:
            raise KeyboardInterrupt("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, crashing)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(module, name, original)
    cfg.run.resume = True
    train(cfg)
