"""Prefix sharing: a preference pair as one row x y_w y_l (data.share_prompts) gives every response token
the hidden state it has in its own sequence, so reward-model scores, DPO log-probs and their gradients
equal those of the two separate rows; the exact layout is checked on a hand-made pair."""
import pytest
import torch

from minirlhf.data import collate_preferences, share_prompts
from minirlhf.heads import RewardModel
from minirlhf.lora import apply_lora
from minirlhf.model import GPT, GPTConfig
from minirlhf.objectives.preference import bradley_terry_loss
from minirlhf.pairs import concatenated_logps, shared_prompt_logps
from minirlhf.tasks import get_task
from minirlhf.trainers.reward import pair_scores

TASK = get_task("arithmetic", max_operand=9, max_test=20)
ROWS = [{"prompt": "Q: 7+5=\nA:", "chosen": " 12", "rejected": " 2", "prob": 0.8, "strength": 2.0},
        {"prompt": "Q: 1+1=\nA:", "chosen": " 2", "rejected": " 11\nQ", "prob": 1.0, "strength": 1.0},
        {"prompt": "Q: 19-3=\nA:", "chosen": " 16", "rejected": " 6", "prob": 0.6, "strength": 3.0},
        {"prompt": "Q: 4-4=\nA:", "chosen": " 0\nQ: 4", "rejected": " 1", "prob": 1.0, "strength": 1.0}]


def tiny_gpt(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=32)).double()


def test_the_layout_of_a_hand_made_pair():
    # pair 0: prompt [1, 10, 11], chosen response [20, 21, 2], rejected response [30, 2]
    # pair 1: prompt [1, 12], chosen response [2], rejected response [31, 2]: one padding column
    chosen = [([1, 10, 11, 20, 21, 2], 3), ([1, 12, 2], 2)]
    rejected = [([1, 10, 11, 30, 2], 3), ([1, 12, 31, 2], 2)]
    s = share_prompts(chosen, rejected, pad_id=0)
    assert s["input_ids"].tolist() == [[1, 10, 11, 20, 21, 2, 30, 2], [1, 12, 2, 31, 2, 0, 0, 0]]
    assert s["positions"].tolist() == [[0, 1, 2, 3, 4, 5, 3, 4], [0, 1, 2, 2, 3, 0, 0, 0]]
    assert s["segment"].tolist() == [[0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 1, 2, 2, -1, -1, -1]]
    # the token at t is predicted from column predictor[t]: y_l's first token from the prompt's last
    assert s["predictor"][0, 3:].tolist() == [2, 3, 4, 2, 6]
    assert s["predictor"][1, 2:5].tolist() == [1, 1, 3]
    assert s["chosen_last"].tolist() == [5, 2] and s["rejected_last"].tolist() == [7, 4]
    a = s["allowed"][:, 0].int().tolist()
    assert a[0][2] == [1, 1, 1, 0, 0, 0, 0, 0]  # a prompt token: the prompt up to itself
    assert a[0][4] == [1, 1, 1, 1, 1, 0, 0, 0]  # y_w's second token: the prompt and y_w up to itself
    assert a[0][6] == [1, 1, 1, 0, 0, 0, 1, 0]  # y_l's first token: the prompt and itself, never y_w
    assert a[0][7] == [1, 1, 1, 0, 0, 0, 1, 1]
    assert a[1][4] == [1, 1, 0, 1, 1, 0, 0, 0]
    assert a[1][6] == [0, 0, 0, 0, 0, 0, 1, 0]  # padding sees itself only


def test_pairs_with_different_prompts_are_refused():
    with pytest.raises(ValueError, match="different prompts"):
        share_prompts([([1, 10, 2], 2)], [([1, 11, 2], 2)], pad_id=0)
    with pytest.raises(ValueError, match="as many chosen as rejected"):
        share_prompts([([1, 10, 2], 2)], [], pad_id=0)


def test_reward_scores_and_gradients_equal_those_of_separate_rows():
    tok, template = TASK.build_tokenizer(), TASK.template()
    model = RewardModel(tiny_gpt(tok.vocab_size)).double()
    shared = collate_preferences(tok, template, ROWS, max_len=24, share_prompt=True)
    separate = {k: v for k, v in shared.items() if k != "shared"}
    assert shared["shared"]["input_ids"].numel() < separate["input_ids"].numel()

    def loss_and_grads(batch):
        chosen, rejected = pair_scores(model, batch, "cpu")
        loss = bradley_terry_loss(chosen, rejected, batch["prob"].double(), batch["strength"].double(), margin=0.3)
        return chosen.detach(), rejected.detach(), torch.autograd.grad(loss, list(model.parameters()))

    c1, r1, g1 = loss_and_grads(separate)
    c2, r2, g2 = loss_and_grads(shared)
    assert torch.allclose(c1, c2, rtol=0, atol=1e-12) and torch.allclose(r1, r2, rtol=0, atol=1e-12)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lora", [False, True])
def test_dpo_log_probs_and_gradients_equal_those_of_separate_rows(lora):
    tok, template = TASK.build_tokenizer(), TASK.template()
    model = tiny_gpt(tok.vocab_size)
    if lora:
        apply_lora(model, r=4, alpha=8.0)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at 0; move it so the adapters matter
                torch.nn.init.normal_(p, std=0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    shared = collate_preferences(tok, template, ROWS, max_len=24, share_prompt=True)
    separate = {k: v for k, v in shared.items() if k != "shared"}

    def logps_and_grads(batch):
        c, r = concatenated_logps(model, batch, "cpu")
        return c.detach(), r.detach(), torch.autograd.grad((c - 2 * r).sum(), params)

    c1, r1, g1 = logps_and_grads(separate)
    c2, r2, g2 = logps_and_grads(shared)
    assert torch.allclose(c1, c2, rtol=0, atol=1e-12) and torch.allclose(r1, r2, rtol=0, atol=1e-12)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_without_the_mask_the_rejected_response_would_see_the_chosen_one():
    # the equivalence above is not automatic: plain causal attention over x y_w y_l changes log pi(y_l|x)
    tok, template = TASK.build_tokenizer(), TASK.template()
    model = tiny_gpt(tok.vocab_size)
    s = dict(collate_preferences(tok, template, ROWS, max_len=24, share_prompt=True)["shared"])
    with torch.no_grad():
        c, r = shared_prompt_logps(model, s, "cpu")
        T = s["input_ids"].size(1)
        s["allowed"] = torch.ones(T, T, dtype=torch.bool).tril().expand(len(ROWS), 1, T, T).clone()
        c_causal, r_causal = shared_prompt_logps(model, s, "cpu")
    assert torch.allclose(c, c_causal, rtol=0, atol=1e-12)  # y_w follows x directly either way
    assert (r - r_causal).abs().min() > 1e-6  # y_l's tokens now attend to y_w


def test_positions_beyond_the_block_size_are_refused_and_rows_may_be_longer():
    model = GPT(GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=8))
    ids = torch.zeros(1, 6, dtype=torch.long)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    assert model(ids, positions=torch.tensor([[0, 1, 2, 3, 2, 3]]), allowed=allowed).shape == (1, 6, 8)
    with pytest.raises(ValueError, match="positions must lie in"):
        model(ids, positions=torch.tensor([[0, 1, 2, 3, 4, 5]]), allowed=allowed)
    with pytest.raises(ValueError, match="allowed must be a bool"):
        model(ids, positions=torch.tensor([[0, 1, 2, 3, 2, 3]]), allowed=allowed.float())
