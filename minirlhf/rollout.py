"""Rollouts: the one sampling path of every trainer, and the record an update reads.

    rollout = make_rollout(actor, reference, scorer, task, tokenizer, template, prompts, ...)
        1. sample G responses per prompt, each prompt prefilled once           (sample)
        2. pi_old log-probs under the sampling temperature, and V(s_t)          (actor: policies.ActorCritic)
        3. pi_ref log-probs under the same temperature                         (reference: policies.Reference)
        4. the score of each response, then the missing-EOS penalty           (scorer)
    texts = sample_responses(model, tokenizer, template, prompts, ...)   # step 1 alone: evaluation, collection

One batch row is one episode. The tensors are laid out as

    input_ids  = [ left-padded prompt (P columns) | response, right-padded (R columns) ]

so the prompt's last token always sits in column P-1 and response token t in column P+t. Every
per-token tensor of the record is (B, R), aligned with the response tokens:

    logprobs[b, t]      log pi_old(y_t | x, y_<t) under the sampling temperature
    ref_logprobs[b, t]  log pi_ref(y_t | x, y_<t) under the same temperature
    values[b, t]        V(x, y_<t), the critic's value of the state before y_t
    mask[b, t]          1 on response tokens, the EOS included; 0 after EOS

The old log-probs are recomputed by a teacher-forced forward pass over the sampled tokens with the
logits divided by the temperature the sampler used: the ratio pi_theta / pi_old of the PPO update
must compare the same distributions, or every ratio is biased.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from minirlhf.data import collate_prompts, collate_sft
from minirlhf.logprobs import token_logprobs
from minirlhf.objectives import logprobs_from_logits
from minirlhf.saving import load_model
from minirlhf.tokenizer import check_same_tokenizer


@dataclass
class Rollout:
    prompts: list[str]
    responses: list[str]
    input_ids: torch.Tensor  # (B, P+R)
    attention_mask: torch.Tensor  # (B, P+R)
    prompt_width: int  # P
    mask: torch.Tensor  # (B, R) float, 1 on response tokens (EOS included)
    ended: torch.Tensor  # (B,) bool, the response emitted EOS
    logprobs: torch.Tensor | None = None  # (B, R)
    ref_logprobs: torch.Tensor | None = None  # (B, R)
    values: torch.Tensor | None = None  # (B, R)
    scores: torch.Tensor | None = None  # (B,) the reward model's / verifier's score
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.input_ids.size(0)

    def select(self, idx: torch.Tensor | list[int]) -> "Rollout":
        """The sub-batch of rows ``idx`` (a minibatch)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        return Rollout([self.prompts[i] for i in idx.tolist()], [self.responses[i] for i in idx.tolist()],
                       pick(self.input_ids), pick(self.attention_mask), self.prompt_width, pick(self.mask),
                       pick(self.ended), pick(self.logprobs), pick(self.ref_logprobs), pick(self.values),
                       pick(self.scores), {k: pick(v) if isinstance(v, torch.Tensor) else v
                                           for k, v in self.extra.items()})


@torch.no_grad()
def sample(policy, tokenizer, template, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
           generator: torch.Generator | None = None, num_samples: int = 1, top_k: int | None = None,
           top_p: float | None = None, rows: torch.Tensor | None = None, n_rows: int | None = None) -> Rollout:
    """Generate ``num_samples`` responses per prompt with the KV cache and lay the batch out as a
    ``Rollout``: rows b*G .. b*G + G-1 answer prompt b, whose KV cache is prefilled once.

    After its first EOS a row holds pad tokens, masked out everywhere; the mask ends at the FIRST
    EOS (which it keeps, so the model learns to stop), so the pad token may be the EOS token itself,
    as with GPT-2's tokenizer, whose only special token is <|endoftext|>. ``temperature=0`` is greedy
    decoding (whose log-probs are undefined: ``make_rollout`` needs a temperature > 0).

    ``rows`` (B*G,) and ``n_rows``: the batch is rows ``rows`` of a global batch of ``n_rows`` rows
    (this process's share); each row takes the random draws of its row in the global batch, so what
    it samples does not depend on the number of processes (``GPT.generate``'s ``noise_rows``).
    """
    if not temperature >= 0:
        raise ValueError(f"sampling temperature must be >= 0 (0: greedy), got {temperature}")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples (samples per prompt): expected an int >= 1, got {num_samples!r}")
    device = next(policy.parameters()).device
    batch = collate_prompts(tokenizer, template, prompts)
    ids = batch["input_ids"].to(device)
    prompt_mask = batch["attention_mask"].to(device)
    P = ids.size(1)
    was_training = policy.training
    out = policy.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, attention_mask=prompt_mask,
                          generator=generator, num_samples=num_samples, noise_rows=rows, noise_batch=n_rows)
    policy.train(was_training)
    if num_samples > 1:
        ids, prompt_mask = ids.repeat_interleave(num_samples, 0), prompt_mask.repeat_interleave(num_samples, 0)
        prompts = [p for p in prompts for _ in range(num_samples)]
    response = out[:, P:]  # (B, R)
    is_eos = response == tokenizer.eos_id
    ended = is_eos.any(-1)
    # 1 up to and including the first EOS (everything when there is none)
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = (~after_eos).to(torch.float32)  # (B, R)
    R = int(mask.sum(-1).max().item()) if mask.numel() else 0
    response, mask = response[:, :R], mask[:, :R]
    input_ids = torch.cat([ids, response], dim=1)
    attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)
    texts = [tokenizer.decode(row[: int(n)]) for row, n in zip(response.tolist(), mask.sum(-1).tolist())]
    extra = {} if rows is None else {"rows": rows}  # (B,) each row's index in the global batch
    return Rollout(list(prompts), texts, input_ids, attention_mask, P, mask, ended, extra=extra)


@torch.no_grad()
def sample_responses(model, tokenizer, template, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                     generator: torch.Generator | None = None, num_samples: int = 1, batch_size: int = 128,
                     top_k: int | None = None, top_p: float | None = None) -> list[str]:
    """Step 1 alone, for evaluation and preference collection: ``num_samples`` response texts per
    prompt (consecutive), special tokens removed, generated ``batch_size`` rows at a time."""
    per_call = max(1, batch_size // num_samples)  # prompts per generate call
    texts = []
    for i in range(0, len(prompts), per_call):
        texts += sample(model, tokenizer, template, prompts[i : i + per_call], max_new_tokens, temperature,
                        generator, num_samples, top_k, top_p).responses
    return texts


class _NoTimer:
    def __call__(self, name):
        return contextlib.nullcontext()


@torch.no_grad()
def make_rollout(actor, reference, scorer, task, tokenizer, template, prompts: list[str], max_new_tokens: int,
                 temperature: float, generator: torch.Generator | None, samples_per_prompt: int = 1,
                 missing_eos_penalty: float | None = None, values: bool = False, keep_logits: bool = False,
                 autocast=contextlib.nullcontext, timer=None, rows: torch.Tensor | None = None,
                 n_rows: int | None = None) -> Rollout:
    """The one rollout path of the RL trainers, steps 1-4 of the module docstring.

    actor: ``policies.ActorCritic`` (its policy samples); reference: ``policies.Reference``; scorer:
    a ``RewardModelScorer`` or ``VerifierScorer``. Sets logprobs, ref_logprobs, values (with
    ``values`` and a critic), scores (after the missing-EOS penalty), ``extra["raw_scores"]`` (before
    it) and, with ``keep_logits``, ``extra["old_logits"]``: pi_old's response logits / temperature,
    (B,R,V), for a KL over whole next-token distributions (TRPO, PPO-penalty). ``rows``/``n_rows``:
    this batch's rows in the global batch (``sample`` records them as ``extra["rows"]``).
    """
    if not temperature > 0:
        raise ValueError(f"rollout temperature must be > 0 (log-probs of greedy decoding are undefined), got {temperature}")
    timer = timer or _NoTimer()
    with timer("generation"):
        rollout = sample(actor.policy, tokenizer, template, prompts, max_new_tokens, temperature, generator,
                         samples_per_prompt, rows=rows, n_rows=n_rows)
    with timer("scoring"), autocast():
        with timer("logprobs"):
            logits, v = actor(rollout, temperature, values=values)  # (B,R,V) already / T, (B,R) or None
            rollout.logprobs = logprobs_from_logits(logits, rollout.input_ids[:, rollout.prompt_width :])
            rollout.values = v
            if keep_logits:
                rollout.extra["old_logits"] = logits
            rollout.ref_logprobs = reference.logprobs(rollout, temperature)
        raw = scorer(rollout, task)
    rollout.extra["raw_scores"] = raw
    rollout.scores = apply_missing_eos_penalty(raw, rollout.ended, missing_eos_penalty)
    return rollout


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """One rollout of the rows of ``parts``: prompts left-padded to the widest prompt, responses right-padded
    to the longest (positions come from the attention mask, so the padding changes no log-prob). Each
    part's ``extra["rows"]`` (places in a global batch) means nothing in the whole and is dropped."""
    P = max(r.prompt_width for r in parts)
    R = max(r.mask.size(1) for r in parts)

    def pad(r: Rollout, t: torch.Tensor | None, prompt_part: bool):
        if t is None:
            return None
        if prompt_part:  # (B, P'+R'): left-pad the prompt, right-pad the response
            left, right = P - r.prompt_width, R - r.mask.size(1)
            return torch.nn.functional.pad(t, (left, right))
        return torch.nn.functional.pad(t, (0, R - t.size(1)))  # (B,R')

    def cat(get, prompt_part=False):
        ts = [pad(r, get(r), prompt_part) for r in parts]
        return None if ts[0] is None else torch.cat(ts)

    extra = {}
    for k, v in parts[0].extra.items():
        if isinstance(v, torch.Tensor) and v.dim() == 1 and k != "rows":
            extra[k] = torch.cat([r.extra[k] for r in parts])
    return Rollout(sum((r.prompts for r in parts), []), sum((r.responses for r in parts), []),
                   cat(lambda r: r.input_ids, True), cat(lambda r: r.attention_mask, True), P,
                   cat(lambda r: r.mask), torch.cat([r.ended for r in parts]), cat(lambda r: r.logprobs),
                   cat(lambda r: r.ref_logprobs), cat(lambda r: r.values),
                   None if parts[0].scores is None else torch.cat([r.scores for r in parts]), extra)


def draw_prompts(prompts: list[str], n: int, generator: torch.Generator) -> list[str]:
    """n training prompts drawn with replacement from a tracked generator (so a resumed run draws
    the same ones)."""
    idx = torch.randint(0, len(prompts), (n,), generator=generator).tolist()
    return [prompts[i] for i in idx]


def response_logprobs(model, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response token, (B, R); one forward pass. Differentiable."""
    logp = token_logprobs(model, rollout.input_ids, rollout.attention_mask, temperature)  # (B, P+R-1)
    return logp[:, rollout.prompt_width - 1 :]


def response_values(critic, rollout: Rollout) -> torch.Tensor:
    """V(x, y_<t) for every response token: the value at the position just before y_t, (B, R)."""
    v = critic(rollout.input_ids, rollout.attention_mask).float()  # (B, P+R), float32 under autocast too
    return v[:, rollout.prompt_width - 1 : -1]


class RewardModelScorer:
    """r_phi(x, y) from a Bradley–Terry reward model, read at the response's last token (EOS).

    ``normalize`` applies the model's saved training statistics, (r - mean) / std; ``clip`` bounds
    the result to [-clip, clip] (0: no bound).

    With ``tokenizer`` and ``template`` the reward model scores the ids it was trained on: each row's
    prompt and decoded response encoded again exactly as a preference pair is (``template.encode``;
    EOS when the response ended). Sampled ids need not be the tokenizer's own encoding of their text:
    with a byte-level BPE a policy can emit "snow" as "sn" + "ow", which the reward model never saw.
    Without them it scores the sampled ids as they are.
    """

    def __init__(self, reward_model, normalize: bool = True, clip: float = 0.0, tokenizer=None, template=None):
        if (tokenizer is None) != (template is None):
            raise ValueError("RewardModelScorer: give both tokenizer and template (re-encode), or neither")
        self.rm = reward_model
        self.normalize = normalize
        self.clip = clip
        self.tokenizer = tokenizer
        self.template = template

    def inputs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) the reward model scores, (B, T) each."""
        if self.tokenizer is None:
            return rollout.input_ids, rollout.attention_mask
        limit = self.rm.config.block_size
        rows = []
        for b, (prompt, response) in enumerate(zip(rollout.prompts, rollout.responses)):
            ids, n_prompt = self.template.encode(self.tokenizer, prompt, response, add_eos=bool(rollout.ended[b]))
            if not n_prompt < len(ids) <= limit:  # nothing left to score, or too long: the sampled ids
                real = rollout.attention_mask[b].bool()
                ids = rollout.input_ids[b][real].tolist()
                n_prompt = int(real[: rollout.prompt_width].sum())
            rows.append((ids, n_prompt))
        batch = collate_sft(rows, self.tokenizer.pad_id)
        device = rollout.input_ids.device
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    @torch.no_grad()
    def __call__(self, rollout: Rollout, task=None) -> torch.Tensor:
        scores = self.rm.score(*self.inputs(rollout)).float()
        if self.normalize:
            scores = self.rm.normalize(scores)
        if self.clip > 0:
            scores = scores.clamp(-self.clip, self.clip)
        return scores


class VerifierScorer:
    """A task's programmatic reward (e.g. 1 for the right arithmetic answer, else 0)."""

    def __call__(self, rollout: Rollout, task) -> torch.Tensor:
        device = rollout.input_ids.device
        return torch.tensor([task.score(p, r) for p, r in zip(rollout.prompts, rollout.responses)],
                            dtype=torch.float32, device=device)


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float | None) -> torch.Tensor:
    """A response that never emitted EOS gets the score ``penalty`` instead of its score (the
    "missing EOS penalty" of the RLHF-with-PPO implementation details); None leaves scores alone."""
    if penalty is None:
        return scores
    return torch.where(ended, scores, torch.full_like(scores, penalty))


def build_scorer(reward: str, tokenizer, device, template=None, normalize: bool = True, clip: float = 0.0):
    """(scorer, reward model or None): the task's verifier for ``reward="verifier"``, else the reward
    model in the folder ``reward``. Given the template, the reward model scores each response's text
    encoded as its training pairs were (RewardModelScorer), not the sampled ids."""
    if reward == "verifier":
        return VerifierScorer(), None
    rm, rm_tok, _, _ = load_model(reward, kind="reward", device=device)
    if rm_tok is not None:
        check_same_tokenizer(tokenizer, rm_tok, "policy", "reward model")
    rm.eval().requires_grad_(False)
    if template is None:
        return RewardModelScorer(rm, normalize, clip), rm
    return RewardModelScorer(rm, normalize, clip, tokenizer, template), rm
