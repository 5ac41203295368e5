"""Output folders that never lose a run, and input folders that are what a command needs.

A run folder holds one run. A new run goes into a missing or empty folder; a folder that already
holds a run is continued with ``--run.resume true`` (its saved config must agree with the new one
on every field outside ``RESUMABLE_FIELDS``) or replaced whole with ``--run.overwrite true``, and
either way only once the new run's options are checked and its inputs loaded. The output may
not be an input, sit inside one or hold one. Every run records an id in ``run.json`` and in each
checkpoint; a resume uses only the checkpoints that carry its own id.

    plan = plan_output(out, config, command="sft", resume=False, overwrite=False)  # checks, writes nothing
    ...load the inputs...
    plan.prepare()      # now the folder is created (an overwritten run is moved away and deleted)
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from minirlhf.checkpoint import atomic_write_json

RUN_FILE = "run.json"

# Fields that may differ between a run and its resume: where and how fast it runs, what it prints,
# how often it checkpoints. Any other change would make the run a mix of two configs.
RESUMABLE_FIELDS = ("run.resume", "run.overwrite", "run.threads", "run.device", "run.log_every", "run.progress",
                    "run.save_every", "run.keep_last", "samples", "threads", "device")

# Names a --reward option takes besides a reward model folder.
REWARD_KEYWORDS = ("verifier",)

# Files that mark a folder as written by minirlhf (a run, a collect output or a model folder).
_MARKERS = (RUN_FILE, "config.json", "metrics.jsonl", "checkpoints", "model", "summary.json", "train.jsonl")


class RunFolderError(ValueError):
    """An output folder cannot be used as asked; the message names it and the way out."""


class ModelKindError(ValueError):
    """An input folder is not the kind of model (or the model) that an option needs."""


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _is_resumable(key: str) -> bool:
    return key in RESUMABLE_FIELDS or key == "run.out" or key == "out"


def config_changes(saved: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two configs (as dicts), outside RESUMABLE_FIELDS."""
    a, b = _flatten(saved), _flatten(new)
    changed = []
    for key in sorted(set(a) | set(b)):
        if _is_resumable(key):
            continue
        if key not in a or key not in b:  # an option older or newer than the saved run: its default applies
            continue
        va, vb = a[key], b[key]
        if isinstance(va, tuple):
            va = list(va)
        if isinstance(vb, tuple):
            vb = list(vb)
        if va != vb:
            changed.append(f"{key} ({va!r} -> {vb!r})")
    return changed


def input_paths(config: dict, skip: tuple[str, ...] = ("run.out", "out")) -> dict[str, Path]:
    """Option -> path for every string option of a config (as a dict) that names an existing file or folder."""
    out = {}
    for key, value in _flatten(config).items():
        if key in skip or not isinstance(value, str) or not value or key.startswith("task."):
            continue
        try:
            path = Path(value)
            if path.exists():
                out[key] = path
        except (OSError, ValueError):
            continue
    return out


def check_not_an_input(out: Path, config: dict, out_option: str) -> None:
    """Refuse an output folder that is an input of the same command, holds one, or is part of one."""
    target = out.resolve()
    for key, path in input_paths(config).items():
        src = path.resolve()
        flag = "--" + key.replace("_", "-")
        if src == target:
            raise RunFolderError(f"{out_option} {out} is also the input {flag}; writing the run there would destroy "
                                 f"it: choose another {out_option}")
        if target in src.parents:
            raise RunFolderError(f"{out_option} {out} holds the input {flag} {path}; choose another {out_option}")
        if src in target.parents and target.exists():  # a new folder inside a data folder clobbers nothing
            raise RunFolderError(f"{out_option} {out} is inside the input {flag} {path}; choose another {out_option}")


def read_run_id(out: Path) -> str | None:
    path = Path(out) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("id")
    except (OSError, ValueError, AttributeError):
        raise RunFolderError(f"{path}: unreadable run record; the folder may be damaged") from None


@dataclass
class OutputPlan:
    """What a command will do with its output folder; `prepare()` does it."""

    out: Path
    command: str
    config: dict
    mode: str  # "new", "resume" or "overwrite"
    run_id: str
    saved_config: dict | None = None
    prepared: bool = field(default=False, repr=False)

    def prepare(self, write_config: bool = True) -> None:
        """Create the folder (replacing the old run whole with overwrite) and record the run."""
        if self.prepared:
            return
        self.prepared = True
        out = self.out
        if self.mode == "overwrite" and out.exists():
            old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        if self.mode != "resume" or not (out / RUN_FILE).is_file():
            atomic_write_json(out / RUN_FILE, {"id": self.run_id, "command": self.command})


def plan_output(out, config: dict, command: str, resume: bool = False, overwrite: bool = False,
                out_option: str = "--run.out", resume_option: str = "--run.resume",
                overwrite_option: str = "--run.overwrite") -> OutputPlan:
    """Check that ``out`` may take this command's output, writing nothing; see the module doc."""
    out = Path(out)
    if resume and overwrite:
        raise RunFolderError(f"{resume_option} and {overwrite_option} contradict each other: choose one")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out_option} {out} is a file, not a folder: choose another {out_option}")
    check_not_an_input(out, config, out_option)
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    ours = [e for e in entries if e in _MARKERS]
    if not entries:
        if resume:
            print(f"[{command}] {resume_option}: {out} holds no run yet; starting a new one", flush=True)
        return OutputPlan(out, command, config, "new", uuid.uuid4().hex)
    saved_path = out / "config.json"
    if resume:
        if not saved_path.is_file():
            raise RunFolderError(f"{resume_option}: {out} holds no run to continue (no config.json); "
                                 f"drop {resume_option} and give an empty or new {out_option}")
        try:
            saved = json.loads(saved_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunFolderError(f"{saved_path}: unreadable ({e}); the run cannot be continued") from None
        record = {}
        if (out / RUN_FILE).is_file():
            record = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
        if record.get("command", command) != command or "kind" in saved:
            what = f"a {record.get('command')} run" if "kind" not in saved else "a model folder"
            raise RunFolderError(f"{resume_option}: {out} holds {what}, not a {command} run")
        changes = config_changes(saved, config)
        if changes:
            listed = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
            raise RunFolderError(f"{resume_option}: these options differ from the run in {out}: {listed}. "
                                 f"A resumed run keeps its settings (only {', '.join(RESUMABLE_FIELDS[2:8])} may "
                                 f"change); start a new run in another {out_option} to change them")
        return OutputPlan(out, command, config, "resume", record.get("id") or "", saved_config=saved)
    if overwrite:
        if not ours:
            raise RunFolderError(f"{overwrite_option}: {out} is not empty and holds no minirlhf run "
                                 f"({', '.join(entries[:4])}...); refusing to delete it: choose another {out_option}")
        return OutputPlan(out, command, config, "overwrite", uuid.uuid4().hex)
    what = "a run" if ours else "other files"
    raise RunFolderError(f"{out_option} {out} already holds {what} ({', '.join(entries[:5])}); "
                         f"continue it with {resume_option} true, replace it with {overwrite_option} true, "
                         f"or choose another {out_option}")


# ---------------------------------------------------------------------------------------------
# Input model folders
# ---------------------------------------------------------------------------------------------

# Which kinds of model folder each option takes (None: any command). "gpt" is a language model
# (pretrained or fine-tuned policy); "reward" a reward model; "value" a critic.
INPUT_KINDS = {
    ("rm", "init"): ("gpt", "reward"),
    ("rm", "policy"): ("gpt",),
    (None, "init"): ("gpt",),
    (None, "policy"): ("gpt",),
    (None, "model"): ("gpt",),
    (None, "reward"): ("reward",),
}

COMMANDS_WITH_INPUTS = ("sft", "dpo", "rm", "ppo", "trpo", "grpo", "rloo", "collect", "generate")

_KIND_WORDS = {"gpt": "a language model (policy)", "reward": "a reward model", "value": "a value model (critic)"}


def folder_kind(folder) -> str:
    """The kind a model folder records ("gpt", "reward" or "value"), with a clear error if it is no model folder."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ModelKindError(f"{folder}: not a model folder (no config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelKindError(f"{path}: not valid JSON ({e}); the model folder is damaged") from None
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind is None and isinstance(config, dict) and "gpt" in config:  # an older folder: infer it
        from minirlhf.saving import infer_kind

        kind = infer_kind(folder)
    if kind is None and isinstance(config, dict) and "gpt" not in config and ("run" in config or "task" in config):
        raise ModelKindError(f"{folder}: a run folder, not a model folder; its model is in {folder / 'model'}")
    if kind not in _KIND_WORDS:
        raise ModelKindError(f"{path}: field \"kind\": expected one of {sorted(_KIND_WORDS)}, got {kind!r}")
    return kind


def check_input_kinds(command: str, config: dict) -> None:
    """Every model-folder option of ``command`` names an existing folder of a kind it takes (for the
    commands of the command line; a program's own loop, e.g. a benchmark, checks its own inputs)."""
    if command not in COMMANDS_WITH_INPUTS:
        return
    flat = _flatten(config)
    for (cmd, key), kinds in INPUT_KINDS.items():
        if cmd not in (None, command) or key not in flat or (cmd is None and (command, key) in INPUT_KINDS):
            continue
        value = flat[key]
        if not isinstance(value, str) or (command == "rm" and key == "policy" and not value):
            continue
        if key == "model" and command != "generate":
            continue
        flag = "--" + key.replace("_", "-")
        if key == "reward" and value in REWARD_KEYWORDS:
            continue
        path = Path(value)
        if not path.exists():
            extra = f" or one of the keywords {', '.join(REWARD_KEYWORDS)}" if key == "reward" else ""
            raise ModelKindError(f"{flag} {value}: no such folder; expected {' or '.join(_KIND_WORDS[k] for k in kinds)}"
                                 f" folder{extra}")
        kind = folder_kind(path)
        if not (path / "tokenizer.json").is_file():
            raise ModelKindError(f"{flag} {value}: no tokenizer.json; the model folder is incomplete: save or copy "
                                 f"it again")
        if kind not in kinds:
            raise ModelKindError(f"{flag} {value} holds {_KIND_WORDS[kind]}, but {command} needs "
                                 f"{' or '.join(_KIND_WORDS[k] for k in kinds)} there")
    policy, reward = flat.get("policy"), flat.get("reward")
    if command != "rm" and isinstance(policy, str) and isinstance(reward, str) and reward not in REWARD_KEYWORDS:
        from minirlhf.tokenizer import check_same_tokenizer, load_tokenizer

        try:  # a reward model scores token ids: it must read the policy's ids as the policy means them
            check_same_tokenizer(load_tokenizer(Path(policy) / "tokenizer.json"),
                                 load_tokenizer(Path(reward) / "tokenizer.json"),
                                 f"--policy {policy}", f"--reward {reward}")
        except ValueError as e:
            raise ModelKindError(str(e)) from None
