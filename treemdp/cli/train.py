"""``treemdp train``: one run (SFT then DAA) with every TrainConfig field as a flag, plus the
chosen objective's own parameters (``--loss cdpo --epsilon 0.1``)."""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

from ..errors import UserError
from ..specs import literal
from ..training import TrainConfig
from ..progress import add_progress_flag, show_progress
from .flags import add_dataclass_flags, read_config_file, values_from_args


def add_config_flags(parser: argparse.ArgumentParser, *, nargs=None, skip=()) -> None:
    """``--field-name`` for every TrainConfig field; ``nargs="+"`` for value lists (sweeps)."""
    add_dataclass_flags(parser, TrainConfig, nargs=nargs, skip=skip,
                        title="run settings (every TrainConfig field)")
    parser.set_defaults(loss_flags=True)


def objective_flags(extra: list[str]) -> dict[str, list]:
    """``["--epsilon", "0.1", "0.2", "--lam", "50"]`` -> ``{"epsilon": [0.1, 0.2], "lam": [50]}``."""
    flags: dict[str, list] = {}
    name = None
    for token in extra:
        if token.startswith("--") and len(token) > 2:
            name, _, inline = token[2:].partition("=")
            name = name.replace("-", "_")
            if name in flags:
                raise UserError(f"--{name.replace('_', '-')} is given twice")
            flags[name] = [literal(inline)] if inline else []
        elif name is None:
            raise UserError(f"unrecognized argument {token!r}")
        else:
            flags[name].append(literal(token))
    for name, values in flags.items():
        if not values:
            raise UserError(f"--{name.replace('_', '-')} needs a value")
    return flags


def apply_objective_flags(losses: list, extra: list[str]) -> list[str]:
    """Each loss spec with the objective parameters given as flags; several values multiply.

    A flag applies to every listed objective that has that parameter; one no listed objective
    has is an error naming the objectives' parameters.
    """
    from ..losses import get_objective
    flags = objective_flags(extra)
    if not flags:
        return losses
    out, used = [], set()
    for spec in losses:
        try:
            objective = get_objective(spec)
        except ValueError as e:
            raise UserError(str(e)) from None
        mine = {k: v for k, v in flags.items() if k in objective.defaults}
        used |= set(mine)
        for combo in itertools.product(*mine.values()):
            try:
                out.append(objective.bind(**dict(zip(mine, combo))).spec)
            except ValueError as e:
                raise UserError(str(e)) from None
    unused = [k for k in flags if k not in used]
    if unused:
        params = sorted({p for spec in losses for p in get_objective(spec).defaults})
        raise UserError(f"unrecognized argument --{unused[0].replace('_', '-')}: neither a flag of this command "
                        f"nor a parameter of {', '.join(map(str, losses))} (their parameters: "
                        f"{', '.join(params) or 'none'}; see --help and 'treemdp losses')")
    return list(dict.fromkeys(out))


def shape_from_data(raw: dict, explicit: set) -> dict:
    """Settings with the tree shape a ``data`` file implies, where no flag set it.

    The depth comes from the sequences' length, the branching from the file's optional
    ``"branching"`` key (never guessed from the largest action); a flag that disagrees with the
    file is an error naming both.
    """
    from ..tree import data_shape
    if not raw.get("data"):
        return raw
    branching, depth = data_shape(raw["data"])
    raw = dict(raw)
    for name, value in (("depth", depth), ("branching", branching)):
        if value is None:
            continue
        if name in explicit and raw.get(name) != value:
            raise UserError(f"--{name} {raw[name]} disagrees with the data file {raw['data']!r}, whose "
                            + ("sequences have length" if name == "depth" else "'branching' is") + f" {value}")
        raw[name] = value
    return raw


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from ``--config FILE`` (if given) overridden by explicit flags; the tree shape
    from ``--data`` where no flag sets it; validated."""
    base = read_config_file(args.config) if getattr(args, "config", None) else None
    raw = values_from_args(args, TrainConfig, base)
    explicit = {k for k in ("depth", "branching") if getattr(args, k, None) is not None or k in (base or {})}
    raw = shape_from_data(raw, explicit)
    if getattr(args, "extra", None):
        (raw["loss"],) = apply_objective_flags([raw.get("loss", TrainConfig.loss)], args.extra)
    if str(raw.get("loss", "")).startswith("<"):
        raise UserError(f"the config names the loss {raw['loss']}, a function defined in a notebook or script; "
                        "give --loss NAME or --loss module:function")
    try:
        return TrainConfig.from_dict(raw).validate()
    except TypeError as e:
        raise UserError(f"bad config: {e}") from None


def default_out(config: TrainConfig) -> Path:
    loss = re.sub(r"^[^(]*/", "", config.loss).replace(".py:", ":")  # a file's objective: its file name
    name = loss.replace("(", "-").replace(")", "").replace(", ", ",").replace(" ", "").replace(":", "-")
    return Path("runs") / f"{name}-beta{config.beta:g}-seed{config.seed}"


def wants_loss_help(losses) -> bool:
    """``--loss help``: list the objectives instead of training."""
    if losses is not None and "help" in ([losses] if isinstance(losses, str) else losses):
        from .losses import print_objectives
        print_objectives()
        return True
    return False


def run_train(args: argparse.Namespace) -> int:
    if wants_loss_help(args.loss):
        return 0
    from ..runs import check_writable, write_run
    from ..training import resolve_dataset, train
    from ..tree import TreeMDP

    config = config_from_args(args)
    dataset = resolve_dataset(config, TreeMDP(config.branching, config.depth))
    out = check_writable(args.out or default_out(config))
    result = train(config, dataset, progress=show_progress(args.progress, args.quiet))
    write_run(result, out, plot=not args.no_plot)
    s = result.summary
    if not args.quiet:
        print(f"{config.loss} beta={config.beta:g} seed={config.seed}: OOD mass after SFT "
              f"{s['sft_ood_mass']:.1%}, peak {s['peak_ood_mass']:.1%} at DAA step {s['peak_ood_step']}, "
              f"final {s['final_ood_mass']:.1%}; chosen {s['final_chosen_prob']:.3f}, rejected "
              f"{s['final_rejected_prob']:.3g}; KL(pi||ref) {s['kl_to_reference']:.3f}; "
              f"{s['train_seconds']:.2f} s -> {out}")
    return 0


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="one run: SFT on the demonstrations, then a direct alignment objective on the preferences",
        description="Train a policy on the tree MDP: SFT (behaviour cloning) on the demonstrations, "
                    "then a direct alignment objective g(beta*h) (DPO, IPO, SLiC or any objective of "
                    "'treemdp losses') on the preferences with the SFT policy frozen as reference. Every "
                    "trajectory probability is computed exactly at every step. Writes config.json, "
                    "data.json, history.csv, metrics.csv, summary.json, policy.pt, reference.pt and "
                    "run.png into --out.",
        epilog="Objective parameters are flags too: treemdp train --loss cdpo --epsilon 0.1 (or --loss "
               "'cdpo(epsilon=0.1)'); 'treemdp losses' lists them. Your own objective: --loss "
               "package.module:function. Data file (--data): {\"demonstrations\": [[0,0,0], ...], "
               "\"preferences\": [{\"chosen\": [1,1,0], \"rejected\": [0,0,0]}]}. Example: treemdp "
               "train --loss ipo --beta 0.5 --seed 3 --out runs/ipo")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/LOSS-betaB-seedS)")
    parser.add_argument("--config", metavar="FILE", help="start from a config.json (flags override it)")
    parser.add_argument("--no-plot", action="store_true", help="skip run.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    add_progress_flag(parser)
    add_config_flags(parser)
    parser.set_defaults(func=run_train)
