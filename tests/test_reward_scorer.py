"""The reward model scores, in PPO, the ids it was trained on: the prompt and the decoded response
encoded by the template, not the sampled ids, which a byte-level BPE policy can emit in a form the
tokenizer never produces (e.g. every byte on its own)."""
import pytest
import torch

from minirlhf.heads import RewardModel
from minirlhf.model import GPT, GPTConfig
from minirlhf.rollout import RewardModelScorer, Rollout
from minirlhf.tokenizer import BPETokenizer, get_template

TEXTS = ["snow is cold and white.", "the sun is a star.", "snow falls from clouds.", "stars shine at night."] * 20
PROMPT = "What is snow?"
RESPONSES = ["snow is cold.", "the sun is a star."]


def rollout_of(tok, template, rows, ended):
    """A Rollout of one prompt and the given response ids (EOS appended where ``ended``), right-padded."""
    p_ids, _ = template.encode(tok, PROMPT, None)
    responses = [ids + [tok.eos_id] * e for ids, e in zip(rows, ended)]
    R = max(len(r) for r in responses)
    input_ids = torch.tensor([p_ids + r + [tok.pad_id] * (R - len(r)) for r in responses])  # (B, P+R)
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (R - len(r)) for r in responses])  # (B, R)
    attention_mask = torch.cat([torch.ones(len(rows), len(p_ids), dtype=torch.long), mask.long()], 1)
    texts = [tok.decode(r) for r in rows]
    return Rollout([PROMPT] * len(rows), texts, input_ids, attention_mask, len(p_ids), mask,
                   torch.tensor(ended, dtype=torch.bool))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    tok = BPETokenizer.train(TEXTS, vocab_size=300)
    template = get_template("chat")
    rm = RewardModel(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)))
    return tok, template, rm.eval()


def test_sampled_ids_that_are_not_the_tokenizers_encoding_are_scored_as_their_text(setup):
    tok, template, rm = setup
    canonical = [tok.encode(r) for r in RESPONSES]
    bytewise = [[i for ch in r for i in tok.encode(ch)] for r in RESPONSES]  # one token per byte
    assert all(tok.decode(b) == r for b, r in zip(bytewise, RESPONSES))
    assert all(len(b) > len(c) for b, c in zip(bytewise, canonical))  # the BPE merged some bytes
    rollout = rollout_of(tok, template, [bytewise[0], canonical[1]], ended=[True, True])
    with torch.no_grad():
        expected = torch.stack([rm.score(torch.tensor([template.encode(tok, PROMPT, r)[0]]))[0] for r in RESPONSES])
    scorer = RewardModelScorer(rm, normalize=False, tokenizer=tok, template=template)
    torch.testing.assert_close(scorer(rollout), expected, rtol=0, atol=1e-6)
    as_sampled = RewardModelScorer(rm, normalize=False)(rollout)  # the sampled ids: another input, another score
    assert abs(float(as_sampled[0] - expected[0])) > 1e-4
    torch.testing.assert_close(as_sampled[1], expected[1], rtol=0, atol=1e-6)  # canonical ids: the same


def test_a_response_without_eos_is_scored_without_one(setup):
    tok, template, rm = setup
    rollout = rollout_of(tok, template, [tok.encode("snow is")], ended=[False])
    ids = template.encode(tok, PROMPT, "snow is", add_eos=False)[0]
    assert ids[-1] != tok.eos_id
    scorer = RewardModelScorer(rm, normalize=False, tokenizer=tok, template=template)
    with torch.no_grad():
        expected = rm.score(torch.tensor([ids]))
    torch.testing.assert_close(scorer(rollout), expected, rtol=0, atol=1e-6)
