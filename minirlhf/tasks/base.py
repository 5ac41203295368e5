"""The Task interface: what every task hands to the trainers.

A task bundles everything an end-to-end RLHF run needs besides the algorithms:

    pretrain_text()      a plain-text corpus to pretrain a base model from scratch
    pretrain_documents() the same corpus as separate documents
    build_tokenizer()    a deterministic tokenizer for that corpus
    sft_rows(split)      demonstrations {"prompt", "response"} for supervised fine-tuning
    prompts(split)       prompts for sampling ("train") and held-out evaluation ("test")
    score(p, r)          a programmatic reward in [0, 1]: a gold check or a judge score
    metric(ps, rs)       the exact metric on a list of generations
    reference(p)         the gold response, where one exists

Tasks are plain Python (no torch): they produce strings and floats; the trainers turn
those into tensors.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any

SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """Return `split` if it is one of SPLITS, else raise a ValueError naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return split


def check_generations(prompts: list[str], responses: list[str]) -> None:
    """Validate the arguments of Task.metric: two equally long, non-empty lists of strings."""
    if len(prompts) != len(responses):
        raise ValueError(
            f"metric: expected as many responses as prompts, got {len(prompts)} prompts "
            f"and {len(responses)} responses")
    if len(prompts) == 0:
        raise ValueError("metric: expected at least one (prompt, response) pair, got none")
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise TypeError(f"metric: prompts[{i}] and responses[{i}] must be str, got "
                            f"{type(p).__name__} and {type(r).__name__}")


def config_from_kwargs(config_cls: type, config: Any = None, **overrides: Any) -> Any:
    """Build a task config dataclass from an instance and/or keyword overrides.

    Unknown field names raise a ValueError that lists the valid ones, so a typo in
    `get_task("arithmetic", max_operan=9)` fails loudly instead of being ignored.
    """
    if config is None:
        config = config_cls()
    elif not isinstance(config, config_cls):
        raise TypeError(f"config: expected a {config_cls.__name__}, got {type(config).__name__}")
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{config_cls.__name__}: unknown field(s) {unknown}; "
                         f"valid fields are {sorted(names)}")
    return dataclasses.replace(config, **overrides)


class Task(abc.ABC):
    """Abstract task. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: registry name, e.g. "arithmetic".
        metric_name: the headline key of `metric()`, e.g. "accuracy" or "judge_score".
        template_name: "plain" (prompt + response + EOS) or "chat"
            ("User: {prompt}\\n\\nAssistant: {response}" + EOS); see `template()`.
        max_response_tokens: suggested `max_new_tokens` for generation with the task's
            own tokenizer (EOS included).
    """

    name: str = ""
    metric_name: str = ""
    template_name: str = "plain"
    max_response_tokens: int = 32

    # ---- data -------------------------------------------------------------------------
    @abc.abstractmethod
    def build_tokenizer(self):
        """A tokenizer (minirlhf.tokenizer); the same one on every call for the same config."""

    @abc.abstractmethod
    def pretrain_text(self) -> str:
        """A plain-text corpus for pretraining the task's base model from scratch."""

    def pretrain_documents(self) -> list[str]:
        """The corpus as separate documents (the pretrainer wraps each in BOS ... EOS, as GPT-2's
        <|endoftext|> separates documents). Default: paragraphs of `pretrain_text` (blank-line
        separated)."""
        return [d.strip() for d in self.pretrain_text().split("\n\n") if d.strip()]

    @abc.abstractmethod
    def sft_rows(self, split: str = "train") -> list[dict]:
        """Demonstrations: a list of {"prompt": str, "response": str}."""

    @abc.abstractmethod
    def prompts(self, split: str) -> list[str]:
        """Prompts of `split` ("train" or "test"); the two splits are disjoint."""

    # ---- rewards and metrics ----------------------------------------------------------
    @abc.abstractmethod
    def score(self, prompt: str, response: str) -> float:
        """The programmatic reward of `response` to `prompt`, in [0, 1]."""

    @abc.abstractmethod
    def metric(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """The task's exact metric on a list of generations; has the key `metric_name`."""

    def reference(self, prompt: str) -> str | None:
        """The gold response to `prompt`, or None where the task has none."""
        return None

    # ---- formatting -------------------------------------------------------------------
    def template(self):
        """The prompt template object named by `template_name` (from minirlhf.tokenizer)."""
        from minirlhf.tokenizer import get_template  # lazy: the tokenizer layer

        return get_template(self.template_name)

    def __repr__(self) -> str:
        config = getattr(self, "config", None)
        return f"{type(self).__name__}({config!r})" if config is not None else type(self).__name__
