"""Configs: dataclasses with defaults that run, filled from a TOML file and command-line flags.

A run's config is a tree of dataclasses, e.g.

    @dataclass
    class PPOConfig:
        clip_eps: float = field(default=0.2, metadata={"help": "PPO ratio clip"})
        kl: Literal["k1", "k2", "k3"] = "k1"

    @dataclass
    class RunConfig:
        seed: int = 0
        ppo: PPOConfig = field(default_factory=PPOConfig)

and is resolved as defaults <- TOML file <- flags:

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_dataclass_args(parser, RunConfig)       # --seed, --ppo.clip-eps, --ppo.kl ...
    args = parser.parse_args()
    cfg = resolve_config(RunConfig, args, toml_path=args.config)
    save_config(cfg, run_dir / "config.json")   # load_config(RunConfig, ...) reads it back exactly

Supported field types: int, float (an int is accepted), bool, str, Literal[...], Optional[X] (X | None),
list[X], tuple[X, ...], dict[str, X] (not as flags), Any, and nested dataclasses (also Optional).
Mistakes are `ConfigError`s (a ValueError) that name the full dotted key: an unknown key suggests
the closest valid one, a mistyped value says which type was expected.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import math
import os
import re
import sys
import types
import typing
import weakref
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

from minirlhf.checkpoint import atomic_write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "to_dict",
    "from_dict",
    "load_toml",
    "add_dataclass_args",
    "resolve_config",
    "save_config",
    "load_config",
    "validate_ranges",
]

_NONE_WORDS = ("none", "null")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the dotted key and what was expected."""


# ---------------------------------------------------------------- type introspection

def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_inner(tp: Any) -> Any | None:
    """X for Optional[X] / X | None, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(args):
            return rest[0]
    return None


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass type of a field typed as a dataclass or an Optional dataclass."""
    inner = _optional_inner(tp)
    tp = inner if inner is not None else tp
    return tp if _is_dataclass_type(tp) else None


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Any:
        return True
    return typing.get_origin(tp) is Literal and any(isinstance(a, str) for a in typing.get_args(tp))


def _describe(tp: Any) -> str:
    """A type in words, for error messages and help."""
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{_describe(inner)} or none"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple) or tp in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"tuple of {len(args)} ({', '.join(_describe(a) for a in args)})"
        return f"list of {_describe(args[0])}" if args else "list"
    if origin is dict or tp is dict:
        return f"table of {_describe(args[1])}" if args else "table"
    if _is_dataclass_type(tp):
        return f"table of {tp.__name__} fields"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # an annotation that cannot be evaluated is a bug in the config class
        raise TypeError(f"{cls.__name__}: cannot resolve the field types ({e})") from e


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _field_default(f: dataclasses.Field) -> Any:
    """The field's default value, or `dataclasses.MISSING` if it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------- dict <-> dataclass

def to_dict(cfg: Any) -> dict:
    """A config dataclass as nested dicts of plain values (a deep copy)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict: expected a dataclass instance, got {type(cfg).__name__}")
    out = {}
    for f in _init_fields(type(cfg)):
        value = getattr(cfg, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def _leaf_paths(cls: type, path: str = "") -> list[str]:
    """Dotted names of every non-dataclass field under `cls`."""
    out = []
    for f in _init_fields(cls):
        sub = _dataclass_of(_type_hints(cls)[f.name])
        out += _leaf_paths(sub, _join(path, f.name)) if sub else [_join(path, f.name)]
    return out


def _section_paths(cls: type, path: str = "") -> list[str]:
    """Dotted names of every nested-dataclass field under `cls`."""
    out = []
    for f in _init_fields(cls):
        sub = _dataclass_of(_type_hints(cls)[f.name])
        if sub:
            out += [_join(path, f.name)] + _section_paths(sub, _join(path, f.name))
    return out


def _unknown_key(key: str, cls: type, path: str) -> ConfigError:
    """An error for `path.key`, suggesting the closest valid key in `cls` or below it."""
    local = [f.name for f in _init_fields(cls)]
    match = difflib.get_close_matches(key, local, n=1)
    if not match:  # maybe a leaf one level off, e.g. 'clip_eps' for 'ppo.clip_eps'
        leaves = _leaf_paths(cls)
        match = [p for p in leaves if p.rsplit(".", 1)[-1] == key][:1] or difflib.get_close_matches(key, leaves, n=1)
    message = f"unknown config key {_join(path, key)!r}"
    if match:
        return ConfigError(f"{message}; did you mean {_join(path, match[0])!r}?")
    where = f" under {path!r}" if path else ""
    return ConfigError(f"{message}; valid keys{where}: {', '.join(local)}")


def _check(value: Any, tp: Any, key: str) -> Any:
    """`value` as a valid value of type `tp` (an int becomes a float, a list a tuple), or ConfigError."""
    def wrong() -> ConfigError:
        return ConfigError(f"config key {key!r}: expected {_describe(tp)}, got {type(value).__name__} {value!r}")

    if tp is Any:
        return value
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in _NONE_WORDS and not _accepts_str(inner):
            return None  # TOML has no null: "none" stands for None where it cannot be a string
        try:
            return _check(value, inner, key)
        except ConfigError:
            if _dataclass_of(inner) or typing.get_origin(inner) in (list, tuple, dict):
                raise  # the error names the item inside
            raise wrong() from None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        raise TypeError(f"config key {key!r}: unsupported type {tp}; only Optional[X] unions are supported")
    if origin is Literal:
        for allowed in args:  # type(...) too, so that True does not pass for Literal[1]
            if value == allowed and type(value) is type(allowed):
                return value
        raise wrong()
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise wrong()
            return tuple(_check(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        items = [_check(v, args[0], f"{key}[{i}]") if args else copy.deepcopy(v) for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise wrong()
        return {k: _check(v, args[1], _join(key, k)) if args else copy.deepcopy(v) for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return copy.deepcopy(value)
        if isinstance(value, Mapping):
            return _build(tp, value, None, key)
        raise wrong()
    if tp is bool:
        if type(value) is not bool:
            raise wrong()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    raise TypeError(f"config key {key!r}: unsupported field type {tp!r}")


def _build(cls: type, d: Mapping, base: Any, path: str) -> Any:
    """`cls` from the keys in `d`; missing keys come from `base` (an instance) or the field defaults."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config key {path or '<root>'!r}: expected a table of {cls.__name__} fields, "
                          f"got {type(d).__name__} {d!r}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in _init_fields(cls)}
    for key in d:
        if key not in fields:
            raise _unknown_key(str(key), cls, path)
    kwargs = {}
    for name, f in fields.items():
        key, tp = _join(path, name), hints[name]
        if name in d:
            sub = _dataclass_of(tp)
            if sub is not None and isinstance(d[name], Mapping):
                sub_base = getattr(base, name) if base is not None else _field_default(f)
                kwargs[name] = _build(sub, d[name], sub_base if isinstance(sub_base, sub) else None, key)
            else:
                kwargs[name] = _check(d[name], tp, key)
        elif base is not None:
            kwargs[name] = copy.deepcopy(getattr(base, name))
        elif _field_default(f) is dataclasses.MISSING:
            raise ConfigError(f"missing config key {key!r} ({_describe(tp)}); it has no default")
    return cls(**kwargs)


def from_dict(cls: type, d: Mapping, path: str = "") -> Any:
    """Build the dataclass `cls` from nested dicts, type-checked; keys not given keep their defaults.

    A nested table may be partial: its missing keys keep the defaults of the enclosing field
    (which may differ from the nested class's own defaults). `path` is the dotted prefix errors
    name, for a `d` that is one section of a larger config.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"from_dict: expected a dataclass type, got {cls!r}")
    return _build(cls, d, None, path)


def load_toml(path: str | os.PathLike) -> dict:
    """Read a TOML file as nested dicts."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such TOML file")
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as JSON (atomically); `load_config(type(cfg), path)` gives it back equal."""
    return atomic_write_json(path, to_dict(cfg))


def load_config(cls: type, path: str | os.PathLike) -> Any:
    """Read a config written by `save_config` (JSON), or a TOML file (by its .toml suffix)."""
    path = Path(path)
    if path.suffix == ".toml":
        return from_dict(cls, load_toml(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    return from_dict(cls, data)


# ---------------------------------------------------------------- command-line flags

def _parse_bool(s: str) -> bool:
    low = s.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _scalar_parser(tp: Any):
    """A function from a flag's string to a value of `tp`, raising ArgumentTypeError with the expected type."""
    inner = _optional_inner(tp)
    if inner is not None:
        parse_inner = _scalar_parser(inner)
        return lambda s: None if s.lower() in _NONE_WORDS else parse_inner(s)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)

        def parse_literal(s: str) -> Any:
            for c in choices:
                if _show_default(c) == s or str(c) == s:  # a bool choice reads as true/false
                    return c
            raise argparse.ArgumentTypeError(f"expected {_describe(tp)}, got {s!r}")
        return parse_literal
    if tp is bool:
        return _parse_bool
    if tp in (int, float):
        def parse_number(s: str) -> Any:
            try:
                return tp(s)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {tp.__name__}, got {s!r}") from None
        return parse_number
    if tp in (str, Any):
        return str
    return None


class _ListAction(argparse.Action):
    """`--key a b c` -> a list of parsed items; a single `none` is None for Optional lists. The first
    `--key` on a command line replaces the default (or the TOML value); a repeated `--key` adds to it,
    so `--set a=1 --set b=2` keeps both."""

    def __init__(self, *args, item_parser, optional, **kwargs):
        super().__init__(*args, **kwargs)
        self.item_parser, self.optional = item_parser, optional
        self._given_in = None  # weak reference to the namespace of the parse that last set this flag

    def __call__(self, parser, namespace, values, option_string=None):
        if self.optional and len(values) == 1 and values[0].lower() in _NONE_WORDS:
            setattr(namespace, self.dest, None)
            return
        try:
            items = [self.item_parser(v) for v in values]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentError(self, str(e)) from None
        again = self._given_in is not None and self._given_in() is namespace  # this flag, this parse
        if again and getattr(namespace, self.dest, None) is not None:
            items = list(getattr(namespace, self.dest)) + items
        self._given_in = weakref.ref(namespace)
        setattr(namespace, self.dest, items)


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(_show_default(v) for v in value) or "(empty)"
    return str(value)


def _flag_specs(cls: type, path: str, default: Any):
    """(dotted name, type, default value or MISSING, help) for every leaf field under `cls`."""
    hints = _type_hints(cls)
    for f in _init_fields(cls):
        key, tp = _join(path, f.name), hints[f.name]
        value = getattr(default, f.name) if default is not None else _field_default(f)
        sub = _dataclass_of(tp)
        if sub is not None:
            if not isinstance(value, sub):
                try:
                    value = sub()
                except TypeError:
                    value = None  # has required fields: leaf defaults come from its own fields
            yield from _flag_specs(sub, key, value)
        else:
            yield key, tp, value, f.metadata.get("help", "")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add a flag for every leaf field of `cls`: `--section.field-name` (or `--section.field_name`).

    Flags parse to the field's type and are absent from the namespace unless given, so they
    override only what the user set. dict and fixed-length tuple fields get no flag (set them
    in the TOML file). bool: `--x true|false`, or `--x` alone for true.
    Optional: `none` (or `null`) for None. Literal: one of the allowed values. list/tuple:
    `--x a b c` (nothing after `--x` is the empty list). Help comes from
    `field(metadata={"help": ...})`, followed by the default. `prefix` (e.g. "ppo") puts every
    flag of `cls` under `--ppo.`.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"add_dataclass_args: expected a dataclass type, got {cls!r}")
    prefix = prefix.strip(".")
    for key, tp, default, help_text in _flag_specs(cls, prefix, None):
        flags = ["--" + key.replace("_", "-")]
        if "_" in key:
            flags.append("--" + key)
        shown = "required" if default is dataclasses.MISSING else f"default: {_show_default(default)}"
        kwargs: dict[str, Any] = dict(dest=key, default=argparse.SUPPRESS,
                                      help=(f"{help_text} ({shown})" if help_text else f"({shown})").replace("%", "%%"))
        inner = _optional_inner(tp)
        base = inner if inner is not None else tp
        origin, args = typing.get_origin(base), typing.get_args(base)
        if origin is dict or base is dict or (origin is tuple and args and args[-1] is not Ellipsis):
            continue  # tables and fixed-length tuples are set in the TOML file
        if origin in (list, tuple) or base in (list, tuple):
            item_parser = _scalar_parser(args[0]) if args else str
            if item_parser is None:
                raise TypeError(f"config key {key!r}: no flag for a list of {_describe(args[0])}")
            kwargs.update(nargs="*", action=_ListAction, item_parser=item_parser, optional=inner is not None,
                          metavar=_describe(args[0]).upper() if args else "ITEM")
        else:
            parse = _scalar_parser(tp)
            if parse is None:
                raise TypeError(f"config key {key!r}: no flag for type {_describe(tp)}; set it in the TOML file")
            kwargs["type"] = parse
            if base is bool:
                kwargs.update(nargs="?", const=True, metavar="true|false")
            elif typing.get_origin(base) is Literal:
                kwargs["metavar"] = "{" + ",".join(str(c) for c in typing.get_args(base)) + "}"
            else:
                kwargs["metavar"] = _describe(base).upper() + ("|none" if inner is not None else "")
        parser.add_argument(*flags, **kwargs)


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ConfigError(message)


_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.-]*=")


def _nest(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _merge(base: dict, over: Mapping) -> dict:
    """Deep-merge `over` into a copy of `base`: tables merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def resolve_config(cls: type, args: argparse.Namespace | Sequence[str] | None = None,
                   toml_path: str | os.PathLike | None = None, prefix: str = "") -> Any:
    """The config of a run: the dataclass defaults, overridden by the TOML file, overridden by flags.

    `args` is the namespace from a parser set up with `add_dataclass_args(parser, cls, prefix)`
    (other entries in it are ignored), or a list of overrides such as
    `["--ppo.clip-eps", "0.1", "seed=3"]` (an item `key=value` reads as `--key=value`), or None.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"resolve_config: expected a dataclass type, got {cls!r}")
    prefix = prefix.strip(".")
    data = load_toml(toml_path) if toml_path is not None else {}

    if args is None:
        flat = {}
    elif isinstance(args, argparse.Namespace):
        dests = {key for key, *_ in _flag_specs(cls, prefix, None)}
        flat = {k: v for k, v in vars(args).items() if k in dests}
    elif isinstance(args, Sequence) and not isinstance(args, str):
        parser = _RaisingParser(prog="config", add_help=False, allow_abbrev=False)
        add_dataclass_args(parser, cls, prefix)
        argv = ["--" + a if _KEY_VALUE.match(a) else a for a in map(str, args)]
        namespace, unknown = parser.parse_known_args(argv)
        sections = set(_section_paths(cls, prefix))
        for token in unknown:
            if token.startswith("-"):
                name = token.lstrip("-").split("=", 1)[0].replace("-", "_")
                if name in sections:
                    raise ConfigError(f"config key {name!r} is a section; set its keys, e.g. --{name}.<key> value")
                if prefix and not name.startswith(prefix + "."):
                    raise ConfigError(f"unknown config key {name!r}; expected keys under {prefix!r}")
                raise _unknown_key(name[len(prefix) + 1:] if prefix else name, cls, prefix)
            raise ConfigError(f"unexpected argument {token!r}; expected --key value or key=value")
        flat = vars(namespace)
    else:
        raise TypeError(f"resolve_config: args must be an argparse.Namespace, a list of str or None, "
                        f"got {type(args).__name__}")

    if prefix:
        flat = {k[len(prefix) + 1:]: v for k, v in flat.items()}
    return validate_ranges(from_dict(cls, _merge(data, _nest(flat)), path=prefix), prefix)


# ---------------------------------------------------------------- ranges of numeric options

# A numeric field's allowed range, by "ClassName.field" or by field name: (low, low_open, high,
# high_open); None leaves a side unbounded. A field's metadata may say the same with "range".
# Every float must be finite, and an int field is already an integer by type.
_POS = (0, True, None, False)        # > 0
_NONNEG = (0, False, None, False)    # >= 0
_ONE = (1, False, None, False)       # >= 1
_UNIT = (0, False, 1, False)         # [0, 1]
_UNIT_OPEN_HIGH = (0, False, 1, True)  # [0, 1)
RANGES: dict[str, tuple] = {
    # counts
    "steps": _NONNEG, "epochs": _NONNEG, "iterations": _NONNEG, "max_pairs": _NONNEG, "rounds": _NONNEG,
    "batch_size": _ONE, "minibatch_size": _ONE, "critic_minibatch_size": _ONE, "eval_batch_size": _ONE,
    "prompts_per_iteration": _ONE, "prompts_per_round": _ONE, "steps_per_round": _ONE,
    "samples_per_prompt": (2, False, None, False), "group_size": _ONE, "k": _ONE, "mu": _ONE,
    "ppo_epochs": _ONE, "critic_epochs": _NONNEG, "cg_iters": _ONE, "backtrack_iters": _ONE,
    "eval_every": _ONE, "eval_batches": _ONE, "eval_prompts": _NONNEG, "eval_pairs": _NONNEG, "samples": _NONNEG,
    "ece_bins": _ONE, "max_len": _NONNEG, "max_new_tokens": _NONNEG, "n": _ONE, "n_prompts": _NONNEG,
    "n_test_prompts": _NONNEG, "n_annotators": _ONE, "top_k": _ONE, "threads": _NONNEG, "seed": _NONNEG,
    "horizon": _ONE,
    # run settings
    "RunConfig.log_every": _ONE, "RunConfig.save_every": _NONNEG, "RunConfig.keep_last": _ONE,
    # the optimiser and its schedule
    "OptimConfig.lr": _POS, "OptimConfig.weight_decay": _NONNEG, "OptimConfig.beta1": _UNIT_OPEN_HIGH,
    "OptimConfig.beta2": _UNIT_OPEN_HIGH, "OptimConfig.eps": _POS, "OptimConfig.warmup_steps": _NONNEG,
    "OptimConfig.min_lr_ratio": _UNIT, "OptimConfig.grad_clip": _NONNEG, "OptimConfig.grad_accum": _ONE,
    "critic_lr": _POS,
    # model and LoRA shapes
    "LoRAConfig.r": _ONE, "LoRAConfig.alpha": _POS, "LoRAConfig.dropout": _UNIT_OPEN_HIGH,
    "ModelSize.n_layer": _ONE, "ModelSize.n_head": _ONE, "ModelSize.n_embd": _ONE,
    "ModelSize.block_size": _NONNEG, "ModelSize.dropout": _UNIT_OPEN_HIGH,
    # sampling
    "temperature": _POS, "GenerateConfig.temperature": _NONNEG, "sample_temperature": _POS,
    "top_p": (0, True, 1, False),
    # objectives
    "clip_eps": _POS, "gamma": _UNIT, "lam": _UNIT, "vf_coef": _NONNEG, "value_clip": _NONNEG,
    "target_approx_kl": _NONNEG, "reward_clip": _NONNEG, "penalty_beta": _NONNEG, "penalty_target": _POS,
    "max_kl": _POS, "damping": _NONNEG, "backtrack_coeff": (0, True, 1, True), "coef": _NONNEG,
    "target": _POS, "beta": _NONNEG, "DPOLossConfig.beta": _POS, "label_smoothing": (0, False, 0.5, True),
    "flip_prob": _UNIT, "tie_margin": _NONNEG, "val_fraction": _UNIT_OPEN_HIGH, "tol_scale": _POS,
}


def _range_words(r: tuple) -> str:
    low, low_open, high, high_open = r
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


def validate_ranges(cfg: Any, path: str = "") -> Any:
    """Check every numeric field of ``cfg`` (and its sections) against its range (``RANGES`` or the
    field's metadata "range") and, for floats, finiteness; a ConfigError names the option."""
    hints = _type_hints(type(cfg))
    for f in _init_fields(type(cfg)):
        value = getattr(cfg, f.name)
        key = _join(path, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_ranges(value, key)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flag = "--" + key.replace("_", "-")
        is_int = hints[f.name] is int or _optional_inner(hints[f.name]) is int
        kind = "an integer" if is_int else "a finite number"
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag}: expected {kind}, got {value!r}")
        r = f.metadata.get("range") or RANGES.get(f"{type(cfg).__name__}.{f.name}") or RANGES.get(f.name)
        if r is None:
            continue
        low, low_open, high, high_open = r
        bad = ((low is not None and (value < low or (low_open and value == low)))
               or (high is not None and (value > high or (high_open and value == high))))
        if bad:
            raise ConfigError(f"{flag}: expected {kind} {_range_words(r)}, got {value!r}")
    return cfg
