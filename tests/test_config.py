import argparse
import json
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from minirlhf.config import (
    ConfigError,
    add_dataclass_args,
    from_dict,
    load_config,
    load_toml,
    resolve_config,
    save_config,
    to_dict,
)


@dataclass
class Opt:
    lr: float = field(default=1e-3, metadata={"help": "learning rate, 100% of the step"})
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass
class PPO:
    clip_eps: float = 0.2
    kl_kind: Literal["k1", "k2", "k3"] = "k1"
    target_kl: Optional[float] = None
    whiten: bool = True
    opt: Opt = field(default_factory=lambda: Opt(lr=5e-4))  # differs from Opt's own default


@dataclass
class LoRA:
    r: int = 8
    alpha: float = 16.0


@dataclass
class Run:
    seed: int = 0
    name: str = "run"
    tags: list[str] = field(default_factory=list)
    steps: Optional[int] = 10
    ppo: PPO = field(default_factory=PPO)
    lora: Optional[LoRA] = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Needs:
    path: str
    n: int = 1


DEFAULT_DICT = {
    "seed": 0, "name": "run", "tags": [], "steps": 10,
    "ppo": {"clip_eps": 0.2, "kl_kind": "k1", "target_kl": None, "whiten": True,
            "opt": {"lr": 5e-4, "betas": (0.9, 0.999)}},
    "lora": None, "extra": {},
}


def _custom():
    return Run(seed=3, name="x", tags=["a", "b"], steps=None,
               ppo=PPO(clip_eps=0.1 + 0.2, kl_kind="k3", target_kl=0.02, whiten=False, opt=Opt(1e-5, (0.5, 0.25))),
               lora=LoRA(r=4), extra={"w": 0.5})


# ---------------------------------------------------------------- dicts, files, round trips

def test_to_dict_of_defaults():
    assert to_dict(Run()) == DEFAULT_DICT
    with pytest.raises(TypeError, match="dataclass instance"):
        to_dict(Run)


def test_round_trips():
    cfg = _custom()
    assert from_dict(Run, to_dict(cfg)) == cfg
    assert from_dict(Run, {}) == Run()


def test_save_config_reads_back_exactly(tmp_path):
    cfg = _custom()
    path = save_config(cfg, tmp_path / "config.json")
    back = load_config(Run, path)
    assert back == cfg
    assert back.ppo.clip_eps == 0.1 + 0.2  # 0.30000000000000004, bit for bit
    assert isinstance(back.ppo.opt.betas, tuple)
    assert json.loads(path.read_text())["ppo"]["opt"]["betas"] == [0.5, 0.25]


def test_partial_nested_table_keeps_the_enclosing_default():
    cfg = from_dict(Run, {"ppo": {"opt": {"betas": [0.5, 0.6]}}})
    assert cfg.ppo.opt == Opt(lr=5e-4, betas=(0.5, 0.6))  # lr from PPO's default, not Opt's 1e-3
    assert cfg.ppo.clip_eps == 0.2


def test_optional_dataclass_section():
    assert from_dict(Run, {"lora": {"alpha": 4}}).lora == LoRA(r=8, alpha=4.0)
    assert from_dict(Run, {"lora": None}).lora is None
    assert from_dict(Run, {"lora": "none"}).lora is None


def test_unknown_keys_name_the_closest_valid_key():
    with pytest.raises(ValueError, match=r"^unknown config key 'ppo\.clip_ep'; did you mean 'ppo\.clip_eps'\?$"):
        from_dict(Run, {"ppo": {"clip_ep": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown config key 'ppo\.opt\.betaz'; did you mean 'ppo\.opt\.betas'\?"):
        from_dict(Run, {"ppo": {"opt": {"betaz": [1.0]}}})
    with pytest.raises(ConfigError, match=r"unknown config key 'clip_eps'; did you mean 'ppo\.clip_eps'\?"):
        from_dict(Run, {"clip_eps": 0.1})
    with pytest.raises(ConfigError, match=r"unknown config key 'ppo\.zzzzzz'; valid keys under 'ppo': "
                                          r"clip_eps, kl_kind, target_kl, whiten, opt$"):
        from_dict(Run, {"ppo": {"zzzzzz": 1}})


@pytest.mark.parametrize("d, message", [
    ({"seed": "3"}, "config key 'seed': expected int, got str '3'"),
    ({"seed": 1.0}, "config key 'seed': expected int, got float 1.0"),
    ({"seed": True}, "config key 'seed': expected int, got bool True"),
    ({"ppo": {"whiten": 1}}, "config key 'ppo.whiten': expected bool, got int 1"),
    ({"ppo": {"kl_kind": "k4"}}, "config key 'ppo.kl_kind': expected one of 'k1', 'k2', 'k3', got str 'k4'"),
    ({"ppo": {"clip_eps": "0.1"}}, "config key 'ppo.clip_eps': expected float, got str '0.1'"),
    ({"ppo": {"target_kl": "big"}}, "config key 'ppo.target_kl': expected float or none, got str 'big'"),
    ({"tags": ["a", 2]}, "config key 'tags[1]': expected str, got int 2"),
    ({"tags": "a"}, "config key 'tags': expected list of str, got str 'a'"),
    ({"ppo": 3}, "config key 'ppo': expected table of PPO fields, got int 3"),
    ({"extra": {"w": "x"}}, "config key 'extra.w': expected float, got str 'x'"),
])
def test_mistyped_values_name_key_and_expected_type(d, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Run, d)
    assert str(info.value) == message


def test_accepted_conversions():
    cfg = from_dict(Run, {"ppo": {"clip_eps": 1, "target_kl": "none", "opt": {"betas": [1, 2]}}, "steps": "None"})
    assert cfg.ppo.clip_eps == 1.0 and type(cfg.ppo.clip_eps) is float
    assert cfg.ppo.target_kl is None and cfg.steps is None
    assert cfg.ppo.opt.betas == (1.0, 2.0) and all(type(b) is float for b in cfg.ppo.opt.betas)


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing config key 'path' \(str\); it has no default"):
        from_dict(Needs, {"n": 2})
    assert from_dict(Needs, {"path": "p"}) == Needs("p", 1)


def test_load_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = \n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_toml(bad)


# ---------------------------------------------------------------- flags and precedence

def _parser(prefix=""):
    parser = argparse.ArgumentParser(prog="t")
    parser.add_argument("--config")
    add_dataclass_args(parser, Run, prefix)
    return parser


def test_flags_parse_to_field_types_and_only_given_ones_are_set():
    ns = _parser().parse_args(["--ppo.clip_eps", "0.05", "--ppo.whiten", "false", "--steps", "none",
                               "--tags", "a", "b", "--ppo.opt.betas", "0.1", "0.2", "--lora.r", "4",
                               "--ppo.kl-kind", "k2", "--ppo.target-kl", "0.01"])
    given = {k: v for k, v in vars(ns).items() if k != "config"}
    assert given == {"ppo.clip_eps": 0.05, "ppo.whiten": False, "steps": None, "tags": ["a", "b"],
                     "ppo.opt.betas": [0.1, 0.2], "lora.r": 4, "ppo.kl_kind": "k2", "ppo.target_kl": 0.01}
    cfg = resolve_config(Run, ns)
    assert cfg == Run(tags=["a", "b"], steps=None, lora=LoRA(r=4),
                      ppo=PPO(clip_eps=0.05, kl_kind="k2", target_kl=0.01, whiten=False,
                              opt=Opt(lr=5e-4, betas=(0.1, 0.2))))


def test_bool_flag_alone_means_true_and_empty_list():
    ns = _parser().parse_args(["--ppo.whiten", "--tags"])
    assert vars(ns)["ppo.whiten"] is True and vars(ns)["tags"] == []
    assert resolve_config(Run, ["--ppo.whiten", "no"]).ppo.whiten is False


def test_a_repeated_list_flag_adds_to_the_list_while_the_first_replaces_the_toml_value(tmp_path):
    assert resolve_config(Run, ["--tags", "a", "--tags", "b", "c"]).tags == ["a", "b", "c"]
    toml = tmp_path / "run.toml"
    toml.write_text('tags = ["from-toml"]\n')
    assert resolve_config(Run, [], toml_path=toml).tags == ["from-toml"]
    assert resolve_config(Run, ["--tags", "x", "--tags", "y"], toml_path=toml).tags == ["x", "y"]


def test_help_shows_field_help_and_default():
    help_text = " ".join(_parser().format_help().split())
    assert "--ppo.opt.lr FLOAT learning rate, 100% of the step (default: 0.0005)" in help_text
    assert "--ppo.clip-eps FLOAT, --ppo.clip_eps FLOAT (default: 0.2)" in help_text
    assert "--ppo.kl-kind {k1,k2,k3}, --ppo.kl_kind {k1,k2,k3} (default: k1)" in help_text
    assert "--ppo.target-kl FLOAT|none, --ppo.target_kl FLOAT|none (default: none)" in help_text
    assert "--steps INT|none (default: 10)" in help_text
    assert "--ppo.whiten [true|false] (default: true)" in help_text
    assert "--tags [STR ...] (default: (empty))" in help_text
    assert "--extra" not in help_text  # tables are set in the TOML file


def test_toml_then_flags_precedence(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('seed = 1\nname = "from-toml"\n[ppo]\nclip_eps = 0.3\ntarget_kl = "none"\n'
                    '[ppo.opt]\nlr = 0.01\n[extra]\nw = 2\n')
    cfg = resolve_config(Run, ["--ppo.clip-eps", "0.1", "name=from-flag"], toml_path=toml)
    assert cfg == Run(seed=1, name="from-flag", extra={"w": 2.0},
                      ppo=PPO(clip_eps=0.1, target_kl=None, opt=Opt(lr=0.01, betas=(0.9, 0.999))))
    assert resolve_config(Run, None, toml_path=toml).ppo.clip_eps == 0.3
    assert resolve_config(Run) == Run()

    ns = _parser().parse_args(["--config", str(toml), "--seed", "5"])
    cfg = resolve_config(Run, ns, toml_path=ns.config)
    assert (cfg.seed, cfg.name, cfg.ppo.clip_eps, cfg.ppo.opt.lr) == (5, "from-toml", 0.3, 0.01)


def test_toml_unknown_key_is_reported_with_its_path(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("[ppo]\nclip_ep = 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'ppo\.clip_ep'; did you mean 'ppo\.clip_eps'\?"):
        resolve_config(Run, [], toml_path=toml)


@pytest.mark.parametrize("argv, message", [
    (["--ppo.clip-ep", "0.1"], r"^unknown config key 'ppo\.clip_ep'; did you mean 'ppo\.clip_eps'\?$"),
    (["ppo.clip_ep=0.1"], r"^unknown config key 'ppo\.clip_ep'; did you mean 'ppo\.clip_eps'\?$"),
    (["--seed", "abc"], r"^argument --seed: expected int, got 'abc'$"),
    (["--ppo.kl-kind", "k9"], r"^argument --ppo\.kl-kind(/--ppo\.kl_kind)?: expected one of 'k1', 'k2', 'k3', got 'k9'$"),
    (["--ppo.whiten", "maybe"], r"expected true or false, got 'maybe'"),
    (["--ppo.opt.betas", "0.1", "x"], r"argument --ppo\.opt\.betas: expected float, got 'x'"),
    (["--ppo", "3"], r"config key 'ppo' is a section"),
    (["stray"], r"unexpected argument 'stray'"),
])
def test_flag_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(Run, argv)


def test_prefix_puts_flags_under_a_section():
    ns = _parser(prefix="train").parse_args(["--train.ppo.clip-eps", "0.4", "--train.seed", "2"])
    assert resolve_config(Run, ns, prefix="train") == Run(seed=2, ppo=PPO(clip_eps=0.4))
    assert resolve_config(Run, ["--train.name", "p"], prefix="train").name == "p"
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.ppo\.clip_ep'; did you mean 'train\.ppo\.clip_eps'"):
        resolve_config(Run, ["--train.ppo.clip-ep", "1"], prefix="train")
