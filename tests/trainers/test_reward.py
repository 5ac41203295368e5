"""The reward trainer on a tiny model: it learns a fixed preference set, one concatenated pass equals
two, the stored reward statistics equal a direct computation, resume is exact, bad rows are counted,
and a tokenizer mismatch is refused."""
import json
import statistics

import pytest
import torch

from minirlhf.cli import main as cli_main
from minirlhf.data import DataError, collate_preferences, collate_sft, encode_sft, load_preferences, write_jsonl
from minirlhf.heads import RewardModel
from minirlhf.logger import read_metrics
from minirlhf.model import GPT, GPTConfig
from minirlhf.objectives.preference import bradley_terry_loss
from minirlhf.saving import load_model, save_model
from minirlhf.tasks import get_task
from minirlhf.tasks.arithmetic import answer, parse_prompt
from minirlhf.tokenizer import BPETokenizer, CharTokenizer, PlainTemplate, check_same_tokenizer
from minirlhf.trainers.reward import (RewardConfig, load_reward_model, pair_accuracy, pair_scores,
                                      train_reward_model)

from tiny_configs import TASK, crash_then_resume, run_cfg

TASK_OBJ = get_task("arithmetic", max_operand=9, max_test=20)


def tiny_gpt(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=24, n_layer=1, n_head=2, n_embd=32))


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    tok = TASK_OBJ.build_tokenizer()
    folder = tmp_path_factory.mktemp("init") / "model"
    save_model(folder, tiny_gpt(tok.vocab_size), tok, TASK_OBJ.template(),
               meta={"task": {"name": TASK.name, "args": TASK.args}})
    return folder


def pairs(split, n, offset=1):
    """Correct answer preferred to a wrong one (off by ``offset``)."""
    out = []
    for p in TASK_OBJ.prompts(split)[:n]:
        a = answer(*parse_prompt(p))
        out.append({"prompt": p, "chosen": f" {a}", "rejected": f" {a + offset}"})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefs")
    write_jsonl(folder / "train.jsonl", pairs("train", 24))
    write_jsonl(folder / "test.jsonl", pairs("test", 12))
    return folder


def rm_cfg(init, data, out, steps=10, **kw):
    run = run_cfg(out, **{k: kw.pop(k) for k in list(kw) if k in ("save_every", "seed")})
    base = dict(init=str(init), data=str(data), run=run, steps=steps, batch_size=8, eval_every=5)
    base.update(kw)
    return RewardConfig(**base)


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def test_loss_falls_and_accuracy_rises_on_a_fixed_set(init, tmp_path):
    # a fixed set with a pattern a one-layer model can pick up: the rejected answer has a 0 appended
    write_jsonl(tmp_path / "train.jsonl", [dict(r, rejected=r["chosen"] + "0") for r in pairs("train", 24)])
    # evaluated on the training pairs themselves, after every step
    cfg = rm_cfg(init, tmp_path, tmp_path / "run", steps=12, eval_every=1, test_file=str(tmp_path / "train.jsonl"))
    cfg.optim.lr, cfg.optim.warmup_steps = 3e-3, 0
    result = train_reward_model(cfg)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first, last = rows[0], rows[-1]
    for key in ("loss", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "rewards/margins", "lr",
                "grad_norm", "eval/loss", "eval/rewards/accuracies", "eval/rewards/margins", "eval/ece"):
        assert key in last
    assert last["loss"] < 0.1 * first["loss"]  # the first batch loss is the untrained model's
    assert last["eval/loss"] < 0.1 * first["eval/loss"]
    assert last["eval/rewards/accuracies"] > first["eval/rewards/accuracies"]
    assert last["eval/rewards/accuracies"] == 1.0
    assert last["eval/rewards/margins"] > 0
    assert result["eval/rewards/accuracies"] == 1.0 and 0.0 <= result["eval/ece"] <= 1.0
    model, tok, template, meta = load_reward_model(tmp_path / "run" / "model", policy_tokenizer=TASK_OBJ.build_tokenizer())
    assert isinstance(model, RewardModel) and meta["stage"] == "reward" and meta["task"]["name"] == "arithmetic"


def test_one_concatenated_pass_equals_two_separate_passes():
    tok, template = TASK_OBJ.build_tokenizer(), PlainTemplate()
    rows = [{"prompt": "Q: 7+5=\nA:", "chosen": " 12", "rejected": " 2", "prob": 0.8, "strength": 2.0},
            {"prompt": "Q: 1+1=\nA:", "chosen": " 2", "rejected": " 11\nQ", "prob": 1.0, "strength": 1.0},
            {"prompt": "Q: 9-3=\nA:", "chosen": " 6", "rejected": " 16", "prob": 0.6, "strength": 3.0}]
    model = RewardModel(tiny_gpt(tok.vocab_size).double()).double()

    def loss_and_grads(chosen, rejected, prob, strength):
        loss = bradley_terry_loss(chosen, rejected, prob, strength, margin=0.3)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return loss.detach(), grads

    batch = collate_preferences(tok, template, rows, max_len=24)
    prob, strength = batch["prob"].double(), batch["strength"].double()
    chosen, rejected = pair_scores(model, batch, "cpu")  # one pass over 2B rows
    one = loss_and_grads(chosen, rejected, prob, strength)

    def separate(key):  # each side padded only to its own longest row
        b = collate_sft(encode_sft(tok, template, [{"prompt": r["prompt"], "response": r[key]} for r in rows], 24),
                        tok.pad_id)
        return model.score(b["input_ids"], b["attention_mask"])

    two = loss_and_grads(separate("chosen"), separate("rejected"), prob, strength)
    assert torch.allclose(one[0], two[0], rtol=0, atol=1e-12)
    for g1, g2 in zip(one[1], two[1]):
        assert torch.allclose(g1, g2, rtol=0, atol=1e-12)


def test_pair_accuracy_counts_equal_rewards_and_tie_labels_half():
    chosen = torch.tensor([2.0, 1.0, 1.0, 3.0, 0.0])
    rejected = torch.tensor([1.0, 2.0, 1.0, 0.0, 5.0])
    prob = torch.tensor([1.0, 0.9, 1.0, 0.5, 0.2])  # the last label prefers the "rejected" text
    # right, wrong, equal rewards (1/2), tie label (1/2), right (r_r > r_c as p < 1/2)
    assert pair_accuracy(chosen, rejected, prob).item() == pytest.approx((1 + 0 + 0.5 + 0.5 + 1) / 5)


def test_reward_mean_and_std_equal_a_direct_computation(init, tmp_path):
    rows = pairs("train", 10)
    rows += [dict(r, rejected=" 0" if r["chosen"] != " 0" else " 1") for r in rows[:4]]  # chosen texts repeat
    write_jsonl(tmp_path / "train.jsonl", rows)
    result = train_reward_model(rm_cfg(init, tmp_path, tmp_path / "run", steps=4, test_file=""))
    model, tok, template, meta = load_model(tmp_path / "run" / "model", kind="reward")
    model.eval()
    distinct = list(dict.fromkeys((r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")))
    assert result["reward_sequences"] == len(distinct) < 2 * len(rows)
    with torch.no_grad():  # one sequence at a time, no padding at all
        scores = [model.score(torch.tensor([template.encode(tok, p, y)[0]])).item() for p, y in distinct]
    assert model.reward_mean.item() == pytest.approx(statistics.mean(scores), abs=1e-5)
    assert model.reward_std.item() == pytest.approx(statistics.stdev(scores), abs=1e-5)
    assert meta["reward_mean"] == pytest.approx(statistics.mean(scores), abs=1e-5)
    normalized = model.normalize(torch.tensor(scores))
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert normalized.std().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("loss", ["bt", "plackett_luce"])
def test_an_interrupted_and_resumed_run_matches_an_uninterrupted_one(init, data, tmp_path, monkeypatch, loss):
    import minirlhf.trainers.reward as reward_module

    if loss == "plackett_luce":
        rankings = [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"], " 99"]}
                    for r in load_preferences(data / "train.jsonl")]
        write_jsonl(tmp_path / "rankings.jsonl", rankings)
    extra = dict(loss=loss, rankings_file=str(tmp_path / "rankings.jsonl")) if loss != "bt" else {}
    train_reward_model(rm_cfg(init, data, tmp_path / "full", steps=7, save_every=2, **extra))
    part = rm_cfg(init, data, tmp_path / "part", steps=7, save_every=2, **extra)
    crash_then_resume(monkeypatch, reward_module, "clip_grad_norm", 6, train_reward_model, part)
    a = without_time(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = without_time(read_metrics(tmp_path / "part" / "metrics.jsonl"))
    assert [r["step"] for r in a] == list(range(1, 8)) and a == b
    wa, wb = load_model(tmp_path / "full" / "model")[0], load_model(tmp_path / "part" / "model")[0]
    for (name, x), (_, y) in zip(wa.state_dict().items(), wb.state_dict().items()):
        assert torch.equal(x, y), name


def test_bad_rows_are_skipped_and_counted_or_raise(init, tmp_path, capsys):
    good = pairs("train", 6)
    long_answer = " " + "1" * 30  # longer than block_size 24
    bad = [dict(good[0], rejected=good[0]["chosen"]),   # line 5: chosen == rejected
           dict(good[1], rejected=""),                  # line 6: empty response
           dict(good[2], prob=1.5),                     # line 7: prob outside [0, 1]
           dict(good[3], rejected=" 1x"),               # line 8: a character the tokenizer does not have
           dict(good[4], rejected=long_answer)]         # line 9: too long for the model
    lines = [json.dumps(r) for r in good[:3]] + [""] + [json.dumps(r) for r in bad + good[3:]]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    result = train_reward_model(rm_cfg(init, tmp_path, tmp_path / "skip", steps=2, test_file=""))
    assert result["data/skipped_train"] == 5 and result["data/train_rows"] == 6
    report = capsys.readouterr().err
    assert "skipped 5 bad row(s)" in report
    for line, field in ((5, '"rejected"'), (6, '"rejected"'), (7, '"prob"')):
        assert f"train.jsonl:{line}: field {field}" in report
    assert "train.jsonl:8: cannot encode" in report and "train.jsonl:9: rejected: 43 tokens" in report
    with pytest.raises(DataError, match=r"train\.jsonl:5: field \"rejected\": equal to \"chosen\""):
        train_reward_model(rm_cfg(init, tmp_path, tmp_path / "raise", steps=2, test_file="", on_bad_row="raise"))
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in good[:1] + bad[3:4]) + "\n")
    with pytest.raises(DataError, match=r"x\.jsonl:2: cannot encode"):
        train_reward_model(rm_cfg(init, tmp_path, tmp_path / "raise2", steps=2, test_file="", on_bad_row="raise",
                                  train_file=str(tmp_path / "x.jsonl")))
    (tmp_path / "only_bad.jsonl").write_text("\n".join(json.dumps(r) for r in bad[:3]) + "\n")
    with pytest.raises(ValueError, match="no usable preference rows"):
        train_reward_model(rm_cfg(init, tmp_path, tmp_path / "none", steps=2, test_file="",
                                  train_file=str(tmp_path / "only_bad.jsonl")))


def test_check_same_tokenizer_names_the_difference():
    check_same_tokenizer(CharTokenizer("0123"), CharTokenizer("3210"))  # the same alphabet
    with pytest.raises(ValueError, match="vocab_size 7 vs 8"):
        check_same_tokenizer(CharTokenizer("0123"), CharTokenizer("01234"))
    with pytest.raises(ValueError, match="different ids for the same text"):  # same size, "3" -> "4"
        check_same_tokenizer(CharTokenizer("0123"), CharTokenizer("0124"))
    texts = ["the cat sat on the mat", "a dog ate the hat"] * 20
    bpe = BPETokenizer.train(texts, vocab_size=280)
    check_same_tokenizer(bpe, BPETokenizer.train(texts, vocab_size=280))
    with pytest.raises(ValueError, match="CharTokenizer vs BPETokenizer"):
        check_same_tokenizer(CharTokenizer("0123"), bpe)
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_same_tokenizer(bpe, BPETokenizer.train(["zebra quiz jumps", "vexing fjord"] * 20, vocab_size=280))


def test_a_reward_model_is_refused_for_a_policy_with_another_vocabulary(init, data, tmp_path):
    other_tok = CharTokenizer("0123456789+-=:QAB \n")  # one letter more: every id after "A" moves
    other = tmp_path / "other_policy"
    save_model(other, tiny_gpt(other_tok.vocab_size), other_tok, PlainTemplate())
    with pytest.raises(ValueError, match="policy .*tokenizers differ \\(vocab_size 22 vs 21\\)"):
        train_reward_model(rm_cfg(init, data, tmp_path / "run", steps=1, policy=str(other)))
    train_reward_model(rm_cfg(init, data, tmp_path / "ok", steps=1, policy=str(init)))
    with pytest.raises(ValueError, match="tokenizers differ"):
        load_reward_model(tmp_path / "ok" / "model", policy_tokenizer=other_tok)
    with pytest.raises(ValueError, match="expected a trained reward model"):
        load_reward_model(init)


def test_davidson_ties_learn_log_nu(init, tmp_path):
    rows = pairs("train", 12)
    ties = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["chosen"] + " ", "tie": True}
            for r in pairs("train", 24)[12:]]
    write_jsonl(tmp_path / "train.jsonl", rows + ties)
    cfg = rm_cfg(init, tmp_path, tmp_path / "run", steps=12, test_file=str(tmp_path / "train.jsonl"), ties=True)
    cfg.optim.lr = 3e-2  # log nu starts at 0 (nu = 1) and needs to move
    result = train_reward_model(cfg)
    log = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/loss" in r]
    assert len(log) == 3 and log[-1]["eval/loss"] < log[0]["eval/loss"]
    assert result["davidson_log_nu"] != 0.0
    assert load_model(tmp_path / "run" / "model")[3]["davidson_log_nu"] == result["davidson_log_nu"]
    with pytest.raises(ValueError, match="margin"):
        train_reward_model(rm_cfg(init, tmp_path, tmp_path / "bad", steps=1, ties=True, margin=1.0))


@pytest.mark.parametrize("mode", ["head", "lora"])
def test_head_only_and_lora_train_only_what_they_should(init, data, tmp_path, mode):
    cfg = rm_cfg(init, data, tmp_path, steps=3, test_file="")
    if mode == "head":
        cfg.freeze_backbone = True
    else:
        cfg.lora.enabled = True
    train_reward_model(cfg)
    trained = load_model(tmp_path / "model", kind="reward")[0]
    start = load_model(init, kind="gpt")[0]
    changed = {n for n, p in trained.backbone.state_dict().items() if not torch.equal(p, start.state_dict()[n])}
    if mode == "head":
        assert changed == set()
    else:
        assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)


def test_the_rm_command(init, data, tmp_path):
    assert cli_main(["rm", "--init", str(init), "--data", str(data), "--steps", "2", "--batch-size", "4",
                     "--run.out", str(tmp_path), "--run.progress", "false"]) == 0
    assert (tmp_path / "model" / "config.json").is_file()


def test_unique_drops_exact_repeats_of_a_training_row_only(init, tmp_path):
    # K samples per prompt from a confident policy repeat the same pair many times
    base = pairs("train", 6)
    soft = dict(base[0], prob=0.75)  # same texts, another label: a different row, kept
    write_jsonl(tmp_path / "train.jsonl", base * 3 + [soft])
    write_jsonl(tmp_path / "test.jsonl", pairs("test", 2) * 2)
    kept = train_reward_model(rm_cfg(init, tmp_path, tmp_path / "u", steps=0, epochs=1.0, unique=True))
    assert kept["data/train_rows"] == 7 and kept["data/repeats_dropped"] == 12
    assert kept["data/test_rows"] == 4  # held-out pairs keep their sampled frequencies
    assert kept["steps"] == 1  # ceil(1 epoch * 7 rows / batch 8)
    every = train_reward_model(rm_cfg(init, tmp_path, tmp_path / "all", steps=0, epochs=1.0))
    assert every["data/train_rows"] == 19 and every["data/repeats_dropped"] == 0 and every["steps"] == 3
