"""The lab's experiments behind figures/lab/ (run by ``treemdp reproduce``), settings pinned here.

Six grid folders under ``runs/.../lab/``, each resumable (:func:`treemdp.lab.store.lab_sweep`):

    main      DAA: dpo, ipo, slic x 4 betas x N in {16, 64, 256} x 10 seeds, full batch, hidden 16
    rlhf      RLHF on the same data: 4 betas x 3 N x 10 seeds (rnn reward model, normalised: beta 0.1 ... 3)
    bon       best-of-n under the same reward models: 3 N x 10 seeds, n = 1 ... 4096
    capacity  DAA at beta 0.1, N = 64, hidden 4, 8, 32, 64 (16 is in main) x 10 seeds
    spurious  DAA on the spurious gold, 3 betas, N = 64, 10 seeds
    epoch     DAA with minibatches of 8 pairs, N in {256, 2048}, beta 0.1, 1024 steps, 10 seeds

The settings are pinned (not LabConfig's defaults) so a change of defaults cannot silently change
the committed figures; ``--quick`` runs the same experiments on the 3x3 tree with tiny budgets.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from ..experiments import LAB_BASE as BASE, LAB_FULL as FULL, LAB_QUICK as QUICK, LOSSES, LabPlan
from .config import LabConfig
from .store import grid, lab_sweep

def experiments(plan: LabPlan) -> dict[str, list[LabConfig]]:
    """The configs of every lab grid, by folder name."""
    base = LabConfig(**{**BASE, "tree": plan.tree, "steps": plan.steps, "sft_steps": plan.sft_steps,
                        "rm_steps": plan.rm_steps})
    middle_pairs = plan.pairs[len(plan.pairs) // 2]
    return {
        "main": grid(base, loss=LOSSES, beta=plan.betas, pairs=plan.pairs, seed=plan.seeds),
        "rlhf": grid(base, method=["rlhf"], beta=plan.rlhf_betas, pairs=plan.pairs, seed=plan.seeds),
        "bon": grid(base, method=["bon"], pairs=plan.pairs, seed=plan.seeds),
        "capacity": grid(base, loss=LOSSES, beta=[0.1], pairs=[middle_pairs], hidden_size=plan.hidden, seed=plan.seeds),
        "spurious": grid(base, gold=["spurious"], loss=LOSSES, beta=plan.spurious_betas, pairs=[middle_pairs],
                         seed=plan.seeds),
        "epoch": grid(dataclasses.replace(base, steps=plan.epoch_steps, batch_size=plan.epoch_batch), loss=LOSSES,
                      beta=[0.1], pairs=plan.epoch_pairs, seed=plan.seeds),
    }


def run_lab_reproduce(out, runs, *, quick: bool = False, workers: int | None = None, progress: bool = True) -> list[Path]:
    """Run (or resume) every lab grid into ``runs`` and draw the lab figures into ``out``."""
    import sys
    from .figures import lab_report
    plan = QUICK if quick else FULL
    runs, workers = Path(runs), workers or min(2, os.cpu_count() or 1)
    started = time.perf_counter()
    folders = []
    for name, configs in experiments(plan).items():
        lab_sweep(configs, runs / name, workers=workers, progress=progress)
        folders.append(runs / name)
    trained = time.perf_counter() - started
    made = lab_report(folders, out, bootstrap=200 if quick else 1000, progress=progress)
    if progress:
        print(f"reproduce: lab runs in {trained:.1f} s, {len(made)} lab figures in "
              f"{time.perf_counter() - started - trained:.1f} s -> {out}/", file=sys.stderr)
    return made


__all__ = ["BASE", "FULL", "QUICK", "LabPlan", "experiments", "run_lab_reproduce"]
