import json
import os
import pickle
from collections import OrderedDict

import pytest
import safetensors.torch
import torch

from minirlhf.checkpoint import (
    CheckpointError,
    CheckpointManager,
    UnsafeCheckpointError,
    atomic_write,
    atomic_write_dir,
    atomic_write_json,
    atomic_write_text,
    load_state,
    load_tensor_metadata,
    load_tensors,
    save_state,
    save_tensors,
)
from minirlhf.device import rng_state, seed_everything, set_rng_state


def _assert_same_tree(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_tree(x, y)
    else:
        assert a == b


# ---------------------------------------------------------------- atomic files

def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.bin"  # parent is created
    atomic_write(path, lambda f: f.write(b"one"))
    atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["f.bin"]


def test_crash_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old content")

    def half_then_crash(f):
        f.write(b"new con")
        f.flush()
        raise KeyboardInterrupt  # even a BaseException must not leave a partial file

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_crash)
    assert path.read_text() == "old content"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_write_respects_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        os.umask(0o027)
        path = atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027, like open()


def test_atomic_write_json(tmp_path):
    obj = {"b": [1, 2.5, None], "a": "é"}
    path = atomic_write_json(tmp_path / "x.json", obj)
    assert json.loads(path.read_text(encoding="utf-8")) == obj
    assert path.read_text(encoding="utf-8").endswith("\n")


def test_atomic_write_dir(tmp_path):
    path = tmp_path / "model"
    atomic_write_dir(path, lambda d: (d / "w.txt").write_text("v1"))
    atomic_write_dir(path, lambda d: (d / "w.txt").write_text("v2"))
    assert (path / "w.txt").read_text() == "v2"
    assert sorted(os.listdir(tmp_path)) == ["model"]

    def crash(d):
        (d / "w.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_dir(path, crash)
    assert (path / "w.txt").read_text() == "v2"
    assert sorted(os.listdir(tmp_path)) == ["model"]

    # A crash between `model -> model.old` and `model.tmp -> model`: the next write recovers the old one first.
    os.replace(path, tmp_path / "model.old")
    (tmp_path / "model.tmp").mkdir()
    with pytest.raises(OSError):
        atomic_write_dir(path, crash)
    assert (path / "w.txt").read_text() == "v2"
    assert sorted(os.listdir(tmp_path)) == ["model"]


# ---------------------------------------------------------------- safetensors

def test_tensors_roundtrip_exact(tmp_path):
    tensors = {
        "f64": torch.randn(3, 4, dtype=torch.float64),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5),
        "param": torch.nn.Parameter(torch.randn(2)),
    }
    path = save_tensors(tmp_path / "t.safetensors", tensors, metadata={"step": "7"})
    loaded = load_tensors(path)
    assert sorted(loaded) == sorted(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t.detach())
    assert load_tensor_metadata(path) == {"step": "7"}


def test_tied_tensors_are_stored_once_and_stay_tied(tmp_path):
    emb = torch.nn.Embedding(7, 3)
    head = torch.nn.Linear(3, 7, bias=False)
    head.weight = emb.weight  # weight tying, as in GPT-2
    sd = OrderedDict([("wte.weight", emb.weight), ("lm_head.weight", head.weight)])
    with pytest.raises(RuntimeError):  # what plain safetensors does with it
        safetensors.torch.save(dict(sd))

    path = save_tensors(tmp_path / "m.safetensors", dict(sd))
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert list(f.keys()) == ["lm_head.weight"]  # the first name in sorted order holds the bytes
    loaded = load_tensors(path)
    assert loaded["wte.weight"] is loaded["lm_head.weight"]
    assert torch.equal(loaded["wte.weight"], emb.weight.detach())
    assert load_tensor_metadata(path) == {}


def test_overlapping_and_non_contiguous_views_are_copied(tmp_path):
    base = torch.arange(12.0, dtype=torch.float64).reshape(3, 4)
    tensors = {"base": base, "rows": base[1:], "transposed": base.T, "col": base[:, 1]}
    assert not tensors["transposed"].is_contiguous() and not tensors["col"].is_contiguous()
    loaded = load_tensors(save_tensors(tmp_path / "v.safetensors", tensors))
    for k, t in tensors.items():
        assert loaded[k].shape == t.shape and torch.equal(loaded[k], t)
    loaded["base"][0, 0] = -1.0  # independent copies: no other tensor changes
    assert loaded["transposed"][0, 0] == 0.0


def test_empty_tensors_are_not_aliases(tmp_path):
    tensors = {"a": torch.zeros(0), "b": torch.zeros(0), "c": torch.zeros(0, 3, dtype=torch.int64)}
    # a and b own no memory (on CPU both report data_ptr() 0) and look like the same view, yet are unrelated
    path = save_tensors(tmp_path / "e.safetensors", tensors)
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["a", "b", "c"]
    loaded = load_tensors(path)
    assert loaded["a"] is not loaded["b"]
    assert loaded["a"].shape == (0,) and loaded["c"].shape == (0, 3) and loaded["c"].dtype == torch.int64


def test_save_tensors_errors(tmp_path):
    with pytest.raises(TypeError, match=r"tensors\['w'\]: expected a torch.Tensor"):
        save_tensors(tmp_path / "x", {"w": [1.0]})
    with pytest.raises(TypeError, match=r"metadata\['step'\]"):
        save_tensors(tmp_path / "x", {"w": torch.zeros(1)}, metadata={"step": 3})
    with pytest.raises(ValueError, match="sparse"):
        save_tensors(tmp_path / "x", {"w": torch.eye(2).to_sparse()})
    with pytest.raises(CheckpointError, match="no such file"):
        load_tensors(tmp_path / "missing.safetensors")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- training state

def _train_steps(model, opt, n):
    for _ in range(n):
        x = torch.randn(4, 3, dtype=torch.float64)
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_state_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    _train_steps(model, opt, 2)
    sched.step()
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        "step": 2, "loss": 0.25, "name": "run", "done": False, "best": None,
        "history": [1, 2.0, (3, "x")], "dtype": torch.float64, "shape": torch.Size([2, 3]),
    }
    loaded = load_state(save_state(tmp_path / "state.pt", state))
    _assert_same_tree(state, loaded)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    def fresh():
        model = torch.nn.Linear(3, 2).double()
        return model, torch.optim.Adam(model.parameters(), lr=0.05)

    seed_everything(3)
    model, opt = fresh()
    _train_steps(model, opt, 6)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}

    seed_everything(3)
    model, opt = fresh()
    _train_steps(model, opt, 3)
    manager = CheckpointManager(tmp_path)

    def write(folder):
        save_tensors(folder / "model.safetensors", model.state_dict())
        save_state(folder / "state.pt", {"optimizer": opt.state_dict(), "rng": rng_state()})

    manager.save(3, write)
    del model, opt
    seed_everything(999)  # the new process starts elsewhere

    model, opt = fresh()
    step, (weights, state) = manager.load_latest(
        lambda folder: (load_tensors(folder / "model.safetensors"), load_state(folder / "state.pt")))
    assert step == 3
    model.load_state_dict(weights)
    opt.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    _train_steps(model, opt, 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, uninterrupted[k]), k


class _Payload:
    """Unpickling this calls open(marker, "w"), creating the marker file: code run by a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_really_runs_code_under_plain_pickle(tmp_path):
    marker = tmp_path / "pwned-by-pickle"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()  # so the refusal below is what keeps the marker away


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_crafted_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "state.pt"
    obj = {"step": 1, "evil": _Payload(marker)}
    with open(path, "wb") as f:
        torch.save(obj, f) if writer == "torch.save" else pickle.dump(obj, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match=r"state\.pt: refusing to load.*it names .*open"):
        load_state(path)
    assert not marker.exists()


def test_save_state_refuses_what_it_could_not_load(tmp_path):
    import numpy as np

    with pytest.raises(TypeError, match=r"state\['a'\]\[1\]: .*numpy.ndarray.*torch.from_numpy"):
        save_state(tmp_path / "s.pt", {"a": [1, np.zeros(2)]})
    with pytest.raises(TypeError, match=r"state\['m'\]: .*_Payload"):
        save_state(tmp_path / "s.pt", {"m": _Payload(tmp_path / "m")})
    with pytest.raises(TypeError, match="dict keys must be str or int"):
        save_state(tmp_path / "s.pt", {(1, 2): 3})
    assert not (tmp_path / "s.pt").exists()


def test_load_state_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_state(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_state(bad)


# ---------------------------------------------------------------- CheckpointManager

def _writer(text):
    def write(folder):
        (folder / "a.txt").write_text(text)
        (folder / "sub").mkdir()
        (folder / "sub" / "b.txt").write_text(text + "!")
    return write


def _names(run_dir):
    return sorted(p.name for p in run_dir.iterdir())


def test_manager_saves_points_and_prunes(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() is None and manager.load_latest(lambda f: 0) is None
    for step in range(1, 6):
        path = manager.save(step * 10, _writer(f"s{step}"))
        assert path == tmp_path / f"ckpt-{step * 10:08d}"
    assert _names(tmp_path) == ["ckpt-00000040", "ckpt-00000050", "latest"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-00000050"
    assert manager.latest_step() == 50
    assert manager.load_latest(lambda f: (f / "sub" / "b.txt").read_text()) == (50, "s5!")


def test_keep_last_none_keeps_all(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=None)
    for step in range(4):
        manager.save(step, _writer("x"))
    assert [CheckpointManager.step_of(p) for p in manager.checkpoints()] == [0, 1, 2, 3]


def test_failing_write_keeps_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(1, _writer("good"))

    def crash(folder):
        (folder / "a.txt").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        manager.save(2, crash)
    assert _names(tmp_path) == ["ckpt-00000001", "latest"]  # no partial folder, nothing pruned
    assert manager.latest() == tmp_path / "ckpt-00000001"
    assert (manager.latest() / "a.txt").read_text() == "good"


def test_tmp_leftover_from_a_crash_is_ignored_then_removed(tmp_path):
    manager = CheckpointManager(tmp_path)
    manager.save(1, _writer("good"))
    leftover = tmp_path / "ckpt-00000009.tmp"
    leftover.mkdir()
    (leftover / "a.txt").write_text("half")
    (tmp_path / "latest").unlink()  # even without the pointer, .tmp is never a checkpoint
    assert manager.latest() == tmp_path / "ckpt-00000001"
    manager.save(2, _writer("next"))
    assert not leftover.exists()
    assert manager.latest_step() == 2


def test_pointer_missing_or_dangling_falls_back_to_highest_step(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=None)
    manager.save(5, _writer("a"))
    manager.save(3, _writer("b"))  # pointer says 3: the most recent save, not the highest step
    assert manager.latest_step() == 3
    (tmp_path / "latest").write_text("ckpt-00000004\n")
    assert manager.latest_step() == 5
    (tmp_path / "latest").write_text("../../etc\n")
    assert manager.latest_step() == 5


def test_just_saved_checkpoint_is_never_pruned(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(20, _writer("a"))
    manager.save(5, _writer("b"))
    assert manager.latest_step() == 5
    assert (manager.latest() / "a.txt").read_text() == "b"


def test_resaving_a_step_replaces_it(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(7, _writer("first"))
    manager.save(7, _writer("second"))
    assert _names(tmp_path) == ["ckpt-00000007", "latest"]
    assert (manager.latest() / "a.txt").read_text() == "second"


def test_crash_between_the_two_renames_of_a_resave(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(7, _writer("first"))
    # State right after `ckpt-7 -> ckpt-7.old`, before `ckpt-7.tmp -> ckpt-7`:
    os.replace(tmp_path / "ckpt-00000007", tmp_path / "ckpt-00000007.old")
    (tmp_path / "ckpt-00000007.tmp").mkdir()
    assert manager.latest() == tmp_path / "ckpt-00000007.old"
    assert manager.load_latest(lambda f: (f / "a.txt").read_text()) == (7, "first")
    manager.save(8, _writer("next"))  # recovers the .old folder, then prunes it normally
    assert _names(tmp_path) == ["ckpt-00000008", "latest"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_manager_rejects_bad_keep_last(tmp_path, bad):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=bad)


@pytest.mark.parametrize("bad", [-1, 1.0, "3", None])
def test_manager_rejects_bad_step(tmp_path, bad):
    with pytest.raises(ValueError, match="step"):
        CheckpointManager(tmp_path).save(bad, _writer("x"))


def test_step_of():
    assert CheckpointManager.step_of("/x/ckpt-00000042") == 42
    assert CheckpointManager.step_of("ckpt-123456789") == 123456789
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        CheckpointManager.step_of("ckpt-00000042.tmp")
