"""Tasks: prompts, demonstrations, a programmatic reward and an exact metric.

    get_task("arithmetic")                       addition/subtraction, exact-match reward
    get_task("arithmetic", max_operand=20)       config fields as keyword arguments
    get_task("instruct", vocab_size=2048)        explain-to-a-child, heuristic judge
    get_task("bandit", arms=6)                   one-token arms, seeded rewards: exact optima
    get_task("jsonl", sft="dolly.jsonl")         your own demonstrations, prompts and judge
"""
from __future__ import annotations

from minirlhf.tasks.arithmetic import (ArithmeticConfig, ArithmeticTask, needs_carry_or_borrow,
                                       parse_answer)
from minirlhf.tasks.bandit import BanditConfig, BanditTask
from minirlhf.tasks.base import SPLITS, Task
from minirlhf.tasks.instruct import InstructConfig, InstructTask, judge_components, judge_score
from minirlhf.tasks.jsonl import JsonlConfig, JsonlTask
from minirlhf.tasks.metrics import mean_rouge_l, rouge_l

TASKS: dict[str, type[Task]] = {
    ArithmeticTask.name: ArithmeticTask,
    InstructTask.name: InstructTask,
    BanditTask.name: BanditTask,
    JsonlTask.name: JsonlTask,
}


def get_task(name: str, **config) -> Task:
    """The task registered under `name`, built with its config fields given as keywords
    (or `config=` a ready config dataclass). Unknown names and fields raise ValueError."""
    if name not in TASKS:
        raise ValueError(f"task: unknown name {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](**config)


def parse_task_args(args: list[str]) -> dict:
    """["max_operand=49", "ops=('+',)"] -> {"max_operand": 49, "ops": ("+",)} (Python literals, else str)."""
    import ast

    out = {}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"task option {item!r}: expected key=value")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def task_from_record(record: dict) -> Task:
    """The task a model folder records in its metadata: ``{"name": ..., "args": ["key=value", ...]}``."""
    return get_task(record["name"], **parse_task_args(record.get("args", [])))


__all__ = [
    "SPLITS", "TASKS", "Task", "get_task", "parse_task_args", "task_from_record",
    "ArithmeticConfig", "ArithmeticTask", "needs_carry_or_borrow", "parse_answer",
    "InstructConfig", "InstructTask", "judge_components", "judge_score",
    "BanditConfig", "BanditTask",
    "rouge_l", "mean_rouge_l",
    "JsonlConfig", "JsonlTask",
]
