"""``minirlhf import``: a Hugging Face GPT-2 folder becomes a minirlhf model folder.

    minirlhf import ~/models/gpt2 --out models/gpt2                       the chat template
    minirlhf import ~/models/gpt2 --out models/gpt2-dolly \\
        --template.user '### Instruction:\\n' --template.assistant '\\n\\n### Response:\\n'

The source folder holds what ``save_pretrained`` writes for GPT-2:

    config.json                         n_layer, n_head, n_embd, n_positions, vocab_size, ...
    model.safetensors                   the weights (else pytorch_model.bin, read with
                                        ``torch.load(weights_only=True)``: it cannot run code)
    tokenizer.json                      the tokenizer (else vocab.json + merges.txt, GPT-2's
                                        byte-level BPE files)

The result is an ordinary model folder (minirlhf.saving): the weights as safetensors in this
GPT's layout (``GPT.from_pretrained_gpt2`` does the conversion; the logits equal the source
model's), the tokenizer as ``tokenizer.json``, the chat template chosen here, and
``meta.source`` saying where it came from (path, files, SHA-256 of the weights). Every stage
takes it as ``--init`` or ``--policy``. GPT-2 has no pad or BOS token: both are
``<|endoftext|>``, as ``BPETokenizer.load`` explains.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class TemplateChoice:
    name: str = field(default="chat", metadata={"help": "chat: '{user}{prompt}{assistant}{response}'; plain: "
                                                       "prompt then response"})
    user: str = field(default="User: ", metadata={"help": "chat: text before the prompt (\\n is a newline)"})
    assistant: str = field(default="\\n\\nAssistant: ",
                           metadata={"help": "chat: text between prompt and response (\\n is a newline)"})


@dataclass
class ImportConfig:
    path: str = field(default="", metadata={"help": "the Hugging Face GPT-2 folder (also the first argument)"})
    out: str = field(default="", metadata={"help": "the minirlhf model folder to write"})
    template: TemplateChoice = field(default_factory=TemplateChoice)
    eos_token: str = field(default="", metadata={"help": "end-of-sequence token ('': <|endoftext|>, <eos>, </s> "
                                                          "..., the first the vocabulary has)"})
    hash: bool = field(default=True, metadata={"help": "record the SHA-256 of the weights file in the metadata"})


def check_gpt2_folder(path) -> dict:
    """The files of a Hugging Face GPT-2 folder: {"config", "weights", "tokenizer": [files]}.
    Raises FileNotFoundError saying what is missing and what was expected."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such folder (expected a Hugging Face GPT-2 folder with config.json, "
                                f"model.safetensors or pytorch_model.bin, and tokenizer.json or vocab.json + "
                                f"merges.txt)")
    if not p.is_dir():
        raise NotADirectoryError(f"{path}: not a folder (expected a Hugging Face GPT-2 folder)")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face GPT-2 folder)")
    weights = next((p / w for w in WEIGHT_FILES if (p / w).is_file()), None)
    if weights is None:
        sharded = sorted(x.name for x in p.glob("*.index.json"))
        hint = f"; sharded checkpoints ({sharded[0]}) are not supported" if sharded else ""
        raise FileNotFoundError(f"{path}: no weights: expected model.safetensors or pytorch_model.bin{hint}")
    if (p / "tokenizer.json").is_file():
        tok = [p / "tokenizer.json"]
    else:
        have = [f for f in ("vocab.json", "merges.txt") if (p / f).is_file()]
        if len(have) != 2:
            found = f" (found only {have[0]})" if have else ""
            raise FileNotFoundError(f"{path}: no tokenizer: expected tokenizer.json, or vocab.json and merges.txt{found}")
        tok = [p / "vocab.json", p / "merges.txt"]
    return {"config": p / "config.json", "weights": weights, "tokenizer": tok}


def read_hf_config(path) -> dict:
    """config.json of a Hugging Face folder; a model_type other than gpt2 is refused by name."""
    cfg_path = Path(path) / "config.json"
    try:
        hf = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{cfg_path}: field \"model_type\": expected \"gpt2\", got {model_type!r}; only GPT-2 "
                         f"checkpoints load into this GPT")
    return hf


def gpt2_tokenizer_from_files(vocab_path, merges_path, eos_token: str | None = None):
    """GPT-2's tokenizer from vocab.json + merges.txt, built as Hugging Face's GPT2TokenizerFast
    builds it: byte-level BPE with no added prefix space, the byte-level decoder, and the
    end-of-sequence token (``<|endoftext|>`` in GPT-2's vocabulary) marked special."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    from minirlhf.tokenizer import _EOS_NAMES, BPETokenizer

    try:
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{vocab_path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"{vocab_path}: expected a JSON object mapping tokens to integer ids")
    try:
        bpe = models.BPE.from_file(os.fspath(vocab_path), os.fspath(merges_path))
    except Exception as e:  # the Rust error names the bad merge line
        raise ValueError(f"{merges_path}: cannot read the BPE merges with {vocab_path} ({e})") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    eos = eos_token or next((n for n in _EOS_NAMES if n in vocab), None)
    if eos is None or eos not in vocab:
        raise ValueError(f"{vocab_path}: no end-of-sequence token {eos or list(_EOS_NAMES)!r} in the vocabulary; "
                         f"pass --eos-token with the name this vocabulary uses")
    tok.add_special_tokens([AddedToken(eos, special=True)])
    return BPETokenizer.from_str(tok.to_str(), eos_token=eos, source=os.fspath(vocab_path))


def load_hf_tokenizer(files: list[Path], eos_token: str | None = None):
    """A BPETokenizer from tokenizer.json, or from GPT-2's vocab.json + merges.txt."""
    from minirlhf.tokenizer import BPETokenizer

    if files[0].name == "tokenizer.json":
        return BPETokenizer.load(files[0], eos_token=eos_token or None)
    return gpt2_tokenizer_from_files(files[0], files[1], eos_token)


def sha256_of(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def import_gpt2(path, out, template="chat", eos_token: str | None = None, hash_weights: bool = True):
    """Read the Hugging Face GPT-2 folder ``path`` and write a minirlhf model folder ``out``.

    ``template``: a template name ("chat", "plain") or a template dict ({"name": "chat", "user": ...,
    "assistant": ...}). Returns (model, tokenizer, template, meta) as ``saving.load_model`` would.
    """
    from minirlhf.model import GPT
    from minirlhf.saving import save_model
    from minirlhf.tokenizer import check_vocab_fits, get_template

    files = check_gpt2_folder(path)
    hf = read_hf_config(path)
    template = get_template(template)
    tokenizer = load_hf_tokenizer(files["tokenizer"], eos_token)
    model = GPT.from_pretrained_gpt2(os.fspath(path))
    try:
        check_vocab_fits(tokenizer, model.config.vocab_size)
    except ValueError as e:
        raise ValueError(f"{path}: the tokenizer does not fit the model: {e}") from None
    source = {"format": "huggingface-gpt2", "path": os.path.abspath(path), "weights": files["weights"].name,
              "tokenizer": [f.name for f in files["tokenizer"]],
              "architectures": hf.get("architectures"), "name_or_path": hf.get("_name_or_path")}
    if hash_weights:
        source["weights_sha256"] = sha256_of(files["weights"])
    meta = {"stage": "import", "source": source,
            "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token, "bos_token": tokenizer.bos_token}
    save_model(out, model, tokenizer, template, meta=meta)
    return model, tokenizer, template, meta


def template_from_choice(choice: TemplateChoice):
    from minirlhf.tokenizer import get_template

    if choice.name == "plain":
        return get_template("plain")
    if choice.name != "chat":
        raise ValueError(f"--template.name: expected chat or plain, got {choice.name!r}")
    unescape = lambda s: s.replace("\\n", "\n")  # noqa: E731
    return get_template({"name": "chat", "user": unescape(choice.user), "assistant": unescape(choice.assistant)})


def import_cli(cfg: ImportConfig) -> dict:
    if not cfg.path or not cfg.out:
        raise SystemExit("minirlhf import: usage: minirlhf import PATH --out DIR (a Hugging Face GPT-2 folder "
                         "and the minirlhf model folder to write)")
    template = template_from_choice(cfg.template)
    model, tokenizer, template, meta = import_gpt2(cfg.path, cfg.out, template, cfg.eos_token or None, cfg.hash)
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    print(f"[import] {cfg.path} -> {cfg.out}: GPT-2 with {c.n_layer} layers, {c.n_head} heads, width {c.n_embd}, "
          f"context {c.block_size}, {n / 1e6:.1f}M parameters; tokenizer {tokenizer.vocab_size} ids "
          f"(eos {tokenizer.eos_token!r}); template {template.to_dict()}")
    return {"out": cfg.out, "meta": meta}
