"""Log-probabilities of given tokens under a language model: the quantity every RLHF loss uses.

    log pi_theta(y | x) = sum_t log pi_theta(y_t | x, y_<t)

``token_logprobs`` gives the per-token terms of one teacher-forced forward pass; ``sequence_logprobs``
sums them over the response tokens (DPO, Rafailov et al., 2023, eq. 7 uses the sum).
"""
from __future__ import annotations

import torch

from minirlhf.objectives.policy import logprobs_from_logits


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   temperature: float = 1.0) -> torch.Tensor:
    """log pi(x_{t+1} | x_<=t) for t = 0..T-2, shape (B, T-1); position t scores token t+1.

    ``temperature`` divides the logits, as the sampler did: the old log-probs of a rollout must
    be those of the distribution the tokens were drawn from.
    """
    logits = model(input_ids, attention_mask)  # (B,T,V)
    return logprobs_from_logits(logits[:, :-1], input_ids[:, 1:], temperature)


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      loss_mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """sum over response tokens of log pi(y_t | x, y_<t), shape (B,). ``loss_mask`` (B,T) is 1 on
    the response tokens (as ``collate_sft`` gives it)."""
    logp = token_logprobs(model, input_ids, attention_mask, temperature)
    return (logp * loss_mask[:, 1:].to(logp.dtype)).sum(-1)
