"""A GPT-2-shaped Hugging Face folder and a Dolly-layout data file, made here, for trying
`minirlhf import` and the jsonl task where real GPT-2 weights cannot be downloaded.

    # a model in GPT-2's folder layout: config.json, model.safetensors, tokenizer.json
    python scripts/make_gpt2_folder.py --model runs/gpt2demo/pretrain/model --out runs/gpt2demo/hf
    python scripts/make_gpt2_folder.py --random --n-layer 2 --n-head 2 --n-embd 64 --out runs/gpt2demo/hf
    # the instruct task's demonstrations in Dolly's layout, and its held-out prompts
    python scripts/make_gpt2_folder.py --dolly runs/gpt2demo/dolly.jsonl --test runs/gpt2demo/test.jsonl

--model writes a minirlhf model folder (e.g. from `minirlhf pretrain`) under GPT-2's tensor names
and layout (minirlhf.gpt2.export_gpt2_state_dict). config.json names GPT-2's activation, gelu_new
(the tanh approximation); a model trained with the exact GELU computes slightly differently after
the round trip, and the script prints by how much. --random writes a randomly initialised GPT-2
of the given shape with the instruct task's tokenizer. The tokenizer is saved as tokenizer.json.

Dolly rows are {"instruction", "context", "response", "category"} (databricks-dolly-15k's layout);
the held-out prompts are {"prompt", "reference"}.
"""
import argparse
import json
import sys
from pathlib import Path

import torch


def write_hf_folder(model, tokenizer, out: Path) -> None:
    from safetensors.torch import save_file

    from minirlhf.gpt2 import export_gpt2_state_dict, gpt2_config_dict

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(gpt2_config_dict(model.config), indent=2) + "\n")
    save_file(export_gpt2_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(out / "tokenizer.json")


def write_dolly(dolly: Path | None, test: Path | None) -> None:
    from minirlhf.data import write_jsonl
    from minirlhf.tasks import get_task

    task = get_task("instruct")
    if dolly:
        dolly.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(dolly, [{"instruction": r["prompt"], "context": "", "response": r["response"],
                             "category": "open_qa"} for r in task.sft_rows("train")])
        print(f"{dolly}: {len(task.sft_rows('train'))} Dolly rows")
    if test:
        test.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(test, [{"prompt": r["prompt"], "reference": r["response"]} for r in task.sft_rows("test")])
        print(f"{test}: {len(task.sft_rows('test'))} held-out prompts with references")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a minirlhf model folder to write in GPT-2's layout")
    ap.add_argument("--random", action="store_true", help="a randomly initialised GPT-2 instead")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=288)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="the Hugging Face folder to write")
    ap.add_argument("--dolly", type=Path, help="write the instruct demonstrations here in Dolly's layout")
    ap.add_argument("--test", type=Path, help="write the instruct held-out prompts here")
    args = ap.parse_args(argv)
    if (args.model or args.random) and not args.out:
        ap.error("--model and --random need --out")
    if args.model and args.random:
        ap.error("give --model or --random, not both")
    if args.out:
        from minirlhf.model import GPT, GPTConfig
        from minirlhf.saving import load_model

        if args.model:
            model, tokenizer, _, _ = load_model(args.model, kind="gpt")
        else:
            from minirlhf.tasks import get_task

            tokenizer = get_task("instruct").build_tokenizer()
            torch.manual_seed(args.seed)
            model = GPT(GPTConfig(tokenizer.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd,
                                  gelu="tanh"))
        out = Path(args.out)
        write_hf_folder(model.eval(), tokenizer, out)
        again = GPT.from_pretrained_gpt2(str(out)).eval()
        idx = torch.tensor([tokenizer.encode("Why do bees buzz? Imagine a tiny engine.", add_bos=True)])
        with torch.no_grad():
            diff = (model(idx) - again(idx)).abs().max().item()
        n = sum(p.numel() for p in model.parameters())
        print(f"{out}: GPT-2 layout, {model.config.n_layer} layers, width {model.config.n_embd}, {n:,} parameters; "
              f"max |logit difference| after the round trip {diff:.2e}"
              + (" (exact GELU -> gelu_new)" if model.config.gelu == "exact" else ""))
    if args.dolly or args.test:
        write_dolly(args.dolly, args.test)
    if not (args.out or args.dolly or args.test):
        ap.error("nothing to do: give --model/--random with --out, or --dolly/--test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
