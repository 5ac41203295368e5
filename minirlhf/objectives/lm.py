"""The language-modelling loss of pretraining and supervised fine-tuning.

    L(theta) = - (1 / sum_t m_t) * sum_t m_t log pi_theta(x_t | x_<t)

(Radford et al., 2018, eq. 1 for pretraining; Ouyang et al., 2022, section 3.5 for SFT, where the
mask m keeps only the response tokens, so the model is never trained to write the prompt.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor,
                    loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked mean negative log-likelihood of each next token.

    logits (B,T,V) from a forward pass over input_ids (B,T); the prediction at t is scored
    against x_{t+1}. ``loss_mask`` (B,T) marks the tokens to be predicted (1 on response tokens
    for SFT); None scores every token after the first.
    """
    B, T, V = logits.shape
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, V), targets.reshape(-1), reduction="none")
    nll = nll.view(B, T - 1)  # (B,T-1)
    if loss_mask is None:
        return nll.mean()
    m = loss_mask[:, 1:].to(nll.dtype)
    n = m.sum()
    if n == 0:
        raise ValueError("next_token_loss: the loss mask selects no tokens")
    return (nll * m).sum() / n
