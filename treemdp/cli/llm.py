"""``treemdp llm ...``: tiny-model, sft, daa, eval, plot (and lab, rm from :mod:`.llmlab`).

The ``sft``/``daa`` flags are the fields of :class:`treemdp.llm.train.LLMConfig` and the
``eval`` flags those of :class:`treemdp.llm.evaluate.EvalConfig` (one field, one flag, its
docstring the help); ``daa`` also takes the chosen objective's parameters as flags
(``--loss cdpo --epsilon 0.2``), as ``treemdp train`` does. Handlers parse and validate; the
work is in ``treemdp.llm.models``, ``train``, ``evaluate`` and ``plots``, imported inside them
so ``treemdp --help`` never loads transformers.
"""

from __future__ import annotations

import argparse
import json
import os

from ..errors import UserError
from .flags import add_dataclass_flags, values_from_args


def _choices() -> dict:
    from ..llm.data import TOKENIZATIONS, TRUNCATION_MODES
    from ..llm.train import DEVICES, LR_SCHEDULERS, OPTIMIZERS, PRECISIONS, PRESETS, REPORT_TO
    return {"preset": list(PRESETS), "optimizer": list(OPTIMIZERS), "device": list(DEVICES),
            "precision": list(PRECISIONS), "truncation": list(TRUNCATION_MODES),
            "tokenization": list(TOKENIZATIONS), "lr_scheduler": list(LR_SCHEDULERS),
            "report_to": list(REPORT_TO)}


CONFIG_HELP = ("rerun a run from its config.json (every setting, the objective included); flags "
               "given override it; give a new --out (bit for bit the same numbers on CPU)")


def add_parsers(subparsers) -> None:
    """Register ``treemdp llm`` and its subcommands."""
    from ..llm.evaluate import EvalConfig
    from ..llm.train import DAA_FIELDS, LLMConfig
    llm = subparsers.add_parser("llm", help="the same objectives on causal LMs (Pythia / GPT-NeoX)",
                                description="SFT, DPO/IPO/SLiC (any objective of 'treemdp losses') "
                                            "and evaluation on causal LMs; see docs/llm.md.")
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

    p = sub.add_parser("sft", help="supervised fine-tuning on prompt/completion rows",
                       epilog="Data: JSONL with prompt/completion (strings or chat messages), a "
                              "datasets folder or a hub dataset (--split, --columns).")
    p.add_argument("--config", metavar="RUN/config.json", help=CONFIG_HELP)
    add_dataclass_flags(p, LLMConfig, skip=("phase",) + DAA_FIELDS, choices=_choices(),
                        title="run settings (every LLMConfig field)")
    p.set_defaults(func=run_sft)

    p = sub.add_parser("daa", help="DPO / IPO / SLiC or any objective on prompt/chosen/rejected rows",
                       epilog="Objective parameters are flags too: --loss cdpo --epsilon 0.2 (or "
                              "--loss 'cdpo(epsilon=0.2)'); 'treemdp losses' lists them. TRL's "
                              "losses: --loss 'trl(loss_type=ipo)'. Your own: --loss "
                              "package.module:function. TR-DPO: --ref-sync-steps N "
                              "[--ref-mixup-alpha A]. LoRA: --lora-r R (pip install "
                              "'treemdp[lora]').")
    p.add_argument("--config", metavar="RUN/config.json", help=CONFIG_HELP)
    add_dataclass_flags(p, LLMConfig, skip=("phase",), choices=_choices(),
                        title="run settings (every LLMConfig field)")
    p.set_defaults(func=run_daa, loss_flags=True)

    p = sub.add_parser("eval", help="evaluate a model (or every checkpoint of a run) against a reference")
    p.add_argument("--model", help="policy folder (or use --run)")
    p.add_argument("--run", help="a sft/daa output folder: evaluate every checkpoint, write eval.csv")
    p.add_argument("--out", help="JSON file for the metrics (default: print them)")
    add_dataclass_flags(p, EvalConfig, choices={"device": ["auto", "cpu", "cuda"],
                                                "tokenization": ["default", "trl"]},
                        title="evaluation settings (every EvalConfig field)")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("plot", help="plots over checkpoints from runs evaluated with eval --run")
    p.add_argument("runs", nargs="+", help="run folders holding eval.csv")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.set_defaults(func=run_plot)

    from .llmlab import add_parsers as add_lab_parsers  # lab run|report|fit and rm
    add_lab_parsers(sub)


def config_from_args(args: argparse.Namespace, phase: str):
    """LLMConfig from the flags given; with ``--config RUN/config.json`` the settings left out
    come from that run, with ``--resume`` from the run in ``--out`` (so a bare ``--out DIR
    --resume`` continues a run as it was started)."""
    from ..llm.train import LLMConfig, config_for_rerun, config_for_resume
    base, source = {}, None
    if getattr(args, "config", None):
        base = config_for_rerun(args.config)
        source = base.pop("_loss_source", None)
        if base["phase"] != phase:
            raise UserError(f"{args.config} is a {base['phase']} run; rerun it with 'treemdp llm "
                            f"{base['phase']} --config ...'")
    if args.resume and args.out:
        base = base | config_for_resume(args.out)
    values = values_from_args(args, LLMConfig, base)
    if phase == "daa" and getattr(args, "extra", None):
        from .train import apply_objective_flags
        (values["loss"],) = apply_objective_flags([values.get("loss", LLMConfig.loss)],
                                                  args.extra)
    values["phase"] = phase
    if source and values.get("loss") == base.get("loss"):
        _check_objective(values["loss"], source)
    return LLMConfig(**values)


def _check_objective(loss: str, source: dict) -> None:
    """A rerun's user objective must import; if not, say where it came from and how to reach it."""
    from ..llm.train import objective_hint, objective_spec
    try:
        objective_spec(loss)
    except ValueError as e:
        raise UserError(objective_hint(str(e), loss, source)) from None


def _train(args, phase: str) -> int:
    cfg = config_from_args(args, phase).resolved()  # validate before loading anything heavy
    from ..llm.train import train
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
    from ..llm.models import build_tiny_model
    from ..llm.train import quiet_transformers
    quiet_transformers()
    out = build_tiny_model(args.out, hidden_size=args.hidden, num_layers=args.layers,
                           num_heads=args.heads, vocab_size=args.vocab,
                           max_positions=args.max_positions, corpus_files=args.corpus,
                           seed=args.seed)
    print(f"tiny GPT-NeoX written to {out}")
    return 0


def run_eval(args) -> int:
    from ..llm.evaluate import EvalConfig, evaluate_model, evaluate_run
    from ..llm.train import json_ready
    if bool(args.model) == bool(args.run):
        raise UserError("give exactly one of --model or --run")
    cfg = EvalConfig(**values_from_args(args, EvalConfig))
    if not cfg.data:
        raise UserError("no held-out data (--data)")
    if args.run:
        result = evaluate_run(args.run, cfg)
        print(f"evaluated {len(result)} checkpoints; wrote {args.run}/eval.csv")
    else:
        result = evaluate_model(args.model, cfg)
    text = json.dumps(json_ready(result), indent=2, allow_nan=False)
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
    from ..llm.plots import plot_runs
    for path in plot_runs(args.runs, args.out):
        print(path)
    return 0
