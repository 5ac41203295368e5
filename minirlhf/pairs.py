"""Preference pairs through a model: log pi(y_w|x) and log pi(y_l|x) from one concatenated forward
pass, and the reference policy's log-probs of every pair, computed once and cached with the rows
(``PairPool``). What DPO and every other pairwise preference loss feeds on.

log pi(y|x) is summed over the response tokens (``logprobs.sequence_logprobs``), with dropout off
for the policy as for the reference.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from minirlhf.data import collate_preferences, step_batch
from minirlhf.logprobs import sequence_logprobs
from minirlhf.objectives.policy import logprobs_from_logits
from minirlhf.policies import dropout_off, reference_policy


def batch_logps(model, batch: dict, device) -> torch.Tensor:
    """log pi(y|x) of every row of a collated batch (input_ids, attention_mask, loss_mask), (N,), in one
    forward pass with dropout off.

    Always with dropout off: the policy's and the reference's log-probs are computed the same way, so
    at the start (policy = reference) every log-ratio is 0 and the loss takes its closed form (log 2
    for the sigmoid loss). With dropout on for the policy only, log pi - log pi_ref would be noise
    that biases the loss and the implicit rewards."""
    ids, mask, lmask = (batch[k].to(device) for k in ("input_ids", "attention_mask", "loss_mask"))
    with dropout_off(model):
        return sequence_logprobs(model, ids, mask, lmask)  # (N,)


def shared_prompt_logps(model, shared: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_w|x) and log pi(y_l|x), (B,) each, from one forward pass over the B rows x y_w y_l of
    ``data.share_prompts``, dropout off. As in ``logprobs.token_logprobs``, column t scores the token at
    t + 1, summed over each segment; the one exception is y_l's first token, which follows the prompt,
    not y_w: it is scored from its ``predictor`` column (the prompt's last), not from y_w's EOS."""
    ids, pos, allowed, segment, predictor, chosen_last = (shared[k].to(device) for k in (
        "input_ids", "positions", "allowed", "segment", "predictor", "chosen_last"))
    with dropout_off(model):
        logits = model(ids, positions=pos, allowed=allowed)  # (B,T,V)
    logp = logprobs_from_logits(logits[:, :-1], ids[:, 1:])  # (B,T-1): column t scores token t + 1
    rows, first_l = torch.arange(ids.size(0), device=ids.device), chosen_last + 1  # y_l's first column
    first = logprobs_from_logits(logits[rows, predictor[rows, first_l]], ids[rows, first_l])  # (B,)
    scored = segment[:, 1:]  # (B,T-1): the segment of the token each column scores
    in_l = (scored == 2).index_put((rows, chosen_last), torch.zeros((), dtype=torch.bool, device=ids.device))
    return ((logp * (scored == 1).to(logp.dtype)).sum(-1),
            (logp * in_l.to(logp.dtype)).sum(-1) + first)


def concatenated_logps(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_w|x) and log pi(y_l|x), (B,) each, from ONE forward pass over the 2B rows of a
    ``collate_preferences`` batch (chosen rows first), dropout off (``batch_logps``); over its B rows
    x y_w y_l instead when it was collated with ``share_prompt`` (``shared_prompt_logps``)."""
    if "shared" in batch:
        return shared_prompt_logps(model, batch["shared"], device)
    logps = batch_logps(model, batch, device)  # (2B,)
    B = logps.size(0) // 2
    return logps[:B], logps[B:]


@torch.no_grad()
def reference_logps(model, rows: list[dict], tokenizer, template, max_len: int, truncation: str = "error",
                    batch_size: int = 64, device="cpu", ref_model=None,
                    autocast=contextlib.nullcontext, share_prompt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_ref(y_w|x) and log pi_ref(y_l|x) for every pair, (N,) each, on the CPU in the dtype the
    model computes them in. Called once per set of pairs; the trainer never calls it twice for the same pair.
    ``share_prompt``: each pair's prompt goes through the model once (``data.share_prompts``)."""
    chosen, rejected = [torch.zeros(0)], [torch.zeros(0)]
    with reference_policy(model, ref_model) as ref:
        for i in range(0, len(rows), batch_size):
            batch = collate_preferences(tokenizer, template, rows[i : i + batch_size], max_len, truncation,
                                        share_prompt=share_prompt)
            with autocast():
                c, r = concatenated_logps(ref, batch, device)
            chosen.append(c.cpu())
            rejected.append(r.cpu())
    return torch.cat(chosen), torch.cat(rejected)  # (N,), (N,)


@dataclass
class PairPool:
    """Preference rows with their cached reference log-probs (row i <-> ref_chosen[i], ref_rejected[i])."""

    rows: list[dict]
    ref_chosen: torch.Tensor  # (N,)
    ref_rejected: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, step: int, batch_size: int, seed: int, order=None):
        """The pairs of step ``step`` (1-based) of a seeded epoch walk (data.step_batch), a function of
        (seed, step): returns (rows, ref_chosen (B,), ref_rejected (B,), order)."""
        idx, order = step_batch(range(len(self.rows)), order, step, batch_size, seed)
        index = torch.tensor(idx, dtype=torch.long)
        return [self.rows[i] for i in idx], self.ref_chosen[index], self.ref_rejected[index], order
