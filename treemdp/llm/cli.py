"""``treemdp llm ...``: tiny-model, sft, daa, eval, plot. Parses and validates; the work is in
``treemdp.llm.models``, ``train``, ``evaluate`` and ``plots`` (imported inside the handlers, so
``treemdp --help`` never loads transformers)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import UserError


def _train_flags(p: argparse.ArgumentParser, phase: str) -> None:
    p.add_argument("--model", required=True, help="starting model: local folder or hub name "
                   "(e.g. EleutherAI/pythia-160m)")
    p.add_argument("--data", required=True, help="JSONL: " + (
        "prompt/completion rows" if phase == "sft" else "prompt/chosen/rejected rows"))
    p.add_argument("--out", required=True, help="output folder (checkpoints, metrics.csv, final/)")
    p.add_argument("--preset", default="cpu", choices=["paper", "gpu", "cpu"],
                   help="defaults for the settings below (paper = App. B)")
    p.add_argument("--optimizer", choices=["rmsprop", "adamw", "sgd"])
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    p.add_argument("--batch-size", type=int, help="rows per micro-batch per process")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    p.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--max-steps", type=int, help="cap on optimizer steps")
    p.add_argument("--stop-after", type=int, help="checkpoint and stop after N steps (--resume later)")
    p.add_argument("--checkpoints-per-epoch", type=int, help="intermediate checkpoints per epoch")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps")
    p.add_argument("--max-length", type=int, help="max prompt + completion tokens")
    p.add_argument("--max-prompt-length", type=int, help="prompt tokens kept when truncating")
    p.add_argument("--truncation", default="truncate", choices=["truncate", "drop"],
                   help="what to do with rows over --max-length")
    p.add_argument("--max-grad-norm", type=float, help="clip gradients to this norm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto = bf16 on a GPU that supports it, else fp32")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--log-every", type=int, default=1, help="steps per metrics.csv row")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def add_llm_parser(subparsers) -> None:
    """Register ``treemdp llm`` and its subcommands on an argparse subparsers object."""
    llm = subparsers.add_parser("llm", help="the same losses on causal LMs (Pythia / GPT-NeoX)",
                                description="SFT, DPO/IPO/SLiC and evaluation on causal LMs; "
                                            "see docs/llm.md.")
    sub = llm.add_subparsers(dest="llm_command", metavar="LLM_COMMAND")
    sub.required = True

    p = sub.add_parser("tiny-model", help="write a random-init GPT-NeoX + local tokenizer (offline)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512, help="tokenizer vocabulary size")
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--corpus", nargs="*", help="JSONL files to train the tokenizer on "
                   "(default: the shipped synthetic data)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_tiny_model)

    p = sub.add_parser("sft", help="supervised fine-tuning on prompt/completion rows")
    _train_flags(p, "sft")
    p.set_defaults(func=run_sft)

    p = sub.add_parser("daa", help="DPO / IPO / SLiC on prompt/chosen/rejected rows")
    _train_flags(p, "daa")
    p.add_argument("--loss", default="dpo", help="dpo | ipo | slic")
    p.add_argument("--beta", default="0.1", help="inverse temperature, > 0")
    p.add_argument("--ref", help="reference model (default: --model, i.e. the SFT policy)")
    p.add_argument("--average-logps", action="store_true",
                   help="per-token mean log-probs instead of sums (TRL's ipo convention)")
    p.set_defaults(func=run_daa)

    p = sub.add_parser("eval", help="evaluate a model (or every checkpoint of a run) against a reference")
    p.add_argument("--model", help="policy folder (or use --run)")
    p.add_argument("--run", help="a sft/daa output folder: evaluate every checkpoint, write eval.csv")
    p.add_argument("--ref", help="reference model (default: the run's starting model)")
    p.add_argument("--data", required=True, help="held-out prompt/chosen/rejected JSONL")
    p.add_argument("--beta", help="beta of the implicit reward (default: the run's, else 0.1)")
    p.add_argument("--judge", default="gold", help="gold | none | rm:PATH | module:function")
    p.add_argument("--n-prompts", type=int, default=32, help="prompts to sample answers for")
    p.add_argument("--samples", type=int, default=2, help="samples per prompt (temperature 1)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="JSON file for the metrics (default: print them)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("plot", help="plots over checkpoints from runs evaluated with eval --run")
    p.add_argument("runs", nargs="+", help="run folders holding eval.csv")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.set_defaults(func=run_plot)


def _config(args, phase: str):
    from .train import TrainConfig
    values = {k: v for k, v in vars(args).items()
              if k in TrainConfig.__dataclass_fields__ and k != "phase"}
    if phase == "daa":
        from ..losses import check_beta, get_g
        try:
            values["beta"] = check_beta(args.beta)
            get_g(args.loss)
        except ValueError as e:
            raise UserError(str(e)) from None
    return TrainConfig(phase=phase, **values)


def _train(args, phase: str) -> int:
    cfg = _config(args, phase).resolved()  # validate before loading anything heavy
    from .train import train
    result = train(cfg)
    where = result.out / ("final" if result.finished else f"checkpoint-{result.steps}")
    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch
        print(f"{phase}: {result.steps}/{result.total_steps} steps; model in {where}")
    return 0


def run_sft(args) -> int:
    return _train(args, "sft")


def run_daa(args) -> int:
    return _train(args, "daa")


def run_tiny_model(args) -> int:
    from .models import build_tiny_model
    from .train import _quiet_transformers
    _quiet_transformers()
    out = build_tiny_model(args.out, hidden_size=args.hidden, num_layers=args.layers,
                           num_heads=args.heads, vocab_size=args.vocab,
                           max_positions=args.max_positions, corpus_files=args.corpus,
                           seed=args.seed)
    print(f"tiny GPT-NeoX written to {out}")
    return 0


def run_eval(args) -> int:
    from .evaluate import EvalConfig, evaluate_model, evaluate_run
    if bool(args.model) == bool(args.run):
        raise UserError("give exactly one of --model or --run")
    for name in ("n_prompts", "samples", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    cfg = EvalConfig(data=args.data, ref=args.ref, beta=args.beta, judge=args.judge,
                     n_prompts=args.n_prompts, samples=args.samples,
                     max_new_tokens=args.max_new_tokens, max_length=args.max_length,
                     max_prompt_length=args.max_prompt_length, batch_size=args.batch_size,
                     seed=args.seed, device=args.device)
    if args.run:
        rows = evaluate_run(args.run, cfg)
        print(f"evaluated {len(rows)} checkpoints; wrote {args.run}/eval.csv")
        result = rows
    else:
        result = evaluate_model(args.model, cfg)
    text = json.dumps(result, indent=2)
    if args.out:
        try:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        except OSError as e:
            raise UserError(f"cannot write {args.out}: {e.strerror or e}") from None
    elif not args.run:
        print(text)
    return 0


def run_plot(args) -> int:
    from .plots import plot_runs
    for path in plot_runs(args.runs, args.out):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
