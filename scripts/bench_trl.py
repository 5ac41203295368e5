"""DPO and reward-model training throughput against TRL's DPOTrainer and RewardTrainer, side by side.

    python scripts/bench_trl.py                      # TINY GPT, 8 pairs a step, full fine-tuning, 2 threads
    python scripts/bench_trl.py --steps 30 --which dpo

Like for like: the same GPT (TINY, GPTConfig(512, 128, 4, 4, 128), fp32, no dropout; for TRL the
weights are copied into a ``transformers.GPT2LMHeadModel`` / ``GPT2ForSequenceClassification`` of
the same shape), the same pairs (the synthetic arithmetic pairs of scripts/bench_dpo.py, about 30
characters a sequence), the same character vocabulary (for TRL a ``tokenizers`` WordLevel tokenizer
over minirlhf's character ids), the same batch (``--pairs`` pairs a step, chosen and rejected of a
pair in one forward pass on both sides), full fine-tuning with AdamW and gradient clipping at 1.0,
and DPO's reference log-probs computed once before training on both sides (TRL:
``precompute_ref_log_probs=True``; minirlhf always does). Each side runs ``--steps`` optimizer steps;
the step times after ``--warmup`` steps are taken from step-end timestamps, and pairs/s is
``--pairs`` over their median. Both run in this process with the same thread count, one after the
other, repeated ``--repeats`` times alternately; the figures are medians over repeats.

minirlhf's side is its trainers' own step: ``dpo_step`` for DPO (as scripts/bench_dpo.py times it)
and, for the reward model, the body of ``train_reward_model``'s loop (collate_preferences, one
forward pass, Bradley-Terry loss, backward, clipping, AdamW, the metrics' host reads). Both take the
trainers' default layout, one row x y_w y_l a pair with the prompt computed once (``share_prompt``);
``--no-share-prompt`` times the 2B-row layout, chosen rows over rejected rows, as TRL computes it.
TRL is imported only here, when installed; without it the script times minirlhf alone and says so.
``--dtype bf16`` runs both sides in bf16 autocast (minirlhf's ``--run.dtype bf16``, TRL's ``bf16=True``),
weights and optimizer state in fp32 on both.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dpo import synthetic_pairs  # noqa: E402
from bench_generate import hf_copy  # noqa: E402
from bench_model import CONFIGS, matmul_gflops  # noqa: E402

from minirlhf.data import collate_preferences  # noqa: E402
from minirlhf.device import autocast  # noqa: E402
from minirlhf.heads import RewardModel  # noqa: E402
from minirlhf.model import GPT  # noqa: E402
from minirlhf.tasks.arithmetic import ALPHABET  # noqa: E402
from minirlhf.tokenizer import CharTokenizer, get_template  # noqa: E402
from minirlhf.trainers.common import OptimConfig, clip_grad_norm, make_optimizer  # noqa: E402
from minirlhf.trainers.dpo import DPOConfig, build_pool, dpo_step  # noqa: E402
from minirlhf.trainers.reward import RewardConfig, pair_loss, pair_metrics, pair_scores, pair_tensors  # noqa: E402

LR = 1e-4


def step_times(stamps: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    return statistics.median(gaps)


# -- minirlhf ------------------------------------------------------------------------------------


def ours_dpo(rows, args) -> float:
    torch.manual_seed(0)
    tok, template = CharTokenizer(ALPHABET), get_template("plain")
    model = GPT(CONFIGS["TINY"]["cfg"])
    cfg = DPOConfig(batch_size=args.pairs, share_prompt=args.share_prompt)
    cfg.lora.enabled = False
    cfg.optim = OptimConfig(lr=LR, warmup_steps=0)
    model.train()
    cast = lambda: autocast("cpu", args.dtype)  # noqa: E731
    pool = build_pool(model, rows, tok, template, cfg, "cpu", autocast=cast)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optim)
    order, stamps = None, [time.perf_counter()]
    for step in range(1, args.steps + 1):
        batch_rows, ref_c, ref_r, order = pool.batch(step, cfg.batch_size, cfg.run.seed, order)
        dpo_step(model, opt, params, batch_rows, ref_c, ref_r, cfg, tok, template, LR, "cpu", autocast=cast)
        stamps.append(time.perf_counter())
    return step_times(stamps, args.warmup)


def ours_rm(rows, args) -> float:
    torch.manual_seed(0)
    tok, template = CharTokenizer(ALPHABET), get_template("plain")
    model = RewardModel(GPT(CONFIGS["TINY"]["cfg"]))
    cfg = RewardConfig(batch_size=args.pairs, share_prompt=args.share_prompt)
    cfg.optim = OptimConfig(lr=LR, warmup_steps=0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optim)
    max_len = model.backbone.config.block_size
    stamps = [time.perf_counter()]
    for step in range(1, args.steps + 1):
        part = rows[(step - 1) * args.pairs: step * args.pairs]
        batch = collate_preferences(tok, template, part, max_len, "error", share_prompt=cfg.share_prompt)
        with autocast("cpu", args.dtype):
            chosen, rejected = pair_scores(model, batch, "cpu")
        chosen, rejected = chosen.float(), rejected.float()
        labels = pair_tensors(part, cfg.use_strength, chosen.dtype, "cpu")
        loss = pair_loss(chosen, rejected, labels, cfg)
        loss.backward()
        loss_value = loss.item()
        grad_norm = clip_grad_norm(params, cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        metrics = {"loss": loss_value, "grad_norm": float(grad_norm)}
        metrics.update(pair_metrics(chosen, rejected, labels["prob"]))
        stamps.append(time.perf_counter())
    return step_times(stamps, args.warmup)


# -- TRL -----------------------------------------------------------------------------------------


def hf_tokenizer(tok: CharTokenizer):
    """A PreTrainedTokenizerFast giving minirlhf's character ids (one token per character)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(tok.stoi)
    t = Tokenizer(models.WordLevel(vocab, unk_token=tok.itos[tok.pad_id]))
    t.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=t, pad_token=tok.itos[tok.pad_id],
                                   bos_token=tok.itos[tok.bos_id], eos_token=tok.itos[tok.eos_id])
    return fast


class Stamps:
    """A TrainerCallback recording the wall time at every step end."""

    def __init__(self):
        from transformers import TrainerCallback

        stamps = self.stamps = []

        class CB(TrainerCallback):
            def on_train_begin(self, *a, **kw):
                stamps.append(time.perf_counter())

            def on_step_end(self, *a, **kw):
                stamps.append(time.perf_counter())

        self.callback = CB()


def trl_common_args(args, tmp):
    return dict(output_dir=tmp, per_device_train_batch_size=args.pairs, max_steps=args.steps, learning_rate=LR,
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                logging_steps=10**6, save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0,
                seed=0, disable_tqdm=True, remove_unused_columns=False, bf16=args.dtype == "bf16")


def trl_dpo(rows, args) -> float:
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    torch.manual_seed(0)
    tok = CharTokenizer(ALPHABET)
    hf = hf_copy(GPT(CONFIGS["TINY"]["cfg"]))
    hf.config.pad_token_id = tok.pad_id
    stamps = Stamps()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TRLDPOConfig(**trl_common_args(args, tmp), beta=0.1, precompute_ref_log_probs=True,
                           max_length=CONFIGS["TINY"]["cfg"].block_size)
        trainer = DPOTrainer(model=hf, args=cfg, train_dataset=Dataset.from_list(rows),
                             processing_class=hf_tokenizer(tok), callbacks=[stamps.callback])
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's end-of-run summary dict
            trainer.train()
    return step_times(stamps.stamps, args.warmup)


def trl_rm(rows, args) -> float:
    from datasets import Dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    torch.manual_seed(0)
    tok = CharTokenizer(ALPHABET)
    lm = hf_copy(GPT(CONFIGS["TINY"]["cfg"]))
    config = GPT2Config(**{**lm.config.to_dict(), "num_labels": 1, "pad_token_id": tok.pad_id})
    hf = GPT2ForSequenceClassification(config)
    hf.transformer.load_state_dict(lm.transformer.state_dict())
    stamps = Stamps()
    data = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TRLRewardConfig(**trl_common_args(args, tmp), max_length=CONFIGS["TINY"]["cfg"].block_size)
        trainer = RewardTrainer(model=hf, args=cfg, train_dataset=Dataset.from_list(data),
                                processing_class=hf_tokenizer(tok), callbacks=[stamps.callback])
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's end-of-run summary dict
            trainer.train()
    return step_times(stamps.stamps, args.warmup)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=8, help="pairs per step")
    ap.add_argument("--seq-len", type=int, default=30, help="characters per sequence, about")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=5, help="steps not timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--which", nargs="+", default=["dpo", "rm"], choices=["dpo", "rm"])
    ap.add_argument("--matmul-n", type=int, default=1024)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: both sides in bf16 autocast (minirlhf --run.dtype bf16, TRL bf16=True)")
    ap.add_argument("--no-share-prompt", dest="share_prompt", action="store_false",
                    help="minirlhf with chosen and rejected in rows of their own (its trainers' share_prompt=false)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import datasets
        import transformers
        import trl

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        note = f"trl {trl.__version__}, transformers {transformers.__version__}"
        have_trl = True
    except ImportError:
        note, have_trl = "trl not installed: the TRL comparison is skipped", False
    c = CONFIGS["TINY"]["cfg"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; {note}; TINY GPT (V={c.vocab_size}, "
          f"L={c.n_layer}, H={c.n_head}, C={c.n_embd}), full fine-tuning, {args.pairs} pairs/step, "
          f"~{args.seq_len} characters/sequence; minirlhf {'one row a pair, x y_w y_l' if args.share_prompt else '2B rows'}; median step time of steps {args.warmup + 1}..{args.steps}, "
          f"medians of {args.repeats} alternating runs")
    base = matmul_gflops(args.matmul_n, 3)
    print(f"baseline: {args.matmul_n}x{args.matmul_n} fp32 matmul {base:.1f} GFLOP/s")
    rows = synthetic_pairs(args.pairs * args.steps, args.seq_len)
    sides = {"dpo": (ours_dpo, trl_dpo), "rm": (ours_rm, trl_rm)}
    for which in args.which:
        ours_fn, trl_fn = sides[which]
        ours_t, trl_t = [], []
        for _ in range(args.repeats):
            ours_t.append(ours_fn(rows, args))
            if have_trl:
                trl_t.append(trl_fn(rows, args))
        name = "DPO" if which == "dpo" else "reward model"
        line = f"{name:12s}: minirlhf {args.pairs / statistics.median(ours_t):7.1f} pairs/s"
        if have_trl:
            ratio = statistics.median(t / o for o, t in zip(ours_t, trl_t))
            line += f" | TRL {args.pairs / statistics.median(trl_t):7.1f} pairs/s | minirlhf/TRL {ratio:5.2f}x"
        print(line)
    print(f"baseline again at the end: {matmul_gflops(args.matmul_n, 3):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
