"""The SFT / pretraining loss against a hand-computed masked cross-entropy."""
import math

import torch

from minirlhf.objectives.lm import next_token_loss


def test_masked_next_token_loss_counts_only_response_tokens():
    torch.manual_seed(0)
    V = 5
    logits = torch.randn(2, 4, V, dtype=torch.float64)
    ids = torch.tensor([[1, 3, 4, 2], [1, 2, 0, 0]])
    # row 0: prompt = ids[:2], response = ids[2:]; row 1: prompt ids[:1], response ids[1:2], then padding.
    loss_mask = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]])
    terms = []
    for b, t in [(0, 2), (0, 3), (1, 1)]:  # the predicted positions, written out by hand
        logp = logits[b, t - 1] - torch.logsumexp(logits[b, t - 1], 0)
        terms.append(-logp[ids[b, t]].item())
    expected = sum(terms) / 3
    assert math.isclose(next_token_loss(logits, ids, loss_mask).item(), expected, rel_tol=1e-12)
    # Changing a prompt or a padding token's target changes nothing.
    ids2 = ids.clone()
    ids2[1, 3] = 4
    logits2 = logits.clone()
    logits2[1, 2] += 10.0  # predicts the padded position 3
    assert math.isclose(next_token_loss(logits2, ids2, loss_mask).item(), expected, rel_tol=1e-12)


def test_unmasked_is_the_mean_over_every_next_token():
    torch.manual_seed(1)
    logits = torch.randn(3, 6, 7, dtype=torch.float64)
    ids = torch.randint(0, 7, (3, 6))
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.isclose(next_token_loss(logits, ids), -logp.mean())
