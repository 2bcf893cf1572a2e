"""The lab's runs, batched on the one engine: data from the gold reward, SFT, then DAA, RLHF or
best-of-n, every quality measured exactly at every step.

    configs -> batches of one shape (:func:`~treemdp.lab.config.shape_key`); for each batch:
        r* per run; demonstrations ~ softmax(r*/tau) -> SFT (engine.run_phase, once per distinct SFT)
        ref = the SFT policy; pairs ~ ref (or uniform), Bradley-Terry labels (nested over N)
        daa   run_phase(daa_loss(..., schedule=PairSchedule))                  the lab's measurements
        rlhf  run_phase(scorer, bradley_terry_loss) -> r_phi; run_phase(kl_regularised_loss(r_phi, beta))
        bon   the same r_phi; best-of-n for every n, exactly (no training)

Every run's numbers depend on its own config only (its row of a stacked computation), so the same
config gives the same curve in any batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..engine import (Phase, PairSchedule, PhaseRecord, RunContext, bradley_terry_loss, daa_loss,
                      kl_regularised_loss, run_phase, sft_loss, stack_parameters)
from ..losses import get_objective
from ..policies import make_policy
from ..training import context_from_rows
from ..tree import Dataset, TreeMDP
from .bestofn import BestOfN, best_of_n_table
from .config import LabConfig, shape_key
from .data import lab_dataset, sample_demonstrations, sample_pairs
from .gold import GoldReward, make_gold
from .measures import LAB_MEASUREMENTS
from .quality import expected, frontier, frontier_at, win_scores
from .rlhf import make_scorer, ranking_accuracy

#: Columns of a DAA / RLHF curve (one row per logged step).
STEP_COLUMNS = ("step", "epoch", "loss") + LAB_MEASUREMENTS
#: Columns of a best-of-n curve (one row per (proxy, n)).
BON_COLUMNS = ("proxy", "n", "kl_to_reference", "kl_bound", "sqrt_kl", "gold_reward", "gold_gain", "win_rate",
               "win_gain", "proxy_gain")


@dataclass
class LabResult:
    """One lab run.

    Attributes:
        config: its settings.
        summary: peak and final gains, KL, the frontier at the final KL, reward-model accuracy, ...
        curve: tidy DataFrame: one row per logged step (daa, rlhf; :data:`STEP_COLUMNS`) or per
            (proxy, n) (bon; :data:`BON_COLUMNS`).
        frontier: the gold and win-rate frontiers of the run's reference (:func:`~treemdp.lab.quality.frontier`).
        dataset: the demonstrations and pairs.
        gold: the gold reward.
        ref_probs: the reference (SFT) distribution, float64 [T].
        final_probs: the policy at the last step (daa, rlhf), float64 [T]; None for bon.
        reward_model: r_phi [T] (rlhf, bon), else None.
    """

    config: LabConfig
    summary: dict
    curve: pd.DataFrame
    frontier: pd.DataFrame
    dataset: Dataset
    gold: GoldReward
    ref_probs: torch.Tensor
    final_probs: Optional[torch.Tensor] = None
    reward_model: Optional[torch.Tensor] = None
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        c, s = self.config, self.summary
        what = c.method if c.method != "daa" else c.loss
        return (f"LabResult({what} beta={c.beta:g} N={c.pairs} seed={c.seed}: win rate gain peak "
                f"{s['peak_win_gain']:+.3f} at KL {s['peak_win_kl']:.2f}, final {s['final_win_gain']:+.3f} "
                f"at KL {s['final_kl']:.2f})")


def run_lab(configs: Sequence[LabConfig], *, progress: bool = False,
            on_batch: Optional[Callable[[list[int], list[LabResult]], None]] = None,
            max_batch: int = 512) -> list[LabResult]:
    """Run every config, batched by shape on the engine; results in ``configs`` order.

    Args:
        configs: :class:`LabConfig` objects (validated here).
        progress: a tqdm bar over the work.
        on_batch: called with (indices into ``configs``, their results) as each batch finishes
            (the sweep writes run folders here, so an interrupt loses at most one batch).
        max_batch: most runs computed as one stack.
    """
    configs = [c.validate() for c in configs]
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(shape_key(c), []).append(i)
    batches = [idx[k:k + max_batch] for idx in groups.values() for k in range(0, len(idx), max_batch)]
    from tqdm.auto import tqdm
    total = sum(_work(configs[i]) for b in batches for i in b)
    results: list[Optional[LabResult]] = [None] * len(configs)
    with tqdm(total=total, disable=not progress or not total, unit="run-step", unit_scale=True, desc="lab",
              bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]") as bar:
        for batch in batches:
            out = run_batch([configs[i] for i in batch], on_work=bar.update)
            for i, r in zip(batch, out):
                results[i] = r
            if on_batch is not None:
                on_batch(batch, out)
    return results


def _work(c: LabConfig) -> int:
    """Run-steps of one config (for the progress bar)."""
    return c.sft_steps + (c.rm_steps if c.method != "daa" else 0) + (c.steps if c.method != "bon" else 0)


def _quiet_record(name: str, steps: int, ctx: RunContext, measurements=()) -> PhaseRecord:
    """A record of per-step measurements only (no probabilities kept, no OOD peak tracking)."""
    return PhaseRecord(name, steps, ctx, log_every=max(1, steps), history_limit=0, keep_history=False,
                       measurements=list(measurements), track_peak=False)


def _rm_seed(seed: int) -> int:
    """The reward model's initialisation seed, derived from the run's seed (its own stream)."""
    return int(np.random.SeedSequence([int(seed), 3]).generate_state(1)[0])


def _unique(keys: list) -> tuple[list, torch.Tensor]:
    """Distinct keys (first-seen order) and, for each item, the index of its key."""
    distinct = list(dict.fromkeys(keys))
    where = {k: i for i, k in enumerate(distinct)}
    return distinct, torch.tensor([where[k] for k in keys], dtype=torch.long)


def run_batch(configs: Sequence[LabConfig], *, on_work: Optional[Callable[[int], None]] = None) -> list[LabResult]:
    """Run configs that share a :func:`shape_key` as one stacked computation (see module doc)."""
    order = sorted(range(len(configs)), key=lambda i: (configs[i].lr, configs[i].rm_lr))  # lr groups contiguous
    configs = [configs[i].validate() for i in order]
    first = configs[0]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(first.threads)
    try:
        results = _run_sorted(configs, first.mdp, torch.device(first.device), on_work or (lambda n: None))
    finally:
        torch.set_num_threads(previous_threads)
    out: list = [None] * len(configs)
    for position, i in enumerate(order):
        out[i] = results[position]
    return out


def _run_sorted(configs, mdp: TreeMDP, device, on_work) -> list[LabResult]:
    first, R, T = configs[0], len(configs), mdp.n_trajectories
    started = time.perf_counter()
    golds = {key: make_gold(mdp, key[0], seed=key[1]) for key in dict.fromkeys((c.gold, c.gold_seed) for c in configs)}
    gold_of = [golds[(c.gold, c.gold_seed)] for c in configs]

    # SFT once per distinct (seed, demonstrations, learning rate), ordered by learning rate.
    sft_keys, sft_of_run = _unique([(c.seed, c.demos, c.demo_temperature, c.gold, c.gold_seed, c.sft_lr) for c in configs])
    order = sorted(range(len(sft_keys)), key=lambda u: sft_keys[u][-1])
    sft_keys = [sft_keys[u] for u in order]
    sft_of_run = torch.argsort(torch.tensor(order))[sft_of_run]
    demos = [sample_demonstrations(mdp, golds[(k[3], k[4])], k[1], temperature=k[2], seed=k[0]) for k in sft_keys]
    build = lambda seed: make_policy(mdp, first.policy, seed=seed, hidden_size=first.hidden_size, cell=first.cell)  # noqa: E731
    template = build(0).to(device)
    empty = [torch.zeros(0, dtype=torch.long)] * len(sft_keys)
    sft_ctx = context_from_rows(mdp, demos, empty, empty).to(device)
    params = {n: p.to(device) for n, p in stack_parameters([build(k[0]) for k in sft_keys]).items()}
    params = run_phase(template, params, Phase("sft", first.sft_steps, [k[-1] for k in sft_keys], sft_loss(sft_ctx)),
                       first.optimizer, _quiet_record("sft", first.sft_steps, sft_ctx),
                       on_step=lambda n: on_work(n * len(sft_keys)))
    with torch.no_grad():
        sft_logp = template.stacked_log_probs(params)  # [U, T] float32: the frozen references
    sft_probs = sft_logp.double().exp().cpu()
    sft_probs = sft_probs / sft_probs.sum(-1, keepdim=True)

    # Pairs: one nested stream per (SFT, source, label noise); a run with N pairs takes the first N.
    pair_keys, pair_of_run = _unique([(int(sft_of_run[r]), c.pair_source, c.label_temperature) for r, c in enumerate(configs)])
    streams = []
    for p, (u, source, temperature) in enumerate(pair_keys):
        n_max = max(c.pairs for r, c in enumerate(configs) if int(pair_of_run[r]) == p)
        probs = sft_probs[u] if source == "reference" else torch.full((T,), 1.0 / T, dtype=torch.float64)
        streams.append(sample_pairs(probs, gold_of[int((pair_of_run == p).nonzero()[0])], n_max,
                                    temperature=temperature, seed=sft_keys[u][0]))
    chosen = [streams[int(pair_of_run[r])][0][:c.pairs] for r, c in enumerate(configs)]
    rejected = [streams[int(pair_of_run[r])][1][:c.pairs] for r, c in enumerate(configs)]
    demos_of_run = [demos[int(sft_of_run[r])] for r in range(R)]
    ctx = context_from_rows(mdp, demos_of_run, chosen, rejected).to(device)
    ctx.ref_logp = sft_logp[sft_of_run.to(device)]
    ref_probs = sft_probs[sft_of_run]  # [R, T] float64
    ctx.extra.update(lab_extras(gold_of, ref_probs, [c.beta for c in configs]))

    rewards = None
    if first.method in ("rlhf", "bon"):
        rewards = _fit_reward_models(configs, mdp, device, ctx, chosen, rejected, on_work)  # [R, T] float64
        ctx.extra.update(proxy=rewards, proxy_ref=expected(ref_probs, rewards))
    params = {n: p[sft_of_run.to(device)] for n, p in params.items()}
    record, schedule, final_logp = None, None, None
    if first.method == "daa":
        schedule = PairSchedule([c.pairs for c in configs], first.batch_size,
                                [int(np.random.SeedSequence([c.seed, 4]).generate_state(1)[0]) for c in configs],
                                device=device)
        beta = torch.tensor([c.beta for c in configs], dtype=torch.float32, device=device)[:, None]
        loss = daa_loss(ctx, [get_objective(c.loss) for c in configs], beta, schedule=schedule)
    elif first.method == "rlhf":
        beta = torch.tensor([c.beta for c in configs], dtype=torch.float32, device=device)[:, None]
        loss = kl_regularised_loss(ctx, rewards.float().to(device), beta)
    if first.method != "bon":
        record = _quiet_record(first.method, first.steps, ctx, LAB_MEASUREMENTS)
        params = run_phase(template, params, Phase(first.method, first.steps, [c.lr for c in configs], loss),
                           first.optimizer, record, on_step=lambda n: on_work(n * R))
        with torch.no_grad():
            final_logp = template.stacked_log_probs(params).double().cpu()
    elapsed = time.perf_counter() - started

    results = []
    table = record.table() if record is not None else None
    for r, c in enumerate(configs):
        gold = gold_of[r]
        ref_logp = torch.log(ref_probs[r])
        front = pd.concat([frontier(ref_logp, gold.values, kind=k) for k in ("gold", "win")], ignore_index=True)
        dataset = lab_dataset(mdp, demos_of_run[r], chosen[r], rejected[r])
        reward = None if rewards is None else rewards[r]
        if c.method == "bon":
            curve = bon_curve(ref_probs[r], gold, ctx.extra["win_score"][r], reward, c.n)
            final = None
        else:
            curve = step_curve(table, r, c, schedule)
            final = final_logp[r].exp()
        summary = summarize_lab(c, curve, front, ref_probs[r], gold, reward, elapsed / R)
        if record is not None and r in record.first_bad:
            summary["diverged"] = record.first_bad[r]
        results.append(LabResult(c, summary, curve, front, dataset, gold, ref_probs[r], final, reward))
    return results


def lab_extras(golds: Sequence[GoldReward], ref_probs: torch.Tensor, betas: Sequence[float]) -> dict:
    """What the lab's measurements read from ``ctx.extra`` (see :mod:`treemdp.lab.measures`)."""
    gold = torch.stack([g.values for g in golds])  # [R, T]
    win = torch.empty_like(gold)
    for g in dict.fromkeys(id(g) for g in golds):
        rows = torch.tensor([r for r, x in enumerate(golds) if id(x) == g])
        win[rows] = win_scores(ref_probs[rows], golds[int(rows[0])].values)
    return {"gold": gold, "gold_ref": expected(ref_probs, gold), "win_score": win, "ref_probs": ref_probs,
            "feature": torch.stack([g.feature for g in golds]),
            "beta": torch.tensor(list(betas), dtype=torch.float64)}


def _fit_reward_models(configs, mdp, device, ctx, chosen, rejected, on_work) -> torch.Tensor:
    """Bradley-Terry reward models, one per distinct (pairs, rm_lr); r_phi [R, T] float64."""
    first = configs[0]
    keys, rm_of_run = _unique([(c.seed, c.demos, c.demo_temperature, c.gold, c.gold_seed, c.sft_lr, c.pair_source,
                                c.label_temperature, c.pairs, c.rm_lr) for c in configs])
    rows = [int((rm_of_run == v).nonzero()[0]) for v in range(len(keys))]  # a run of each reward model
    build = lambda seed: make_scorer(mdp, first.rm, seed=seed, hidden_size=first.rm_hidden_size, cell=first.cell)  # noqa: E731
    template = build(0).to(device)
    params = {n: p.to(device) for n, p in stack_parameters([build(_rm_seed(configs[r].seed)) for r in rows]).items()}
    rm_ctx = context_from_rows(mdp, [ctx.demonstrations[r, :1].cpu() for r in rows], [chosen[r] for r in rows],
                               [rejected[r] for r in rows]).to(device)
    params = run_phase(template, params, Phase("rm", first.rm_steps, [k[-1] for k in keys], bradley_terry_loss(rm_ctx)),
                       first.optimizer, _quiet_record("rm", first.rm_steps, rm_ctx),
                       on_step=lambda n: on_work(n * len(keys)))
    with torch.no_grad():
        reward = template.stacked_log_probs(params).double().cpu()  # [V, T]
    return reward[rm_of_run]


# ----- tidy tables -------------------------------------------------------------------------------
def step_curve(table: dict, r: int, config: LabConfig, schedule: Optional[PairSchedule]) -> pd.DataFrame:
    """Run r's logged steps: :data:`STEP_COLUMNS`."""
    steps = np.arange(config.steps + 1)
    keep = (steps % config.log_every == 0) | (steps == config.steps)
    epoch = steps / float(schedule.steps_per_epoch[r]) if schedule is not None else np.full(len(steps), np.nan)
    frame = {"step": steps[keep], "epoch": epoch[keep]}
    for name in ("loss",) + LAB_MEASUREMENTS:
        frame[name] = table[name][:, r].numpy()[keep]
    return pd.DataFrame(frame)


def bon_curve(ref_probs: torch.Tensor, gold: GoldReward, win_score: torch.Tensor, reward: torch.Tensor,
              ns: Sequence[int]) -> pd.DataFrame:
    """Best-of-n under the reward model (``proxy = "rm"``) and under r* itself (``"gold"``): :data:`BON_COLUMNS`."""
    gold_ref, proxy_ref = float(expected(ref_probs, gold.values)), float(expected(ref_probs, reward))
    parts = []
    for name, proxy in (("rm", reward), ("gold", gold.values)):
        bon = BestOfN(ref_probs, proxy)
        t = best_of_n_table(ref_probs, proxy, ns, gold=gold.values, win_score=win_score, bon=bon)
        t["proxy_gain"] = [bon.expected(reward, n) - proxy_ref for n in ns]
        t = t.rename(columns={"kl": "kl_to_reference", "gold": "gold_reward"})
        t["gold_gain"] = t["gold_reward"] - gold_ref
        t["win_gain"] = t["win_rate"] - 0.5
        t.insert(0, "proxy", name)
        parts.append(t[list(BON_COLUMNS)])
    return pd.concat(parts, ignore_index=True)


# ----- the summary ---------------------------------------------------------------------------------
def summarize_lab(config: LabConfig, curve: pd.DataFrame, front: pd.DataFrame, ref_probs: torch.Tensor,
                  gold: GoldReward, reward: Optional[torch.Tensor], seconds: float) -> dict:
    """Peak and final gains (win rate and gold), where they happen, and the frontier beside them."""
    rows = curve if config.method != "bon" else curve[curve["proxy"] == "rm"].reset_index(drop=True)
    x = "step" if config.method != "bon" else "n"
    summary = {"method": config.method, "loss": config.loss if config.method == "daa" else "",
               "beta": config.beta if config.method != "bon" else math.nan, "pairs": config.pairs, "seed": config.seed,
               "ref_gold": float(expected(ref_probs, gold.values)),
               "ref_entropy": float(-(ref_probs * torch.log(ref_probs.clamp_min(1e-300))).sum())}
    for quality in ("win", "gold"):
        gain = rows[f"{quality}_gain"].to_numpy()
        peak = int(np.nanargmax(gain)) if np.isfinite(gain).any() else 0
        summary[f"peak_{quality}_gain"] = float(gain[peak])
        summary[f"peak_{quality}_{x}"] = int(rows[x].iloc[peak])
        summary[f"peak_{quality}_kl"] = float(rows["kl_to_reference"].iloc[peak])
        summary[f"final_{quality}_gain"] = float(gain[-1])
        summary[f"{quality}_drop"] = float(gain[peak] - gain[-1])
        if config.method != "bon":
            summary[f"peak_{quality}_epoch"] = float(rows["epoch"].iloc[peak])
        kind = front[front["kind"] == quality]
        summary[f"frontier_{quality}_gain_at_final_kl"] = float(frontier_at(kind, [rows["kl_to_reference"].iloc[-1]],
                                                                            f"{quality}_gain")[0])
    summary["final_kl"] = float(rows["kl_to_reference"].iloc[-1])
    summary["final_proxy_gain"] = float(rows["proxy_gain"].iloc[-1])
    if "ood_mass" in rows:
        summary["final_ood_mass"] = float(rows["ood_mass"].iloc[-1])
        summary["peak_ood_mass"] = float(rows["ood_mass"].max())
    for column in ("spurious_r2", "spurious_r2_ref", "feature_mean"):
        if column in rows:
            summary[f"final_{column}"] = float(rows[column].iloc[-1])
    if reward is not None and len(reward) <= 4096:
        summary["rm_accuracy"] = float(ranking_accuracy(reward[None], gold.values, ref_probs[None])[0])
    summary["seconds"] = round(seconds, 5)
    return summary


__all__ = ["LabResult", "run_lab", "run_batch", "step_curve", "bon_curve", "summarize_lab", "lab_extras",
           "STEP_COLUMNS", "BON_COLUMNS"]
