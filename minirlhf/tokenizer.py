"""Tokenizers and prompt templates.

Two tokenizers with one interface:

- ``CharTokenizer``: one id per character; the alphabet is the sorted set of the
  characters of a training text. Tiny, readable, perfect for toy tasks
  (``"Q: 7-2=\\nA:"`` -> ``" 5"``).
- ``BPETokenizer``: byte-level BPE (Sennrich et al., 2016; Radford et al., 2019) on the
  Hugging Face ``tokenizers`` package. Trained by us, or loaded from any
  ``tokenizer.json``, GPT-2's included.

Both give ``encode(s, add_bos=False, add_eos=False) -> list[int]``,
``decode(ids, skip_special=True) -> str``, ``save(path)``, classmethod ``load(path)``,
``token_to_id(token)`` and the properties ``pad_id``, ``bos_id``, ``eos_id``,
``vocab_size``.

Special tokens are never produced from user text: ``encode("<eos>")`` gives the ids of
the characters ``<``, ``e``, ``o``, ``s``, ``>``, not the EOS id. Control tokens enter a
sequence only through ``add_bos`` / ``add_eos`` (or a template), so a prompt cannot end a
response early by spelling out the EOS token.

Templates turn a (prompt, response) pair into ids and report the exact prompt/response
boundary. Prompt and response are encoded separately and concatenated, so
``ids[:n_prompt]`` is BOS + prompt part and ``ids[n_prompt:]`` is the response followed by
EOS, with no token straddling the boundary. (With BPE this can differ from encoding the
joined string, which might merge across the boundary; an exact boundary is what the loss
masks need.)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from minirlhf.checkpoint import atomic_write_text

SPECIALS = ("<pad>", "<bos>", "<eos>")

# Names of the end-of-sequence token in common tokenizer.json files, in lookup order.
# GPT-2's file has "<|endoftext|>" and no pad/bos token.
_EOS_NAMES = ("<eos>", "<|endoftext|>", "</s>", "<|end_of_text|>")
_BOS_NAMES = ("<bos>", "<s>", "<|begin_of_text|>")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")


def _atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``checkpoint.atomic_write_text``)."""
    atomic_write_text(path, text)


def _as_id_list(ids) -> list[int]:
    """Accept a list/tuple of ints or a 1-D tensor / array; return a list of Python ints."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = list(ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"decode: expected a sequence of int token ids, got an element {i!r} "
                            f"of type {type(i).__name__}")
    return ids


def _check_ids_in_range(ids: list[int], vocab_size: int) -> None:
    for pos, i in enumerate(ids):
        if not 0 <= i < vocab_size:
            raise ValueError(f"decode: token id {i} at position {pos} is outside the vocabulary "
                             f"(expected 0 <= id < vocab_size={vocab_size})")


def _describe_alphabet(alphabet: str, limit: int = 120) -> str:
    """The alphabet for an error message, shortened when long."""
    if len(alphabet) <= limit:
        return repr(alphabet)
    return f"{alphabet[:limit]!r}... ({len(alphabet)} characters)"


# ---------------------------------------------------------------------------
# Character tokenizer
# ---------------------------------------------------------------------------

class CharTokenizer:
    """One token per character.

    ids: ``specials`` first (by position: pad=0, bos=1, eos=2, any further specials
    after), then the characters of ``sorted(set(text))``.
    """

    def __init__(self, text: str, specials=SPECIALS):
        if not isinstance(text, str):
            raise TypeError(f"CharTokenizer: expected text to be a str, got {type(text).__name__}")
        specials = tuple(specials)
        if len(specials) < 3:
            raise ValueError(f"CharTokenizer: expected at least 3 specials (pad, bos, eos), got {specials!r}")
        if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
            raise ValueError(f"CharTokenizer: specials must be distinct non-empty strings, got {specials!r}")
        self.specials = specials
        self.alphabet = "".join(sorted(set(text)))
        clash = [s for s in specials if s in set(self.alphabet)]
        if clash:
            raise ValueError(f"CharTokenizer: special token(s) {clash!r} are single characters of the "
                             f"alphabet; use multi-character names such as '<pad>'")
        self.itos = list(specials) + list(self.alphabet)          # id -> token
        self.stoi = {t: i for i, t in enumerate(self.itos)}        # token -> id
        self._char_offset = len(specials)
        self._char_to_id = {c: i + self._char_offset for i, c in enumerate(self.alphabet)}

    # -- ids of the special tokens -------------------------------------------------
    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_to_id(self, token: str) -> int:
        """Id of a special token (``"<eos>"``) or of a single character."""
        if token not in self.stoi:
            raise KeyError(f"token {token!r} is not in the vocabulary (specials {list(self.specials)!r}, "
                           f"alphabet {_describe_alphabet(self.alphabet)})")
        return self.stoi[token]

    # -- encode / decode -------------------------------------------------------------
    def encode(self, s: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(s, str):
            raise TypeError(f"encode: expected a str, got {type(s).__name__}")
        ids = [self.bos_id] if add_bos else []
        char_to_id = self._char_to_id
        for pos, ch in enumerate(s):
            i = char_to_id.get(ch)
            if i is None:
                raise ValueError(f"encode: character {ch!r} (U+{ord(ch):04X}) at position {pos} is not "
                                 f"in the alphabet {_describe_alphabet(self.alphabet)}")
            ids.append(i)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids, skip_special: bool = True) -> str:
        ids = _as_id_list(ids)
        _check_ids_in_range(ids, self.vocab_size)
        n_special = self._char_offset
        return "".join(self.itos[i] for i in ids if not (skip_special and i < n_special))

    # -- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": "char", "version": 1, "specials": list(self.specials), "alphabet": list(self.alphabet)}

    def save(self, path) -> None:
        """JSON ``{"type": "char", "specials": [...], "alphabet": [...]}``, written atomically."""
        _atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=True, indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "CharTokenizer":
        if not isinstance(d, dict) or d.get("type") != "char":
            raise ValueError(f"{source}: expected a CharTokenizer JSON object with \"type\": \"char\"")
        alphabet, specials = d.get("alphabet"), d.get("specials")
        if not isinstance(alphabet, list) or not all(isinstance(c, str) and len(c) == 1 for c in alphabet):
            raise ValueError(f"{source}: field \"alphabet\": expected a list of single characters")
        if alphabet != sorted(set(alphabet)):
            raise ValueError(f"{source}: field \"alphabet\": expected sorted, distinct characters")
        if not isinstance(specials, list) or not all(isinstance(s, str) for s in specials):
            raise ValueError(f"{source}: field \"specials\": expected a list of strings")
        return cls("".join(alphabet), specials=tuple(specials))

    @classmethod
    def load(cls, path) -> "CharTokenizer":
        with open(path, "r", encoding="utf-8") as f:
            d = json.load(f)
        return cls.from_dict(d, source=os.fspath(path))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, alphabet={self.alphabet!r})"


# ---------------------------------------------------------------------------
# Byte-level BPE tokenizer
# ---------------------------------------------------------------------------

class BPETokenizer:
    """Byte-level BPE on the ``tokenizers`` package.

    Byte-level BPE (Radford et al., 2019, "Language Models are Unsupervised Multitask
    Learners", GPT-2) runs BPE merges (Sennrich, Haddow and Birch, 2016, "Neural Machine
    Translation of Rare Words with Subword Units") over the UTF-8 bytes of the text, each
    byte shown as a printable character. All 256 bytes are in the base vocabulary, so
    every string encodes and ``decode(encode(s)) == s`` exactly: no unknown token, no
    normalisation, no added prefix space, no stripping.

    Special tokens:

    - ``train``: ``<pad>``, ``<bos>``, ``<eos>`` get ids 0, 1, 2.
    - ``load`` of a file we saved: the specials are found by name.
    - ``load`` of GPT-2's ``tokenizer.json``: its only special is ``<|endoftext|>``
      (id 50256), and it has no pad or bos token. Then bos = eos = ``<|endoftext|>`` and
      pad = eos. We deliberately do NOT add new tokens: the vocabulary must not grow
      beyond the pretrained model's embedding matrix. Padding positions are masked out
      anyway (attention_mask / loss_mask), so reusing the EOS id as pad is harmless.

    Lookup order when loading: eos in ``<eos>``, ``<|endoftext|>``, ``</s>``,
    ``<|end_of_text|>``; bos in ``<bos>``, ``<s>``, ``<|begin_of_text|>``, else eos; pad in
    ``<pad>``, ``[PAD]``, ``<|pad|>``, else eos. ``load(path, eos_token=..., ...)``
    overrides the names. ``save`` writes a plain ``tokenizer.json`` that any
    ``tokenizers`` user can read; the role of each special is found again by name.
    """

    def __init__(self, tokenizer, pad_token: str, bos_token: str, eos_token: str):
        self._tok = tokenizer
        # User text never turns into special tokens (see the module docstring).
        self._tok.encode_special_tokens = True
        self.pad_token, self.bos_token, self.eos_token = pad_token, bos_token, eos_token
        ids = {}
        for role, name in (("pad", pad_token), ("bos", bos_token), ("eos", eos_token)):
            i = tokenizer.token_to_id(name)
            if i is None:
                raise ValueError(f"BPETokenizer: {role} token {name!r} is not in the vocabulary")
            ids[role] = i
        self._pad_id, self._bos_id, self._eos_id = ids["pad"], ids["bos"], ids["eos"]
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        # vocab_size = 1 + the largest id: the number of embedding rows a model needs.
        self._vocab_size = max(vocab.values()) + 1

    # -- construction ------------------------------------------------------------------
    @classmethod
    def train(cls, texts, vocab_size: int, min_frequency: int = 2) -> "BPETokenizer":
        """Train byte-level BPE on an iterable of strings. Deterministic for the same input.

        The vocabulary is the 3 specials (ids 0, 1, 2), the 256 byte symbols, then one
        token per merge, up to ``vocab_size`` in all; a merge needs a pair seen at least
        ``min_frequency`` times.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        n_base = len(SPECIALS) + 256
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < n_base:
            raise ValueError(f"BPETokenizer.train: expected vocab_size to be an int >= {n_base} "
                             f"(3 specials + 256 bytes), got {vocab_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"BPETokenizer.train: expected min_frequency to be an int >= 1, got {min_frequency!r}")
        if isinstance(texts, str):
            raise TypeError("BPETokenizer.train: expected an iterable of strings, got a single str")
        texts = list(texts)
        for k, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"BPETokenizer.train: texts[{k}] is a {type(t).__name__}, expected str")

        tok = Tokenizer(models.BPE())
        # add_prefix_space=False: " x" and "x" stay different and nothing is prepended,
        # so decode(encode(s)) == s. use_regex=True: GPT-2's split into words/numbers/punct.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, *SPECIALS)

    @classmethod
    def from_str(cls, json_text: str, pad_token=None, bos_token=None, eos_token=None,
                 source: str = "<str>") -> "BPETokenizer":
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(json_text)
        except Exception as e:  # the Rust error says what is wrong with the file
            raise ValueError(f"{source}: not a valid tokenizer.json ({e})") from None

        def find(names):
            for n in names:
                if tok.token_to_id(n) is not None:
                    return n
            return None

        eos = eos_token or find(_EOS_NAMES)
        if eos is None:
            raise ValueError(f"{source}: no end-of-sequence token found (looked for {list(_EOS_NAMES)!r}); "
                             f"pass eos_token=... to BPETokenizer.load")
        bos = bos_token or find(_BOS_NAMES) or eos
        pad = pad_token or find(_PAD_NAMES) or eos
        return cls(tok, pad_token=pad, bos_token=bos, eos_token=eos)

    @classmethod
    def load(cls, path, pad_token=None, bos_token=None, eos_token=None) -> "BPETokenizer":
        """Load any ``tokenizer.json`` (ours or, e.g., GPT-2's). See the class docstring
        for how pad/bos/eos are chosen."""
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
        return cls.from_str(text, pad_token=pad_token, bos_token=bos_token, eos_token=eos_token,
                            source=os.fspath(path))

    def save(self, path) -> None:
        """Write a standard ``tokenizer.json``, atomically."""
        _atomic_write_text(path, self._tok.to_str(pretty=True))

    # -- ids of the special tokens -------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_to_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    # -- encode / decode -------------------------------------------------------------
    def encode(self, s: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(s, str):
            raise TypeError(f"encode: expected a str, got {type(s).__name__}")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"encode: the text is not valid Unicode: {e.reason} at position {e.start} "
                             f"({s[e.start:e.end]!r})") from None
        # add_special_tokens=False: a file's post-processor (e.g. one that prepends <s>)
        # must not add tokens behind our back; BOS/EOS are added here, explicitly.
        ids = self._tok.encode(s, add_special_tokens=False).ids
        if add_bos:
            ids = [self.bos_id] + ids
        if add_eos:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids, skip_special: bool = True) -> str:
        ids = _as_id_list(ids)
        _check_ids_in_range(ids, self.vocab_size)
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, pad={self.pad_token!r}, "
                f"bos={self.bos_token!r}, eos={self.eos_token!r})")


def load_tokenizer(path):
    """Load a tokenizer file of either kind: our CharTokenizer JSON (it has a ``"type"``
    key equal to ``"char"``) or a ``tokenizer.json`` (BPETokenizer)."""
    source = os.fspath(path)
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not a JSON file ({e})") from None
    if isinstance(d, dict) and d.get("type") == "char":
        return CharTokenizer.from_dict(d, source=source)
    if isinstance(d, dict) and "model" in d:
        return BPETokenizer.from_str(text, source=source)
    raise ValueError(f"{source}: expected a CharTokenizer file (\"type\": \"char\") or a tokenizer.json "
                     f"(with a \"model\" key)")


def check_vocab_fits(tokenizer, vocab_size: int) -> None:
    """Raise ValueError unless every id of ``tokenizer`` is a valid row of an embedding
    with ``vocab_size`` rows (0 <= id < vocab_size). A model may have MORE rows than the
    tokenizer needs (GPT-2 rounds up), never fewer."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"check_vocab_fits: expected vocab_size to be a positive int, got {vocab_size!r}")
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} token ids (0..{tokenizer.vocab_size - 1}) "
                         f"but the model's vocab_size is {vocab_size}; build the model with "
                         f"vocab_size >= {tokenizer.vocab_size} or use a smaller tokenizer")
    for role in ("pad_id", "bos_id", "eos_id"):
        i = getattr(tokenizer, role)
        if not 0 <= i < vocab_size:
            raise ValueError(f"the tokenizer's {role}={i} is outside the model's vocabulary "
                             f"(expected 0 <= id < {vocab_size})")


# ---------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------

def _encode_with_template(template, tokenizer, prompt, response, add_bos, add_eos):
    """Shared body of the templates' ``encode``: BOS + prompt part, then response + EOS,
    each part encoded on its own so the boundary is exact."""
    if not isinstance(prompt, str):
        raise TypeError(f"template.encode: expected prompt to be a str, got {type(prompt).__name__}")
    ids = tokenizer.encode(template.prompt_text(prompt), add_bos=add_bos)
    n_prompt = len(ids)
    if response is not None:
        if not isinstance(response, str):
            raise TypeError(f"template.encode: expected response to be a str or None, "
                            f"got {type(response).__name__}")
        ids = ids + tokenizer.encode(response, add_eos=add_eos)
    return ids, n_prompt


@dataclass(frozen=True)
class ChatTemplate:
    """``User: {prompt}\\n\\nAssistant: {response}`` then EOS (the layout of Anthropic's
    HH-RLHF data, Bai et al., 2022).

    ``encode(tokenizer, prompt, response=None, add_bos=True, add_eos=True)`` returns
    ``(ids, n_prompt)``: ``ids[:n_prompt]`` is BOS + ``prompt_text(prompt)``,
    ``ids[n_prompt:]`` is the response then EOS. With ``response=None`` only the prompt
    part is returned (``n_prompt == len(ids)``): the input for generation.
    """

    user: str = "User: "
    assistant: str = "\n\nAssistant: "
    name = "chat"

    def prompt_text(self, prompt: str) -> str:
        return f"{self.user}{prompt}{self.assistant}"

    def encode(self, tokenizer, prompt, response=None, add_bos=True, add_eos=True):
        return _encode_with_template(self, tokenizer, prompt, response, add_bos, add_eos)

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class PlainTemplate:
    """The prompt as it is, then the response, then EOS: e.g. ``"Q: 7-2=\\nA:"`` + ``" 5"``.
    ``encode`` as in ChatTemplate."""

    name = "plain"

    def prompt_text(self, prompt: str) -> str:
        return prompt

    def encode(self, tokenizer, prompt, response=None, add_bos=True, add_eos=True):
        return _encode_with_template(self, tokenizer, prompt, response, add_bos, add_eos)

    def to_dict(self) -> dict:
        return {"name": self.name}


_TEMPLATES = {"chat": ChatTemplate, "plain": PlainTemplate}


def get_template(name):
    """A template from its name (``"chat"``, ``"plain"``) or from the dict its
    ``to_dict()`` gave (as stored with a checkpoint)."""
    if isinstance(name, (ChatTemplate, PlainTemplate)):
        return name
    if isinstance(name, dict):
        d = dict(name)
        key = d.pop("name", None)
        if key not in _TEMPLATES:
            raise ValueError(f"get_template: field \"name\": expected one of {sorted(_TEMPLATES)}, got {key!r}")
        cls = _TEMPLATES[key]
        allowed = set(cls.__dataclass_fields__)
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"get_template: unknown field(s) {sorted(unknown)} for template {key!r} "
                             f"(expected {sorted(allowed)})")
        for k, v in d.items():
            if not isinstance(v, str):
                raise ValueError(f"get_template: field {k!r}: expected a string, got {v!r}")
        return cls(**d)
    if name not in _TEMPLATES:
        raise ValueError(f"get_template: expected one of {sorted(_TEMPLATES)}, got {name!r}")
    return _TEMPLATES[name]()


def check_same_tokenizer(a, b, name_a: str = "policy", name_b: str = "reward model") -> None:
    """Raise ValueError unless two tokenizers map text to the same ids (same type, size, specials
    and vocabulary): a reward model scores token ids, so it must read the policy's ids as the
    policy means them."""
    problems = []
    if type(a) is not type(b):
        problems.append(f"types {type(a).__name__} vs {type(b).__name__}")
    if a.vocab_size != b.vocab_size:
        problems.append(f"vocab_size {a.vocab_size} vs {b.vocab_size}")
    for role in ("pad_id", "bos_id", "eos_id"):
        if getattr(a, role) != getattr(b, role):
            problems.append(f"{role} {getattr(a, role)} vs {getattr(b, role)}")
    if not problems:
        probe = "".join(chr(c) for c in range(32, 127)) + " 0123456789 Q: A: User: Assistant:"
        try:
            same = a.encode(probe) == b.encode(probe)
        except ValueError:  # a character tokenizer without some probe characters
            same = getattr(a, "to_dict", lambda: None)() == getattr(b, "to_dict", lambda: None)()
        if not same:
            problems.append("different ids for the same text")
    if problems:
        raise ValueError(f"the {name_a}'s and the {name_b}'s tokenizers differ ({'; '.join(problems)}); "
                         f"they must be the same tokenizer")
