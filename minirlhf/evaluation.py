"""Generating responses to prompts in batches, and scoring them with a task's exact metric."""
from __future__ import annotations

import torch

from minirlhf.rollout import sample_responses


def generate_responses(model, tokenizer, template, prompts: list[str], max_new_tokens: int,
                       temperature: float = 0.0, batch_size: int = 128,
                       generator: torch.Generator | None = None, top_k: int | None = None,
                       top_p: float | None = None) -> list[str]:
    """One response string per prompt (special tokens removed), generated in left-padded batches
    through the one sampling path (``rollout.sample_responses``)."""
    return sample_responses(model, tokenizer, template, prompts, max_new_tokens, temperature, generator,
                            batch_size=batch_size, top_k=top_k, top_p=top_p)


def evaluate_task(model, task, tokenizer, template, split: str = "test", temperatures=(0.0,),
                  max_prompts: int | None = None, seed: int = 0, batch_size: int = 128,
                  max_new_tokens: int | None = None, return_responses: bool = False):
    """The task metric on ``split`` prompts at each temperature.

    Keys: ``eval/<metric>`` for greedy decoding, ``eval_t<temperature>/<metric>`` otherwise
    (e.g. ``eval_t1/accuracy``). Sampling uses its own seeded generator so evaluation never
    moves the training random streams. With ``return_responses``, returns (metrics, responses):
    responses[prefix] are the scored responses, one per prompt, under the same prefixes
    ("eval", "eval_t1", ...).
    """
    prompts = task.prompts(split)
    if max_prompts is not None:
        prompts = prompts[:max_prompts]
    max_new = max_new_tokens or task.max_response_tokens
    out, answers = {}, {}
    for t in temperatures:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        responses = generate_responses(model, tokenizer, template, prompts, max_new, temperature=t,
                                       batch_size=batch_size, generator=gen)
        prefix = "eval" if t == 0 else f"eval_t{t:g}"
        answers[prefix] = responses
        for k, v in task.metric(prompts, responses).items():
            out[f"{prefix}/{k}"] = v
    return (out, answers) if return_responses else out


def sample_table(prompts: list[str], responses: list[str], references: list[str] | None = None,
                 n: int = 4) -> str:
    """A few prompt/response lines for the console."""
    lines = []
    for i in range(min(n, len(prompts))):
        ref = f"   (reference: {references[i]!r})" if references else ""
        lines.append(f"  {prompts[i]!r} -> {responses[i]!r}{ref}")
    return "\n".join(lines)
