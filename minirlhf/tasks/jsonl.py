"""Your own data as a task: demonstrations and prompts from JSONL files, and a judge of your choice.

    --task.name jsonl --task.args sft=dolly.jsonl                      Dolly rows; 10% of the prompts held out
    --task.args sft=demos.jsonl test_prompts=test.jsonl judge=reference
    --task.args sft=demos.jsonl train_prompts=rl.jsonl test_prompts=test.jsonl judge=rm:runs/rm/model

Files (read and validated by minirlhf.data, so a bad row is named as file:line):

    sft            demonstrations in any layout minirlhf.data reads: {"prompt", "response"},
                   Dolly's {"instruction", "context", "response"} (prompt = instruction, a blank
                   line, then the context when there is one) or {"prompt", "completion"}.
                   '' : the instruct task's shipped demonstrations and held-out prompts.
    train_prompts  prompts the RL stages sample from ('': the distinct prompts of the sft rows).
    test_prompts   held-out prompts for evaluation ('': `holdout` of the sft prompts, drawn with
                   `seed` and removed from training). A prompt row is {"prompt"} with an optional
                   "reference" (or "response" / "completion"), or a Dolly row.
    pretrain       a plain-text file for `minirlhf pretrain` ('': the training demonstrations).

Other options: holdout (0.1), seed (0: the held-out draw), max_rows (0: all demonstrations; else the
first N), max_prompt_chars (0: no limit; else rows and prompts with longer prompts are left out, e.g.
Dolly's long contexts that would not fit the model's window), max_response_chars (0: no limit; else
demonstrations with longer responses are left out), template (chat or plain: used when
the model folder has none), max_response_tokens (64), vocab_size (1024: the tokenizer trained for
a model built from scratch).

The judge gives every (prompt, response) a score in [0, 1]; the task metric "score" is its mean:

    heuristic      the instruct task's heuristic judge (question, engaging words, analogy, length,
                   topic, times 1 - repetition): minirlhf.tasks.instruct.judge_score
    reference      exact match against a reference answer of the prompt (any one of them, when the
                   demonstrations give several): 1 or 0, comparing the texts with case, runs of
                   whitespace and a final . ! or ? ignored. Every prompt needs a reference.
    rm:PATH        a trained reward model folder (minirlhf rm): sigmoid((r - mean) / std), r read at
                   the EOS of the prompt and response in the reward model's own template, mean and
                   std its training statistics. Loaded on the CPU the first time a score is needed.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from minirlhf.tasks.base import Task, check_generations, check_split, config_from_kwargs

JUDGES = ("heuristic", "reference", "rm:PATH")


def normalize_answer(text: str) -> str:
    """Lower case, runs of whitespace as one space, no surrounding space, no final . ! or ?."""
    return re.sub(r"[.!?]+$", "", " ".join(text.lower().split())).rstrip()


@dataclass
class JsonlConfig:
    """Configuration of JsonlTask; see the module docstring. Paths are read when the task is built."""

    sft: str = ""
    train_prompts: str = ""
    test_prompts: str = ""
    holdout: float = 0.1
    judge: str = "heuristic"
    pretrain: str = ""
    template: str = "chat"
    max_rows: int = 0
    max_prompt_chars: int = 0
    max_response_chars: int = 0
    vocab_size: int = 1024
    max_response_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        for name in ("sft", "train_prompts", "test_prompts", "pretrain", "judge", "template"):
            setattr(self, name, str(getattr(self, name)))  # a path like 2024 reads as a number
        if not (self.judge in ("heuristic", "reference") or (self.judge.startswith("rm:") and self.judge[3:])):
            raise ValueError(f"judge: expected one of {', '.join(JUDGES)}, got {self.judge!r}")
        if self.template not in ("chat", "plain"):
            raise ValueError(f"template: expected chat or plain, got {self.template!r}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) or not 0 <= self.holdout < 1:
            raise ValueError(f"holdout: expected a share in [0, 1), got {self.holdout!r}")
        for name, low in (("max_rows", 0), ("max_prompt_chars", 0), ("max_response_chars", 0), ("vocab_size", 259), ("max_response_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")


class RewardModelJudge:
    """sigmoid of a reward model's normalised score of (prompt, response), in [0, 1]. The model
    loads on first use; scores of pairs already seen come from a cache."""

    def __init__(self, folder: str, fallback_template=None, batch_size: int = 64):
        self.folder, self.fallback_template, self.batch_size = folder, fallback_template, batch_size
        self._loaded = None
        self.cached = lru_cache(maxsize=65536)(lambda p, r: self.scores([p], [r])[0])

    def _load(self):
        if self._loaded is None:
            from minirlhf.saving import load_model

            rm, tokenizer, template, _ = load_model(self.folder, kind="reward", device="cpu")
            if tokenizer is None:
                raise ValueError(f"{self.folder}: the reward model folder has no tokenizer")
            self._loaded = (rm.eval(), tokenizer, template or self.fallback_template)
        return self._loaded

    def rewards(self, prompts: list[str], responses: list[str]) -> list[float]:
        """(r - mean) / std for each pair, at the EOS that ends the response."""
        import torch

        from minirlhf.data import collate_sft

        rm, tokenizer, template = self._load()
        block = rm.config.block_size
        out = []
        for i in range(0, len(prompts), self.batch_size):
            encoded = []
            for p, r in zip(prompts[i:i + self.batch_size], responses[i:i + self.batch_size]):
                ids, n_prompt = template.encode(tokenizer, p, r)
                if len(ids) > block:  # keep BOS and the end: the reward is read at the last token
                    cut = len(ids) - block
                    ids, n_prompt = ids[:1] + ids[1 + cut:], max(1, n_prompt - cut)
                encoded.append((ids, min(n_prompt, len(ids) - 1)))
            batch = collate_sft(encoded, tokenizer.pad_id)
            with torch.no_grad():
                scores = rm.normalize(rm.score(batch["input_ids"], batch["attention_mask"]).float())
            out += scores.tolist()
        return out

    def scores(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [1.0 / (1.0 + math.exp(-r)) for r in self.rewards(prompts, responses)]


class JsonlTask(Task):
    """Demonstrations, prompts and a judge from your own JSONL files (see the module docstring)."""

    name = "jsonl"
    metric_name = "score"

    def __init__(self, config: JsonlConfig | None = None, **overrides):
        from minirlhf.data import load_prompts, load_sft

        self.config = c = config_from_kwargs(JsonlConfig, config, **overrides)
        self.template_name = c.template
        self.max_response_tokens = c.max_response_tokens
        if c.sft:
            sft_path, test_path = Path(c.sft), Path(c.test_prompts) if c.test_prompts else None
        else:  # the instruct task's shipped data, read as if it were yours
            from minirlhf.tasks.instruct import default_data_dir

            sft_path = default_data_dir() / "sft.jsonl"
            test_path = Path(c.test_prompts) if c.test_prompts else default_data_dir() / "test_prompts.jsonl"
        self.files = {"sft": str(sft_path)}
        rows = load_sft(self._existing(sft_path, "sft"))
        if c.max_prompt_chars:  # a long context would not fit the model's window with its response
            rows = [r for r in rows if len(r["prompt"]) <= c.max_prompt_chars]
        if c.max_response_chars:  # nor would a very long demonstration
            rows = [r for r in rows if len(r["response"]) <= c.max_response_chars]
        if c.max_rows:
            rows = rows[: c.max_rows]
        if not rows:
            raise ValueError(f"{sft_path}: no demonstrations (expected JSONL rows such as "
                             f'{{"prompt": ..., "response": ...}})')
        self._references: dict[str, list[str]] = {}
        for r in rows:
            self._add_reference(r["prompt"], r["response"])
        sft_prompts = list(dict.fromkeys(r["prompt"] for r in rows))

        if test_path is not None:
            self.files["test_prompts"] = str(test_path)
            test_rows = self._short(load_prompts(self._existing(test_path, "test_prompts")))
            for r in test_rows:
                if r["reference"] is not None:
                    self._add_reference(r["prompt"], r["reference"])
            test = list(dict.fromkeys(r["prompt"] for r in test_rows))
        else:
            n_test = round(c.holdout * len(sft_prompts))
            if c.holdout > 0 and len(sft_prompts) > 1:
                n_test = min(max(1, n_test), len(sft_prompts) - 1)
            picked = set(random.Random(f"{c.seed}:jsonl-holdout").sample(range(len(sft_prompts)), n_test))
            test = [p for i, p in enumerate(sft_prompts) if i in picked]
        held_out = set(test)
        if not test:
            raise ValueError(f"{sft_path}: no held-out prompts: give test_prompts=PATH or a holdout share > 0 "
                             f"with at least two distinct prompts")
        self._sft = [r for r in rows if r["prompt"] not in held_out]
        if c.train_prompts:
            path = Path(c.train_prompts)
            self.files["train_prompts"] = str(path)
            train_rows = self._short(load_prompts(self._existing(path, "train_prompts")))
            for r in train_rows:
                if r["reference"] is not None:
                    self._add_reference(r["prompt"], r["reference"])
            train = list(dict.fromkeys(r["prompt"] for r in train_rows))
        else:
            train = [p for p in sft_prompts if p not in held_out]
        if not self._sft or not train:
            raise ValueError(f"{sft_path}: no training demonstrations or prompts are left after holding out "
                             f"{len(test)} test prompt(s)")
        overlap = [p for p in sft_prompts if p in held_out] if test_path is not None else []
        overlap += [p for p in train if p in held_out] if c.train_prompts else []
        if overlap:
            raise ValueError(f"{self.files.get('test_prompts', sft_path)}: {len(set(overlap))} held-out prompt(s) "
                             f"also occur in the training data, e.g. {overlap[0]!r}; the splits must be disjoint")
        self._train, self._test = train, test

        self._judge = None
        if c.judge == "reference":
            for split, prompts in (("train_prompts", train), ("test_prompts", test)):
                missing = [p for p in prompts if p not in self._references]
                if missing:
                    where = self.files.get(split, self.files["sft"])
                    raise ValueError(f"{where}: judge=reference needs a reference answer for every prompt; "
                                     f"{len(missing)} have none, e.g. {missing[0]!r} (give the row a "
                                     f"\"reference\" or \"response\" field)")
        elif c.judge.startswith("rm:"):
            self._judge = RewardModelJudge(c.judge[3:], fallback_template=self.template())

    def _short(self, rows: list[dict]) -> list[dict]:
        limit = self.config.max_prompt_chars
        return [r for r in rows if len(r["prompt"]) <= limit] if limit else rows

    @staticmethod
    def _existing(path: Path, option: str) -> Path:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (task option {option}=PATH: a JSONL file)")
        return path

    def _add_reference(self, prompt: str, answer: str) -> None:
        refs = self._references.setdefault(prompt, [])
        if answer not in refs:
            refs.append(answer)

    # ---- data ---------------------------------------------------------------------------
    def build_tokenizer(self):
        """A byte-level BPE trained on the pretraining text and the templated demonstrations
        (for a model trained from scratch; an imported model keeps its own tokenizer)."""
        from minirlhf.tokenizer import BPETokenizer

        tmpl = self.template()
        texts = self.pretrain_documents() + [tmpl.prompt_text(r["prompt"]) + r["response"] for r in self._sft]
        return BPETokenizer.train(texts, self.config.vocab_size)

    def pretrain_text(self) -> str:
        """The `pretrain` file, else the training demonstrations, prompt and response, one per paragraph."""
        if self.config.pretrain:
            return self._existing(Path(self.config.pretrain), "pretrain").read_text(encoding="utf-8")
        return "\n\n".join(self.pretrain_documents())

    def pretrain_documents(self) -> list[str]:
        if self.config.pretrain:
            return super().pretrain_documents()
        return [f"{r['prompt']}\n{r['response']}" for r in self._sft]

    def sft_rows(self, split: str = "train") -> list[dict]:
        """"train": the demonstrations whose prompt is not held out; "test": each held-out prompt
        with its first reference (prompts without one are left out)."""
        if check_split(split) == "train":
            return [dict(r) for r in self._sft]
        return [{"prompt": p, "response": self._references[p][0]} for p in self._test if p in self._references]

    def prompts(self, split: str) -> list[str]:
        return list(self._train if check_split(split) == "train" else self._test)

    def reference(self, prompt: str) -> str | None:
        refs = self._references.get(prompt)
        return refs[0] if refs else None

    # ---- the judge ----------------------------------------------------------------------
    def score(self, prompt: str, response: str) -> float:
        """The judge's score in [0, 1] (see the module docstring)."""
        judge = self.config.judge
        if judge == "heuristic":
            from minirlhf.tasks.instruct import judge_score

            return judge_score(prompt, response)
        if judge == "reference":
            refs = self._references.get(prompt)
            if not refs:
                raise ValueError(f"judge=reference: the prompt {prompt!r} has no reference answer")
            return 1.0 if normalize_answer(response) in {normalize_answer(r) for r in refs} else 0.0
        return self._judge.cached(prompt, response)

    def metric(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """{"score": the judge's mean score}; the heuristic judge adds "judge/<component>", the
        reward-model judge "reward" (the mean normalised reward), and "rouge_l" (ROUGE-L F against
        the first reference) comes where every prompt has a reference."""
        check_generations(prompts, responses)
        n = len(prompts)
        out = {}
        if self.config.judge == "heuristic":
            from minirlhf.tasks.instruct import JUDGE_WEIGHTS, judge_components

            rows = [judge_components(p, r) for p, r in zip(prompts, responses)]
            out["score"] = sum(r["score"] for r in rows) / n
            for key in (*JUDGE_WEIGHTS, "repetition"):
                out[f"judge/{key}"] = sum(r[key] for r in rows) / n
        elif self.config.judge == "reference":
            out["score"] = sum(self.score(p, r) for p, r in zip(prompts, responses)) / n
        else:
            rewards = self._judge.rewards(prompts, responses)
            out["score"] = sum(1.0 / (1.0 + math.exp(-r)) for r in rewards) / n
            out["reward"] = sum(rewards) / n
        refs = [self.reference(p) for p in prompts]
        if all(ref is not None for ref in refs):
            from minirlhf.tasks.metrics import mean_rouge_l

            out["rouge_l"] = mean_rouge_l(responses, refs)["f"]
        return out
