"""``treemdp train``: one run (SFT then DAA) with every TrainConfig field as a flag."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
from functools import lru_cache
from pathlib import Path

from .errors import UserError
from .training import TrainConfig


@lru_cache(maxsize=None)
def field_docs(cls=TrainConfig) -> dict[str, str]:
    """The one-line docstring under each dataclass field, read from the class source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = following.value.value.strip()
    return docs


def _type_of(field: dataclasses.Field):
    default = field.default
    if isinstance(default, bool):
        raise TypeError("boolean config fields need a flag style")  # none today
    if field.name == "data":
        return str
    return type(default)


def add_config_flags(parser: argparse.ArgumentParser, *, nargs=None, skip=()) -> None:
    """Add ``--field-name`` for every TrainConfig field (help text = the field's docstring).

    ``nargs="+"`` turns every flag into a list (the sweep command uses that).
    """
    docs = field_docs()
    group = parser.add_argument_group("run settings (every TrainConfig field)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} (default: {f.default})".replace("%", "%%")
        kwargs = {"type": _type_of(f), "default": None, "help": help_text, "dest": f.name}
        if f.name in ("loss", "policy", "cell", "optimizer") and not nargs:
            # single-valued flags let argparse list the choices; value lists are checked
            # per run by TrainConfig.validate, which names the bad value
            from .losses import LOSSES
            from .policies import CELLS, POLICIES
            from .training import OPTIMIZERS
            kwargs["choices"] = list({"loss": LOSSES, "policy": POLICIES, "cell": CELLS, "optimizer": OPTIMIZERS}[f.name])
            kwargs["metavar"] = "{" + ",".join(kwargs["choices"]) + "}"
        if f.name == "data":
            kwargs["metavar"] = "FILE"
        if nargs:
            kwargs["nargs"] = nargs
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from ``--config FILE`` (if given) overridden by explicit flags; validated."""
    raw = {}
    if getattr(args, "config", None):
        try:
            raw = json.loads(Path(args.config).read_text())
        except FileNotFoundError:
            raise UserError(f"config file {args.config!r} does not exist") from None
        except json.JSONDecodeError as e:
            raise UserError(f"config file {args.config!r} is not valid JSON: {e.msg} at line {e.lineno}") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {args.config!r} must hold a JSON object")
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            raw[f.name] = value
    try:
        return TrainConfig.from_dict(raw).validate()
    except TypeError as e:
        raise UserError(f"bad config: {e}") from None


def default_out(config: TrainConfig) -> Path:
    return Path("runs") / f"{config.loss}-beta{config.beta:g}-seed{config.seed}"


def run_train(args: argparse.Namespace) -> int:
    from .runs import check_writable, write_run
    from .training import resolve_dataset, train
    from .tree import TreeMDP

    config = config_from_args(args)
    dataset = resolve_dataset(config, TreeMDP(config.branching, config.depth))
    out = check_writable(args.out or default_out(config))
    result = train(config, dataset, progress=not args.quiet)
    write_run(result, out, plot=not args.no_plot)
    s = result.summary
    if not args.quiet:
        print(f"{config.loss} beta={config.beta:g} seed={config.seed}: OOD mass after SFT "
              f"{s['sft_ood_mass']:.1%}, peak {s['peak_ood_mass']:.1%} at DAA step {s['peak_ood_step']}, "
              f"final {s['final_ood_mass']:.1%}; chosen {s['final_chosen_prob']:.3f}, rejected "
              f"{s['final_rejected_prob']:.3g}; KL(pi||ref) {s['kl_to_reference']:.3f}; "
              f"{s['train_seconds']:.2f} s -> {out}")
    return 0


def add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="one run: SFT on the demonstrations, then DPO/IPO/SLiC on the preferences",
        description="Train a policy on the tree MDP: SFT (behaviour cloning) on the demonstrations, "
                    "then a direct alignment loss g(beta*h) on the preferences with the SFT policy "
                    "frozen as reference. Every trajectory probability is computed exactly at every "
                    "step. Writes config.json, data.json, history.csv, metrics.csv, summary.json, "
                    "policy.pt, reference.pt and run.png into --out.",
        epilog="Data file (--data): {\"demonstrations\": [[0,0,0], ...], \"preferences\": "
               "[{\"chosen\": [1,1,0], \"rejected\": [0,0,0]}]}. Example: treemdp train --loss ipo "
               "--beta 0.5 --seed 3 --out runs/ipo")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/LOSS-betaB-seedS)")
    parser.add_argument("--config", metavar="FILE", help="start from a config.json (flags override it)")
    parser.add_argument("--no-plot", action="store_true", help="skip run.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    add_config_flags(parser)
    parser.set_defaults(func=run_train)
