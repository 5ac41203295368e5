"""Scalar heads read the right token; model folders round-trip (LoRA saved merged)."""

import pytest
import torch

from minirlhf.heads import RewardModel, ValueModel, last_token_index
from minirlhf.lora import apply_lora
from minirlhf.model import GPT, GPTConfig
from minirlhf.saving import load_model, save_model
from minirlhf.tokenizer import CharTokenizer, PlainTemplate


def tiny(vocab=20, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=16))


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 1]


def test_reward_reads_the_last_real_token_and_ignores_padding():
    rm = RewardModel(tiny()).eval()
    x = torch.tensor([[1, 5, 6, 7, 0, 0], [1, 8, 9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    s = rm.score(x, mask)
    alone = rm.score(x[:1, :4])
    assert torch.allclose(s[0], alone[0], atol=1e-6)
    per_position = rm(x[1:], mask[1:])
    assert torch.allclose(s[1], per_position[0, -1])
    # Left padding gives the same score as right padding.
    left = torch.tensor([[0, 0, 1, 5, 6, 7]])
    assert torch.allclose(rm.score(left, torch.tensor([[0, 0, 1, 1, 1, 1]])), alone, atol=1e-6)


def test_value_head_starts_at_zero():
    v = ValueModel(tiny())
    assert torch.equal(v(torch.randint(0, 20, (2, 7))), torch.zeros(2, 7))


def test_gpt_folder_round_trip_with_lora_saved_merged(tmp_path):
    tok = CharTokenizer("abcdefghijklmnopq")
    model = apply_lora(tiny(), r=2, alpha=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.normal_()
    x = torch.randint(0, 20, (2, 9))
    save_model(tmp_path / "m", model.eval(), tok, PlainTemplate(), meta={"stage": "sft"})
    loaded, tok2, template, meta = load_model(tmp_path / "m")
    assert type(loaded) is GPT and meta == {"stage": "sft"}
    assert torch.allclose(loaded.eval()(x), model(x), atol=1e-5)
    assert tok2.encode("abc") == tok.encode("abc") and template.name == "plain"
    assert (tmp_path / "m" / "adapter.safetensors").exists()
    assert loaded.lm_head.weight is loaded.wte.weight


def test_reward_folder_round_trip_and_kind_conversion(tmp_path):
    rm = RewardModel(tiny())
    rm.reward_mean.fill_(0.5)
    rm.reward_std.fill_(2.0)
    save_model(tmp_path / "rm", rm)
    back, _, _, _ = load_model(tmp_path / "rm", kind="reward")
    x = torch.randint(0, 20, (3, 5))
    assert torch.allclose(back.score(x), rm.score(x)) and back.reward_std.item() == 2.0
    body, _, _, _ = load_model(tmp_path / "rm", kind="gpt")
    assert torch.allclose(body(x), rm.backbone(x))
    critic, _, _, _ = load_model(tmp_path / "rm", kind="value")  # critic initialised from the reward model
    assert torch.allclose(critic(x)[:, -1], rm.score(x))
    save_model(tmp_path / "v", critic)
    with pytest.raises(ValueError, match="value model, not a reward"):
        load_model(tmp_path / "v", kind="reward")
    # A language model's folder loads as a reward model with a fresh head.
    save_model(tmp_path / "lm", tiny(seed=3))
    fresh, _, _, _ = load_model(tmp_path / "lm", kind="reward")
    assert torch.allclose(fresh.backbone(x), tiny(seed=3)(x))


def test_tokenizer_that_does_not_fit_is_refused(tmp_path):
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz")  # 29 ids
    save_model(tmp_path / "m", tiny(vocab=20), tok)
    with pytest.raises(ValueError, match="vocab_size is 20"):
        load_model(tmp_path / "m")
