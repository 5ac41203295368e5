"""A contextual bandit in language-model form, small enough that every trainer's optimum is exact.

Prompts and responses (the plain template appends EOS):

    prompt   "0:"        response "c"        (one token: an arm, then EOS)

There are a few prompts (contexts) and K arms ``a``, ``b``, ... Every (prompt, arm) pair has a
fixed reward in [0, 1] drawn from the seed. Because a response is one token, pi(y|x) is a single
softmax row over the K arms (times the probability of EOS after the arm, about 1 once trained),
so every expectation over responses is a sum of K terms: the KL-regularised optimum
pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x), the fixed point of GRPO's k3 term, the minimiser
of a DPO loss on given pairs, ... can all be computed exactly and compared with what a trainer,
run whole, actually learns (tests/trainers/test_bandit_optimum.py, ``minirlhf verify --trainers``).

The pretraining corpus and the demonstrations draw the arms of each prompt from a seeded
non-uniform distribution (``arm_weights``), so the reference policy after SFT is clearly not
uniform, and the KL term of every objective matters.

The "test" prompts are contexts of their own (their own rewards and arm weights), never trained
on by the RL stages: a bandit has nothing to generalise, so their metric only shows that a policy
trained on the other contexts left these alone.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from minirlhf.tasks.base import Task, check_generations, check_split, config_from_kwargs

ARMS = "abcdefgh"  # at most 8 arms
DIGITS = "0123456789"  # at most 10 contexts in all
ALPHABET = "".join(sorted(set(ARMS + DIGITS + ":\n")))


@dataclass
class BanditConfig:
    """Configuration of BanditTask; the defaults run.

    arms: K, the number of responses per prompt (2..8).
    prompts: training contexts; test_prompts: held-out contexts (prompts + test_prompts <= 10).
    ref_spread: the arm weights of a context are softmax(ref_spread * z) with z standard normal:
        0 makes the reference uniform, 1.5 (default) clearly not.
    docs_per_prompt: pretraining documents per context, arms drawn from its weights.
    demos_per_prompt: SFT demonstrations per context, arms drawn from its weights.
    seed: seeds the rewards, the weights and the drawn documents.
    """

    arms: int = 4
    prompts: int = 3
    test_prompts: int = 1
    ref_spread: float = 1.5
    docs_per_prompt: int = 200
    demos_per_prompt: int = 200
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.arms, int) or not 2 <= self.arms <= len(ARMS):
            raise ValueError(f"arms: expected an integer in [2, {len(ARMS)}], got {self.arms!r}")
        if not isinstance(self.prompts, int) or self.prompts < 1:
            raise ValueError(f"prompts: expected an integer >= 1, got {self.prompts!r}")
        if not isinstance(self.test_prompts, int) or self.test_prompts < 1:
            raise ValueError(f"test_prompts: expected an integer >= 1, got {self.test_prompts!r}")
        if self.prompts + self.test_prompts > len(DIGITS):
            raise ValueError(f"prompts + test_prompts: expected at most {len(DIGITS)} contexts, "
                             f"got {self.prompts} + {self.test_prompts}")
        if not (isinstance(self.ref_spread, (int, float)) and self.ref_spread >= 0):
            raise ValueError(f"ref_spread: expected a number >= 0, got {self.ref_spread!r}")
        for key in ("docs_per_prompt", "demos_per_prompt"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key}: expected an integer >= 1, got {getattr(self, key)!r}")


class BanditTask(Task):
    """K one-token arms per prompt, a seeded reward table, a non-uniform reference.

    score(prompt, response) is the reward r(prompt, arm) when the response is exactly one arm,
    and 0 otherwise (an empty response, two tokens, an unknown prompt's text ...).
    """

    name = "bandit"
    metric_name = "reward"
    template_name = "plain"
    max_response_tokens = 2  # the arm, then EOS

    def __init__(self, config: BanditConfig | None = None, **overrides):
        self.config = config_from_kwargs(BanditConfig, config, **overrides)
        c = self.config
        self.arms = list(ARMS[: c.arms])
        contexts = [f"{DIGITS[i]}:" for i in range(c.prompts + c.test_prompts)]
        self._splits = {"train": contexts[: c.prompts], "test": contexts[c.prompts :]}
        rng = random.Random(f"{c.seed}:bandit")
        self._rewards = {p: [rng.random() for _ in self.arms] for p in contexts}
        self._weights = {}
        for p in contexts:
            z = [c.ref_spread * rng.gauss(0.0, 1.0) for _ in self.arms]
            top = max(z)
            e = [math.exp(v - top) for v in z]
            self._weights[p] = [v / sum(e) for v in e]

    # ---- the bandit ------------------------------------------------------------------------
    def contexts(self) -> list[str]:
        """Every prompt, training contexts first."""
        return self._splits["train"] + self._splits["test"]

    def rewards(self, prompt: str) -> list[float]:
        """r(prompt, arm) for the K arms, in the order of ``self.arms``."""
        if prompt not in self._rewards:
            raise ValueError(f"prompt: expected one of {self.contexts()}, got {prompt!r}")
        return list(self._rewards[prompt])

    def arm_weights(self, prompt: str) -> list[float]:
        """The distribution the corpus and the demonstrations draw this prompt's arms from."""
        if prompt not in self._weights:
            raise ValueError(f"prompt: expected one of {self.contexts()}, got {prompt!r}")
        return list(self._weights[prompt])

    def _draws(self, prompt: str, n: int, salt: str) -> list[str]:
        rng = random.Random(f"{self.config.seed}:{salt}:{prompt}")
        return rng.choices(self.arms, weights=self._weights[prompt], k=n)

    def preference_rows(self, prompt: str, pairs_per_arm_pair: int, seed: int = 0) -> list[dict]:
        """Pairs labelled by Bradley–Terry on the rewards: every unordered pair of arms {a, b},
        ``pairs_per_arm_pair`` times, with a chosen over b with probability sigmoid(r_a - r_b)
        (seeded). Rows are {"prompt", "chosen", "rejected"}: hard labels, as a rater gives."""
        r = self.rewards(prompt)
        rng = random.Random(f"{self.config.seed}:{seed}:pairs:{prompt}")
        rows = []
        for i in range(len(self.arms)):
            for j in range(i + 1, len(self.arms)):
                p = 1.0 / (1.0 + math.exp(-(r[i] - r[j])))
                for _ in range(pairs_per_arm_pair):
                    win, lose = (i, j) if rng.random() < p else (j, i)
                    rows.append({"prompt": prompt, "chosen": self.arms[win], "rejected": self.arms[lose]})
        return rows

    # ---- Task interface ---------------------------------------------------------------------
    def build_tokenizer(self):
        """A CharTokenizer over the fixed ALPHABET (plus <pad>, <bos>, <eos>): an arm is one token."""
        from minirlhf.tokenizer import CharTokenizer  # lazy: the tokenizer layer

        return CharTokenizer(ALPHABET)

    def pretrain_documents(self) -> list[str]:
        """``docs_per_prompt`` documents "0:c" per context (training and test), arms drawn from the
        context's weights, in a seeded order."""
        docs = [p + a for p in self.contexts() for a in self._draws(p, self.config.docs_per_prompt, "pretrain")]
        random.Random(f"{self.config.seed}:pretrain-order").shuffle(docs)
        return docs

    def pretrain_text(self) -> str:
        return "\n".join(self.pretrain_documents()) + "\n"

    def sft_rows(self, split: str = "train") -> list[dict]:
        """``demos_per_prompt`` demonstrations per context of ``split``, arms drawn from its weights."""
        return [{"prompt": p, "response": a} for p in self._splits[check_split(split)]
                for a in self._draws(p, self.config.demos_per_prompt, f"demos:{split}")]

    def prompts(self, split: str) -> list[str]:
        return list(self._splits[check_split(split)])

    def reference(self, prompt: str) -> str:
        """The best arm."""
        r = self.rewards(prompt)
        return self.arms[max(range(len(r)), key=r.__getitem__)]

    def score(self, prompt: str, response: str) -> float:
        """r(prompt, arm) if ``response`` is exactly one arm, else 0.0."""
        if prompt not in self._rewards or response not in self.arms:
            return 0.0
        return self._rewards[prompt][self.arms.index(response)]

    def metric(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """{"reward": mean score, "best_arm": share of responses that are the prompt's best arm,
        "valid": share of responses that are an arm}."""
        check_generations(prompts, responses)
        n = len(prompts)
        return {
            "reward": sum(self.score(p, r) for p, r in zip(prompts, responses)) / n,
            "best_arm": sum(p in self._rewards and r == self.reference(p) for p, r in zip(prompts, responses)) / n,
            "valid": sum(r in self.arms for r in responses) / n,
        }
