"""`minirlhf import`: a Hugging Face GPT-2 folder built by the test (random weights in GPT-2's layout,
a byte-level BPE trained with `tokenizers`) becomes a model folder whose logits equal an independent
forward pass on the source tensors, whose tokenizer gives the source tokenizer's ids, and that the
trainers start from."""
import json

import pytest
import torch
from hf_gpt2_folder import TEXTS, reference_logits, write_folder

from minirlhf.cli import main as cli_main
from minirlhf.importing import import_gpt2
from minirlhf.saving import load_model
from minirlhf.tokenizer import ChatTemplate


@pytest.mark.parametrize("weights,tokenizer", [("safetensors", "json"), ("bin", "vocab")])
def test_imported_folder_gives_the_source_logits_and_ids(tmp_path, weights, tokenizer):
    sd, cfg, src_tok = write_folder(tmp_path / "hf", weights=weights, tokenizer=tokenizer)
    import_gpt2(tmp_path / "hf", tmp_path / "out", template="chat")
    model, tok, template, meta = load_model(tmp_path / "out")
    # the tokenizer: the source ids for text, <|endoftext|> as EOS (and as pad and BOS: GPT-2 has no others)
    text = "Why does rain fall? Imagine tiny drops of water, like beads, joining in a cloud."
    assert tok.encode(text) == src_tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text)) == text
    eos = src_tok.token_to_id("<|endoftext|>")
    assert tok.eos_id == tok.pad_id == tok.bos_id == eos == cfg["vocab_size"] - 1
    # the model: logits equal GPT-2 computed on the source tensors, on a real templated prompt
    ids, _ = template.encode(tok, "What is the capital of France?", "The capital of France is Paris.")
    idx = torch.tensor([ids])
    with torch.no_grad():
        ours, ref = model(idx), reference_logits(sd, cfg, idx)
    assert ours.shape == (1, len(ids), cfg["vocab_size"])
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    assert model.config.gelu == "tanh" and model.config.block_size == cfg["n_positions"]
    # the template and where the model came from
    assert template == ChatTemplate()
    src = meta["source"]
    assert src["format"] == "huggingface-gpt2" and src["path"] == str((tmp_path / "hf").resolve())
    assert src["weights"] == ("model.safetensors" if weights == "safetensors" else "pytorch_model.bin")
    assert src["tokenizer"] == (["tokenizer.json"] if tokenizer == "json" else ["vocab.json", "merges.txt"])
    assert len(src["weights_sha256"]) == 64 and meta["eos_token"] == "<|endoftext|>"
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "pytorch_model.bin").exists()


def test_the_command_takes_the_folder_first_and_a_template_of_the_users_choice(tmp_path, capsys):
    write_folder(tmp_path / "hf")
    cli_main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "out"),
              "--template.user", "### Instruction:\\n", "--template.assistant", "\\n\\n### Response:\\n"])
    _, tok, template, _ = load_model(tmp_path / "out")
    assert template.prompt_text("Hi") == "### Instruction:\nHi\n\n### Response:\n"
    assert "2 layers" in capsys.readouterr().out
    cli_main(["import", "--path", str(tmp_path / "hf"), "--out", str(tmp_path / "plain"), "--template.name", "plain"])
    assert load_model(tmp_path / "plain")[2].prompt_text("Q: 2+2=") == "Q: 2+2="


def test_missing_or_incomplete_folders_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        import_gpt2(tmp_path / "nowhere", tmp_path / "out")
    hf = tmp_path / "hf"
    hf.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_gpt2(hf, tmp_path / "out")
    write_folder(hf, tokenizer="vocab")
    (hf / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json, or vocab.json and merges.txt \(found only vocab.json\)"):
        import_gpt2(hf, tmp_path / "out")
    write_folder(hf)
    (hf / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        import_gpt2(hf, tmp_path / "out")
    write_folder(hf)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type.*llama"):
        import_gpt2(hf, tmp_path / "out")
    (hf / "config.json").write_text(json.dumps({**cfg, "vocab_size": 100}))  # fewer rows than the tokenizer's ids
    with pytest.raises(ValueError, match="wte.weight"):
        import_gpt2(hf, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    # a Hugging Face folder given where a minirlhf folder is expected names the conversion
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="minirlhf import"):
        load_model(hf)


def test_sft_and_a_rollout_run_from_the_imported_model(tmp_path):
    """The imported folder is an --init like any other: SFT on your own rows (the jsonl task) runs
    from it, and rollouts work with GPT-2's pad = EOS = <|endoftext|>."""
    from minirlhf.rollout import sample
    from minirlhf.trainers.common import OptimConfig, RunConfig, TaskConfig
    from minirlhf.trainers.sft import SFTConfig, sft

    write_folder(tmp_path / "hf")
    import_gpt2(tmp_path / "hf", tmp_path / "gpt2")
    rows = [{"instruction": t.split(". ")[0] + "?", "context": "", "response": t} for t in TEXTS[:6]]
    (tmp_path / "dolly.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.set_num_threads(1)
    task = TaskConfig(name="jsonl", args=[f"sft={tmp_path / 'dolly.jsonl'}", "holdout=0.34", "max_response_tokens=24"])
    result = sft(SFTConfig(task=task, run=RunConfig(out=str(tmp_path / "sft"), progress=False, log_every=1000),
                           init=str(tmp_path / "gpt2"), steps=3, batch_size=4, eval_every=3, eval_prompts=4, samples=0,
                           optim=OptimConfig(lr=1e-2, warmup_steps=0)))
    model, tok, template, meta = load_model(tmp_path / "sft" / "model")
    assert meta["task"]["name"] == "jsonl" and 0.0 <= result["eval/score"] <= 1.0 and "eval/loss" in result
    assert template == ChatTemplate() and tok.pad_id == tok.eos_id
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]
    r = sample(model, tok, template, ["Why is the sky blue?", "What do bees do?"], 12, 1.0,
               torch.Generator().manual_seed(0))
    for row in range(2):  # the mask runs to the first EOS, which it keeps, and no further
        resp = r.input_ids[row, r.prompt_width:]
        first = (resp == tok.eos_id).nonzero()
        n = int(first[0]) + 1 if len(first) else resp.numel()
        assert r.mask[row].tolist() == [1.0] * n + [0.0] * (resp.numel() - n)
        assert bool(r.ended[row]) == bool(len(first))


def test_pipeline_from_an_imported_model_on_dolly_rows_skips_pretraining(tmp_path):
    """`minirlhf pipeline --task jsonl --init <imported>`: SFT starts from the given model, every
    other stage from SFT, and the comparison covers every algorithm."""
    from minirlhf.pipeline import ALGORITHMS, PipelineConfig, stage_configs

    write_folder(tmp_path / "hf")
    cli_main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "gpt2")])
    rows = [{"instruction": f"Tell me about {w}.", "context": "", "response": f"{w.title()} is fun, like a game. Do you like {w}?"}
            for w in ("rain", "bees", "the sun", "plants", "volcanoes", "clouds", "stars", "water", "air", "light")]
    dolly = write_rows(tmp_path / "dolly.jsonl", rows)
    args = [f"sft={dolly}", "holdout=0.3", "max_response_tokens=10"]
    cfg = PipelineConfig(task="jsonl", task_args=args, init=str(tmp_path / "gpt2"), out=str(tmp_path / "p"))
    configs = stage_configs(cfg)
    assert configs["sft"].init == str(tmp_path / "gpt2") and configs["sft"].task.name == "jsonl"
    assert configs["sft"].task.args == args and configs["collect"].policy == str(tmp_path / "p" / "sft" / "model")
    tiny = ["sft.steps=4", "rm.steps=4", "dpo.steps=2", "ppo.batch_size=8", "ppo.iterations=2", "trpo.iterations=2",
            "trpo.batch_size=8", "grpo.iterations=2", "rloo.iterations=2", "collect.k=3"]
    cli_main(["pipeline", "--task", "jsonl", "--task-args", *args, "--init", str(tmp_path / "gpt2"), "--quick",
              "--out", str(tmp_path / "p"), "--threads", "1", "--eval_prompts", "3"]
             + [x for item in tiny for x in ("--set", item)])
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert set(results["rows"]) == {"sft", *ALGORITHMS, "bon"} and "pretrain" not in results["times"]
    assert not (tmp_path / "p" / "pretrain").exists()
    for name, row in results["rows"].items():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["kl_to_sft"] >= -1e-6, name
    assert "| score (greedy) |" in (tmp_path / "p" / "results.md").read_text()
    _, tok, _, meta = load_model(tmp_path / "p" / "ppo" / "model")
    assert meta["task"] == {"name": "jsonl", "args": args} and tok.eos_id == tok.pad_id  # GPT-2's tokenizer throughout


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_export_is_the_inverse_of_the_import_conversion(tmp_path):
    """minirlhf.gpt2.export_gpt2_state_dict (used by scripts/make_gpt2_folder.py) writes GPT-2's
    layout: the independent GPT-2 forward on the exported tensors gives the model's logits."""
    from minirlhf.gpt2 import convert_gpt2_state_dict, export_gpt2_state_dict, gpt2_config_dict
    from minirlhf.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, gelu="tanh")).eval()
    hf = export_gpt2_state_dict(model)
    assert "lm_head.weight" not in hf and hf["transformer.h.1.attn.c_attn.weight"].shape == (16, 48)
    back = convert_gpt2_state_dict(hf, model.config)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    idx = torch.randint(0, 40, (1, 16))
    with torch.no_grad():
        assert torch.allclose(model(idx), reference_logits(hf, gpt2_config_dict(model.config), idx), atol=1e-5)
