"""Atomic, code-free checkpoints.

Three rules keep a checkpoint trustworthy:

1. Atomic writes. Every file is written to a temporary name in the same directory, flushed
   and fsynced, then renamed over the target (`os.replace` is atomic on POSIX and Windows).
   A crash mid-write leaves the previous file intact, never a half-written one.
2. No code in the files. Weights are safetensors (`save_tensors`); the rest of a training
   state (optimizer, scheduler, RNG, data position) is `torch.save` of tensors and plain Python
   values, read back only with `torch.load(weights_only=True)` (`save_state` / `load_state`),
   so opening a checkpoint can never run code.
3. Whole checkpoints appear at once. `CheckpointManager` writes each checkpoint into a
   `ckpt-XXXXXXXX.tmp` folder, renames it to `ckpt-XXXXXXXX` only once complete, then points
   `latest` at it and only then prunes older ones. `atomic_write_dir` does the same for any
   folder (a saved model, say).

A trainer's save and resume, in full:

    manager = CheckpointManager(run_dir, keep_last=2)

    def write(folder):
        save_tensors(folder / "model.safetensors", model.state_dict())
        save_state(folder / "state.pt", {"optimizer": opt.state_dict(), "rng": rng_state(), "step": step})

    manager.save(step, write)
    ...
    found = manager.load_latest(lambda folder: (load_tensors(folder / "model.safetensors"),
                                                load_state(folder / "state.pt")))
    if found is not None:
        step, (weights, state) = found
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save as _safetensors_save

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_dir",
    "save_tensors",
    "load_tensors",
    "load_tensor_metadata",
    "save_state",
    "load_state",
    "CheckpointManager",
]

ALIASES_KEY = "__minirlhf_aliases__"  # safetensors metadata key: JSON {alias name: stored name}


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or not in the expected format."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects that only arbitrary code could rebuild; it was not loaded."""


# ---------------------------------------------------------------- atomic files

def _fsync_dir(path: Path) -> None:
    """Persist a rename inside `path` (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, so a rename of `root` publishes durable content."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def atomic_write(path: str | os.PathLike, write_fn: Callable[[BinaryIO], Any]) -> Path:
    """Write a file so that readers see either the old content or the complete new one.

    `write_fn(f)` writes bytes to the open binary file `f`, a temporary file in the same
    directory as `path`; it is flushed, fsynced, and renamed over `path` with `os.replace`.
    If `write_fn` raises, the temporary file is removed and `path` is untouched. Missing
    parent directories are created. Returns `path` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with mode 0o666 gives the file the permissions of an ordinary open() under the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """`atomic_write` of a string."""
    data = text.encode(encoding)
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, **json_kwargs: Any) -> Path:
    """`atomic_write` of `json.dumps(obj, indent=2, **json_kwargs)` plus a final newline."""
    json_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **json_kwargs) + "\n")


def _recover_dir(path: Path) -> None:
    """Undo what a crash inside `atomic_write_dir(path)` left: a partial `.tmp` folder (deleted), or an
    `.old` folder whose replacement never took its name (renamed back)."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    if old.exists():
        if path.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, path)


def atomic_write_dir(path: str | os.PathLike, write_fn: Callable[[Path], Any]) -> Path:
    """Write a folder so that readers see either the old folder or the complete new one.

    `write_fn(tmp)` fills `<path>.tmp`; every file in it is fsynced, then it is renamed to `path`.
    An existing `path` is first renamed to `<path>.old` and deleted once the new folder is in
    place; should a crash fall between the two renames, the next call renames `.old` back (and
    readers may treat `.old` as the folder meanwhile). If `write_fn` raises, `.tmp` is deleted and
    `path` is untouched. One writer per folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover_dir(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    tmp.mkdir()
    try:
        write_fn(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


# ---------------------------------------------------------------- tensors (safetensors)

def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def _view_key(t: torch.Tensor) -> tuple:
    return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> Path:
    """Save named tensors as one safetensors file, atomically.

    safetensors stores each tensor as its own contiguous bytes and refuses tensors that share
    memory. So that `model.state_dict()` can be saved as is:
    - tied tensors (the same storage, offset, shape, stride and dtype under several names, e.g.
      a GPT's token embedding and output head) are stored once, under the first name in sorted
      order; the other names are recorded in the metadata under "__minirlhf_aliases__" and
      `load_tensors` returns them as the very same tensor object, so the tie survives.
    - other tensors that overlap in memory (different views of one storage) are stored as
      independent copies.
    - non-contiguous tensors are stored contiguously (their values, not their strides).
    `metadata` is free text for the reader (e.g. {"step": "100"}): str keys and str values.
    """
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors: expected a dict of name -> torch.Tensor, got {type(tensors).__name__}")
    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata[{k!r}]: expected str keys and str values, got {type(v).__name__}")
    if ALIASES_KEY in metadata:
        raise ValueError(f"metadata: the key {ALIASES_KEY!r} is reserved")

    for name in tensors:
        if not isinstance(name, str):
            raise TypeError(f"tensors: expected str names, got {name!r}")
    by_storage: dict[tuple, list[str]] = {}
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{name!r}]: expected a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            raise ValueError(f"tensors[{name!r}]: sparse tensors are not supported; call .to_dense() first")
        if t.numel() > 0:  # empty tensors own no memory and share nothing
            by_storage.setdefault(_storage_key(t), []).append(name)

    aliases: dict[str, str] = {}
    to_copy: set[str] = set()
    for names in by_storage.values():
        first_of_view: dict[tuple, str] = {}
        for name in names:
            key = _view_key(tensors[name])
            if key in first_of_view:
                aliases[name] = first_of_view[key]
            else:
                first_of_view[key] = name
        if len(first_of_view) > 1:  # distinct views of one storage: each gets its own copy
            to_copy.update(first_of_view.values())

    stored = {}
    for name, t in tensors.items():
        if name in aliases:
            continue
        t = t.detach()
        stored[name] = t.clone(memory_format=torch.contiguous_format) if name in to_copy else t.contiguous()
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    data = _safetensors_save(stored, metadata=metadata or None)
    return atomic_write(path, lambda f: f.write(data))


def load_tensor_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata passed to `save_tensors` (without the alias record)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    metadata.pop(ALIASES_KEY, None)
    return metadata


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a file written by `save_tensors` (or any safetensors file) onto `device`.

    Names recorded as aliases of a stored tensor map to that same tensor object.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    device = str(device) if isinstance(device, torch.device) else device
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            aliases = json.loads((f.metadata() or {}).get(ALIASES_KEY, "{}"))
    except Exception as e:  # a truncated or foreign file: safetensors' own error does not name it
        if isinstance(e, (MemoryError, KeyboardInterrupt)):
            raise
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); it may be truncated: "
                              f"write or copy it again") from e
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    return tensors


# ---------------------------------------------------------------- training state (torch.save, weights_only)

# Exact types: subclasses (an IntEnum, a namedtuple, a defaultdict) pickle as their class and would be refused.
_PLAIN = (int, float, str, bool, type(None), torch.Size, torch.dtype, torch.device)


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value `torch.load(weights_only=True)` could not rebuild."""
    if type(obj) in _PLAIN or type(obj) in (torch.Tensor, torch.nn.Parameter):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict keys must be str or int, got {type(k).__name__} {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    hint = " (convert NumPy arrays with torch.from_numpy)" if type(obj).__module__.startswith("numpy") else ""
    raise TypeError(f"{where}: a checkpoint state holds only tensors, dicts, lists, tuples, int, float, str, bool "
                    f"and None; got {type(obj).__module__}.{type(obj).__qualname__}{hint}")


def save_state(path: str | os.PathLike, state: Any) -> Path:
    """Save a nested training state with `torch.save`, atomically.

    `state` may hold dicts (str or int keys), lists, tuples, tensors, int, float, str, bool and
    None: `optimizer.state_dict()`, `scheduler.state_dict()`, `rng_state()`, data positions,
    controller state. Anything else is refused before writing, since `load_state` could not
    read it back without running code.
    """
    _check_plain(state, "state")
    return atomic_write(path, lambda f: torch.save(state, f))


def load_state(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a file written by `save_state` with `torch.load(weights_only=True)`.

    A file that holds anything but tensors and plain Python values (for instance a crafted
    pickle whose `__reduce__` would call a function) is refused with `UnsafeCheckpointError`
    before any of its code runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it names {found.group(1)}" if found else str(e).strip().splitlines()[-1]
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: it holds objects other than tensors and plain Python values, which only "
            f"running code from the file could rebuild ({what}; torch.load(weights_only=True) refused it)") from e
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable torch.save file ({e})") from e


# ---------------------------------------------------------------- checkpoint folders

# A complete checkpoint is "ckpt-XXXXXXXX", or "ckpt-XXXXXXXX.old" when a crash struck while a new
# folder for the same step was replacing it (see CheckpointManager.save).
_CKPT = re.compile(r"^ckpt-(\d{8,})(\.old)?$")


class CheckpointManager:
    """Numbered checkpoint folders in `run_dir` that appear only when complete.

    `save(step, write_fn)`:
      1-2. `atomic_write_dir(run_dir/ckpt-XXXXXXXX, write_fn)`: `write_fn(folder)` writes its files
         into `run_dir/ckpt-XXXXXXXX.tmp`, which is renamed to `run_dir/ckpt-XXXXXXXX` once all is
         fsynced: from this moment it is complete. (A `.tmp` folder is never complete: leftovers
         from a crash are removed.)
      3. `run_dir/latest` is rewritten atomically to name it.
      4. Only then are older checkpoints pruned, keeping the `keep_last` highest steps (and
         always the one just saved); `keep_last=None` keeps all.
    If `write_fn` raises, the temporary folder is deleted, `latest` and the previous checkpoints
    are untouched, and the error propagates.

    Saving a step that already has a folder replaces it: the old folder is renamed to
    `ckpt-XXXXXXXX.old` just before the new one takes its name, then deleted. Should a crash
    fall between the two renames, the `.old` folder still counts as that step's checkpoint.

    `latest()` follows the pointer, and falls back to the highest complete step if the pointer
    is missing or names a folder that is gone; `.tmp` folders are never returned.
    Only one process (rank 0) should save into a run directory.
    """

    def __init__(self, run_dir: str | os.PathLike, keep_last: int | None = 2):
        if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int)
                                      or keep_last < 1):
            raise ValueError(f"keep_last: expected a positive int or None, got {keep_last!r}")
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last

    @staticmethod
    def folder_name(step: int) -> str:
        return f"ckpt-{step:08d}"

    @staticmethod
    def step_of(path: str | os.PathLike) -> int:
        """The step of a checkpoint folder, from its name."""
        m = _CKPT.match(Path(path).name)
        if m is None:
            raise ValueError(f"{path}: not a checkpoint folder (expected a name like 'ckpt-00000042')")
        return int(m.group(1))

    def _complete(self) -> dict[int, Path]:
        """step -> complete folder; a plain folder wins over an `.old` one of the same step."""
        found: dict[int, Path] = {}
        if self.run_dir.is_dir():
            for p in sorted(self.run_dir.iterdir(), key=lambda p: p.name.endswith(".old")):
                if p.is_dir() and _CKPT.match(p.name):
                    found.setdefault(self.step_of(p), p)
        return found

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, lowest step first."""
        complete = self._complete()
        return [complete[step] for step in sorted(complete)]

    def save(self, step: int, write_fn: Callable[[Path], Any]) -> Path:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected a non-negative int, got {step!r}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for leftover in [*self.run_dir.glob("ckpt-*.tmp"), *self.run_dir.glob("ckpt-*.old")]:
            _recover_dir(leftover.with_suffix(""))  # from a crash in an earlier save
        final = atomic_write_dir(self.run_dir / self.folder_name(step), write_fn)
        atomic_write_text(self.run_dir / "latest", final.name + "\n")
        self._prune(keep=final)
        return final

    def _prune(self, keep: Path) -> None:
        if self.keep_last is None:
            return
        complete = self.checkpoints()
        kept = set(complete[-self.keep_last:]) | {keep}
        for path in complete:
            if path not in kept:
                shutil.rmtree(path)

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None if there is none."""
        complete = self._complete()
        if not complete:
            return None
        pointer = self.run_dir / "latest"
        if pointer.is_file():
            m = _CKPT.match(pointer.read_text(encoding="utf-8").strip())
            if m is not None and int(m.group(1)) in complete:
                return complete[int(m.group(1))]
        return complete[max(complete)]

    def latest_step(self) -> int | None:
        path = self.latest()
        return None if path is None else self.step_of(path)

    def load_latest(self, read_fn: Callable[[Path], Any]) -> tuple[int, Any] | None:
        """`(step, read_fn(folder))` for the latest checkpoint, or None if there is none."""
        path = self.latest()
        if path is None:
            return None
        return self.step_of(path), read_fn(path)

