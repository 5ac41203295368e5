"""The ``minirlhf`` command.

    minirlhf pretrain                       train a GPT from scratch on the task's corpus
    minirlhf sft --lora.enabled true        supervised fine-tuning (full or LoRA)
    minirlhf generate --model runs/sft/model --prompt "Q: 7+5=\\nA:"
    minirlhf import ~/models/gpt2 --out models/gpt2   a Hugging Face GPT-2 folder as a model folder
    minirlhf <command> --help               every option, with its default

Every option is a field of the command's config dataclass (``--section.field-name value``); a
TOML file given with ``--config run.toml`` can hold a whole run. Precedence: defaults, then the
TOML file, then flags.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass, field

from minirlhf.stages import COMMANDS  # command -> (module, config class, function, help)
# commands whose first argument(s) may be given without the flag: `minirlhf import PATH --out DIR`,
# `minirlhf report RUN_DIR [RUN_DIR ...]`, `minirlhf frontier PIPELINE_DIR`
POSITIONAL = {"import": "path", "report": "runs", "frontier": "from_dir"}


@dataclass
class GenerateConfig:
    model: str = field(default="runs/sft/model", metadata={"help": "model folder"})
    prompt: list[str] = field(default_factory=list,
                              metadata={"help": "prompts (\\n is read as a newline); none: held-out task prompts"})
    n: int = field(default=8, metadata={"help": "held-out prompts to use when no --prompt is given"})
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = field(default=0, metadata={"help": "0: the task's suggestion"})
    seed: int = 0
    device: str = "auto"


def generate(cfg: GenerateConfig) -> dict:
    import torch

    from minirlhf.device import resolve_device
    from minirlhf.evaluation import generate_responses
    from minirlhf.saving import load_model
    from minirlhf.tasks import task_from_record

    from minirlhf.config import to_dict
    from minirlhf.folders import check_input_kinds

    check_input_kinds("generate", to_dict(cfg))
    device = resolve_device(cfg.device)
    model, tokenizer, template, meta = load_model(cfg.model, kind="gpt", device=device)
    task = None
    if meta.get("task"):
        task = task_from_record(meta["task"])
    template = template or (task.template() if task else None)
    if tokenizer is None or template is None:
        raise ValueError(f"{cfg.model}: the folder has no tokenizer or template")
    prompts = [p.replace("\\n", "\n") for p in cfg.prompt]
    if not prompts:
        if task is None:
            raise ValueError("no --prompt given and the model folder records no task to take prompts from")
        prompts = task.prompts("test")[: cfg.n]
    max_new = cfg.max_new_tokens or (task.max_response_tokens if task else 64)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    responses = generate_responses(model.eval(), tokenizer, template, prompts, max_new, cfg.temperature,
                                   generator=gen, top_k=cfg.top_k, top_p=cfg.top_p)
    for p, r in zip(prompts, responses):
        print(f"{p!r} -> {r!r}")
    out = {"responses": responses}
    if task is not None and not cfg.prompt:
        out.update(task.metric(prompts, responses))
        print(json.dumps({k: v for k, v in out.items() if k != "responses"}))
    return out


def build_parser() -> argparse.ArgumentParser:
    from minirlhf.config import add_dataclass_args

    parser = argparse.ArgumentParser(prog="minirlhf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (module, cls_name, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--config", default=None, help="TOML file with the run's settings")
        add_dataclass_args(p, getattr(importlib.import_module(module), cls_name))
    return parser


def _expected_errors() -> tuple:
    """Failures that are the input's fault, reported in one line; anything else is a bug and keeps its traceback."""
    from minirlhf.checkpoint import CheckpointError
    from minirlhf.data import DataError

    errors = [ValueError, OSError, CheckpointError, DataError, FloatingPointError, KeyError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("MINIRLHF_DEBUG", "").lower() not in ("", "0", "false", "no")


def main(argv=None) -> int:
    """Run a command; an expected failure prints one line (exit 1; 2 for options, 130/143 for signals)
    with no traceback unless --debug or MINIRLHF_DEBUG=1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return _main(argv)
    except KeyboardInterrupt as e:
        if debug:
            raise
        code = getattr(e, "exit_code", 130)
        print(str(e) or f"minirlhf: interrupted; nothing was saved", file=sys.stderr)
        return code
    except _expected_errors() as e:
        if debug:
            raise
        prog = f"minirlhf {argv[0]}" if argv else "minirlhf"
        message = str(e).strip() or type(e).__name__
        if isinstance(e, KeyError):
            message = f"missing entry {message}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        print(f"{prog}: (run with --debug or MINIRLHF_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    from minirlhf.config import ConfigError, resolve_config

    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    command = argv[0]
    module, cls_name, fn_name, help_text = COMMANDS[command]
    mod = importlib.import_module(module)
    cls = getattr(mod, cls_name)
    from minirlhf.config import add_dataclass_args

    parser = argparse.ArgumentParser(prog=f"minirlhf {command}", description=help_text,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="TOML file with the run's settings")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error "
                                                             "(also MINIRLHF_DEBUG=1)")
    add_dataclass_args(parser, cls)
    rest = argv[1:]
    if command in POSITIONAL and rest and not rest[0].startswith("-"):
        rest = [f"--{POSITIONAL[command]}"] + rest
    args, unknown = parser.parse_known_args(rest)
    for flag in unknown:
        if flag.startswith("-"):
            import difflib

            options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
            close = difflib.get_close_matches(flag.split("=")[0].replace("_", "-"), options, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            parser.error(f"unknown option {flag}{hint}")
        parser.error(f"unexpected argument {flag!r}")
    try:
        cfg = resolve_config(cls, args, toml_path=args.config)
    except ConfigError as e:
        parser.error(str(e))
    import signal

    from minirlhf.trainers import common

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    common.HANDLE_SIGNALS = True
    distributed = False
    try:
        getattr(mod, fn_name)(cfg)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun: leave together, and cleanly
            distributed = True
            dist.barrier()
            dist.destroy_process_group()
    finally:
        common.HANDLE_SIGNALS = False
        for sig, handler in handlers.items():  # a run that failed did not put its own back
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):  # pragma: no cover - not the main thread
                pass
    if distributed:
        # Every file is written and closed, and every rank has left the group. A torchrun worker that
        # then runs the interpreter's teardown can abort in C++ ("terminate called without an active
        # exception", a background thread of the process group's store still joinable), which turns a
        # finished run into a failed one now and then; leaving now, as the spawned test workers do, cannot.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
