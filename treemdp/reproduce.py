"""Every toy-MDP figure: the experiments behind them, and ``run_reproduce`` (``treemdp reproduce``).

``reproduce`` runs four sweeps (the paper grid, the sensitivity atlas, the optimiser and the
policy controls) into ``--runs`` (resumable: finished runs are kept), then draws every figure of
:mod:`treemdp.figures` into ``--out`` with ``claims.csv``, the numbers ``figures/README.md`` quotes
(:mod:`treemdp.figure_claims`); then the over-optimization lab's grids
(:mod:`treemdp.lab.experiments`) into ``--runs``/lab and its figures into ``--out``/lab. The settings of
every experiment are pinned in :mod:`treemdp.experiments`, not taken from ``TrainConfig``'s defaults,
so a change of defaults cannot silently change the committed figures.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

from .experiments import BETAS, FULL, LOSSES, PAPER, QUICK, Plan  # noqa: F401  (pinned there)
from .training import TrainConfig

def zoo_objectives() -> list[str]:
    """The objectives of the zoo figure: every registered objective, TRL's loss types one by one
    (``sigmoid`` and ``hinge`` are ``dpo`` and ``slic`` exactly, so they are not repeated), and
    DPO under TRL's other f-divergences. Parameters TRL needs to be meaningful are set: exo_pair
    requires label smoothing > 0; robust with none is DPO, so it gets 0.1."""
    from .losses import F_DIVERGENCES, OBJECTIVES, TRL_LOSS_TYPES
    specs = [name for name in OBJECTIVES if name != "trl"]
    settings = {"exo_pair": ", label_smoothing=0.001", "robust": ", label_smoothing=0.1"}
    specs += [f"trl(loss_type={t}{settings.get(t, '')})" for t in TRL_LOSS_TYPES if t not in ("sigmoid", "hinge")]
    specs += [f"trl(f_divergence_type={f})" for f in F_DIVERGENCES if f != "reverse_kl"]
    return specs


def experiments(plan: Plan) -> dict[str, list[TrainConfig]]:
    """The configs of every sweep ``reproduce`` runs, by results sub-folder."""
    from .sweep import grid
    base = dataclasses.replace(TrainConfig(**PAPER), sft_steps=plan.sft_steps, daa_steps=plan.daa_steps)
    paper = dict(loss=LOSSES, beta=BETAS, seed=plan.seeds)
    return {
        "paper": grid(base, **paper),
        "atlas": grid(base, **paper, hidden_size=plan.atlas_hidden, daa_lr=plan.atlas_lr),
        # The controls; their figures set them beside the Adam/GRU runs of "paper".
        # SGD at the Adam learning rates barely leaves the initialisation; lr 1 gives it a
        # comparable amount of SFT progress (post-SFT OOD mass < 1%).
        "optimizers": (grid(base, **paper, optimizer=("rmsprop",))
                       + grid(dataclasses.replace(base, optimizer="sgd", sft_lr=1.0, daa_lr=1.0), **paper)),
        # The tabular policy needs a larger SFT step to fit the demonstrations in the same steps.
        "policies": grid(dataclasses.replace(base, policy="tabular", sft_lr=3e-2), **paper),
        # The OOD map of every objective (the quick plan: two seeds).
        "zoo": grid(base, loss=zoo_objectives(), beta=BETAS, seed=plan.seeds if plan is FULL else plan.seeds[:2]),
    }


def _names(configs: list[TrainConfig], extra: tuple[str, ...]) -> list[str]:
    from .sweep import format_setting
    return [",".join(f"{k}={format_setting(getattr(c, k))}" for k in ("loss", "beta", "seed") + extra).replace(" ", "")
            for c in configs]


def reproduce_jobs(plan: Plan, runs: Path) -> list:
    """One :class:`treemdp.sweep.Job` per experiment folder under ``runs``."""
    from .sweep import Job
    extras = {"paper": (), "atlas": ("hidden_size", "daa_lr"), "optimizers": ("optimizer",),
              "policies": ("policy",), "zoo": ()}
    return [Job(configs, runs / name, _names(configs, extras[name]), light=(name != "paper"), plot=False,
                replace_changed=True) for name, configs in experiments(plan).items()]


def run_reproduce(out: str | Path = "figures", *, runs: str | Path | None = None, quick: bool = False,
                  workers: int | None = None, fresh: bool = False, progress: bool = False) -> list[Path]:
    """Run (or resume) every sweep, then draw every figure. Returns the PNG paths."""
    from .runs import check_writable
    from .sweep import sweep_many
    plan = QUICK if quick else FULL
    out = check_writable(out)
    runs = Path(runs) if runs is not None else Path("runs") / ("reproduce-quick" if quick else "reproduce")
    check_writable(runs)
    if fresh and runs.exists():
        shutil.rmtree(runs)
    jobs = reproduce_jobs(plan, runs)
    workers = workers or min(2, os.cpu_count() or 1)
    started = time.perf_counter()
    sweep_many(jobs, workers=workers, progress=progress, desc="reproduce: runs")
    trained = time.perf_counter() - started

    paper, atlas = runs / "paper", runs / "atlas"
    drawings = [("figure_tree", (out / "fig06_tree_mdp",), {}),
                ("figure_mass_summary", (paper, out / "fig07_mass_summary"), {})]
    number = 9
    for loss in LOSSES:
        for beta in BETAS:
            drawings.append(("figure_trajectories", (paper, out / f"fig{number:02d}_{loss}_beta{beta:g}"),
                             dict(loss=loss, beta=beta, seed=plan.seeds[0], number=number)))
            number += 1
    drawings += [("figure_dpo_seeds", (paper, out / "fig18_dpo_seeds"), dict(beta=0.1, seeds=plan.dpo_seeds)),
                 ("figure_atlas", (atlas, out / "atlas_peak_ood"), dict(metric="peak_ood_mass")),
                 ("figure_atlas", (atlas, out / "atlas_final_ood"), dict(metric="final_ood_mass")),
                 ("figure_optimizers", ([paper, runs / "optimizers"], out / "optimizers"), {}),
                 ("figure_tabular", ([paper, runs / "policies"], out / "tabular_vs_gru"), {}),
                 ("figure_zoo", (runs / "zoo", out / "zoo_ood_map"), {})]
    made = [_draw_one(*drawing) for drawing in drawings]  # a process pool measured no faster here
    from .figure_claims import write_paper_claims  # the numbers figures/README.md quotes (check-figures)
    write_paper_claims(runs, out / "claims.csv")
    # The neighbouring results (displacement, squeezing, IPO's argument, theory, explain): their own
    # small experiments, plus the paper sweep above; settings pinned in treemdp.experiments.
    from .phenomena.figures import draw_all as draw_phenomena
    made += draw_phenomena(paper, out, quick=quick, progress=progress)
    from .lab.experiments import run_lab_reproduce  # the over-optimization lab: figures/lab/
    made += run_lab_reproduce(out / "lab", runs / "lab", quick=quick, workers=workers, progress=progress)
    if progress:
        total = time.perf_counter() - started
        n_runs = sum(len(job.configs) for job in jobs)
        print(f"reproduce: {n_runs} runs in {trained:.1f} s, {len(made)} figures; {total:.1f} s in all "
              f"-> {out}/ (runs in {runs}/)", file=sys.stderr)
    return made


def _draw_one(name: str, args: tuple, kwargs: dict) -> Path:
    from . import figures
    return getattr(figures, name)(*args, **kwargs)
