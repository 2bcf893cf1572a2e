"""R runs of SFT then DAA on the training engine, with policies and data of the caller's making.

The phenomena experiments need what ``train_batch`` does not offer: policies built by hand (a
head with two near-synonym tokens), a reference that is the initial policy (no SFT), one SFT
shared by many DAA runs, a loss of the caller's own (a negative gradient alone), float64
arithmetic, and every step's exact log-probs of every run kept as one tensor. They still go
through :func:`treemdp.engine.run_phase`, the one training loop::

    template, params = sft_stacked(policies, datasets, steps=200, lr=1e-2)   # optional
    run = daa_stacked(template, params, datasets, loss="dpo", beta=0.1, steps=200, lr=1e-2)
    run.logp        # [steps + 1, R, T] float64: DAA step 0 (the reference) .. the last step
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..engine import (Phase, PhaseRecord, RunContext, daa_loss, frozen_reference, run_phase, sft_phase,
                      stack_parameters)
from ..losses import get_objective
from ..policies import TreePolicy
from ..training import run_context
from ..tree import Dataset, TreeMDP


@dataclass
class StackedRun:
    """What :func:`daa_stacked` returns.

    Attributes:
        mdp: the tree.
        ctx: the runs' data and reference (``ctx.ref_logp`` [R, T]).
        logp: exact log-probs at DAA steps 0 .. S, float64 [S + 1, R, T] (step 0 = the reference).
        reference: stacked parameters of the references, ``name -> [R, *shape]``.
        final: stacked parameters after the last DAA step.
        template: a policy of the runs' class (its step interface reads stacked parameters).
    """

    mdp: TreeMDP
    ctx: RunContext
    logp: torch.Tensor
    reference: dict
    final: dict
    template: TreePolicy

    def trajectory(self, rows: torch.Tensor) -> torch.Tensor:
        """log π of one trajectory per run at every step: rows [R] -> [S + 1, R]."""
        return self.logp.gather(2, rows.reshape(1, -1, 1).expand(self.logp.shape[0], -1, 1))[..., 0]


def per_run(value, R: int, what: str) -> list:
    """``value`` for each of R runs: a list of R values as given, or one value repeated."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * R
    if len(values) != R:
        raise ValueError(f"{what}: {len(values)} values for {R} runs")
    return values


def _bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not progress, desc=desc, unit="step", leave=False)


def sft_stacked(policies: Sequence[TreePolicy], datasets: Sequence[Dataset], *, steps: int = 200, lr=1e-2,
                optimizer: str = "adam", progress: bool = False) -> tuple[TreePolicy, dict]:
    """Behaviour cloning of R policies (converted to float64 in place) on their datasets' demonstrations.

    Returns:
        ``(template, params)``: a policy of the runs' class and the trained stacked parameters.
    """
    template = policies[0].double()
    params = stack_parameters([p.double() for p in policies])
    if steps:
        ctx = run_context(template.mdp, datasets)
        record = PhaseRecord("sft", steps, ctx, log_every=steps, history_limit=template.mdp.n_trajectories,
                             keep_history=False, measurements=["ood_mass"])
        with _bar(steps, progress, "SFT") as bar:
            params = sft_phase(template, params, ctx, steps=steps, lrs=per_run(lr, len(policies), "lr"),
                               optimizer=optimizer, record=record, on_step=bar.update)
    return template, params


def daa_stacked(template: TreePolicy, params: dict, datasets: Sequence[Dataset], *, loss="dpo", beta=0.1,
                steps: int = 200, lr=1e-2, optimizer: str = "adam", progress: bool = False,
                loss_fn: Optional[Callable[[RunContext, torch.Tensor], Callable]] = None) -> StackedRun:
    """DAA on R stacked runs from ``params`` (also their frozen references), every step kept.

    Args:
        template, params: from :func:`sft_stacked` (or ``stack_parameters`` of float64 policies).
        datasets: one per run; its preferences are the DAA data.
        loss, beta, lr: one value for every run, or one per run (loss: any objective name).
        loss_fn: instead of ``loss``, ``loss_fn(ctx, beta [R, 1]) -> phase loss(logp, step) -> [R]``.
        progress: a tqdm bar over the steps.
    """
    R = len(datasets)
    ctx = run_context(template.mdp, datasets)
    ctx.ref_logp = frozen_reference(template, params)
    betas = torch.tensor(per_run(beta, R, "beta"), dtype=torch.float64)[:, None]
    phase_loss = (loss_fn(ctx, betas) if loss_fn is not None
                  else daa_loss(ctx, [get_objective(x) for x in per_run(loss, R, "loss")], betas))
    record = PhaseRecord("daa", steps, ctx, log_every=1, history_limit=template.mdp.n_trajectories,
                         measurements=["ood_mass"])
    with _bar(steps, progress, "DAA") as bar:
        final = run_phase(template, params, Phase("daa", steps, per_run(lr, R, "lr"), phase_loss), optimizer,
                          record, on_step=bar.update)
    logp = torch.stack(record.logged)  # [S + 1, R, T]
    return StackedRun(template.mdp, ctx, logp, {n: p.clone() for n, p in params.items()}, final, template)


def repeat_params(params: dict, index: torch.Tensor) -> dict:
    """Rows ``index`` of stacked parameters (one SFT shared by many DAA runs)."""
    return {n: p[index] for n, p in params.items()}
