"""Sequence log-probs equal the chain rule computed one prefix at a time."""
import torch

from minirlhf.logprobs import sequence_logprobs, token_logprobs
from minirlhf.model import GPT, GPTConfig


def test_sequence_logprob_is_the_chain_rule_over_response_tokens():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval().double()
    ids = torch.tensor([[1, 4, 5, 6, 7, 2], [1, 8, 9, 2, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])
    for temperature in (1.0, 0.7):
        got = sequence_logprobs(m, ids, attn, loss_mask, temperature)
        for b in range(2):
            expected = 0.0
            for t in range(1, 6):
                if loss_mask[b, t]:
                    logits = m(ids[b : b + 1, :t])[0, -1] / temperature  # a fresh pass on the prefix
                    expected += torch.log_softmax(logits, -1)[ids[b, t]].item()
            assert abs(got[b].item() - expected) < 1e-10
    assert token_logprobs(m, ids, attn).shape == (2, 5)
