"""Unseen answers (Xu et al. 2024, "Is DPO Superior to PPO for LLM Alignment?", §4).

DPO's optima are every policy with the right margins on the pairs (the null space of
:mod:`treemdp.theory`), so they include policies that put *more* probability than the reference
on answers no preference mentions ("unseen": neither chosen nor rejected in any pair). Xu et al.
argue that KL-regularised RLHF does not, because it has one optimum per reward model r_φ fit on the
same pairs,

    π_RLHF = argmax_π E_π[r_φ] − β KL(π‖ref),     π_RLHF(y) = ref(y) exp(r_φ(y)/β) / Z,   Z = E_ref[exp(r_φ/β)]

(:func:`rlhf_optimum`), so an unseen answer y rises (π/ref = exp(r_φ(y)/β)/Z > 1) exactly when
r_φ(y) > β log Z: whether RLHF raises unseen answers is a property of the reward model's
extrapolation, not of RLHF. If r_φ is 0 on every unseen answer, every unseen answer gets π/ref = 1/Z,
and Z ≥ exp(E_ref[r_φ]/β) ≥ 1 whenever E_ref[r_φ] ≥ 0 (Jensen): none rises.

:func:`unseen_experiment` measures this on the paper's tree and data (one pair), from the SFT
references of the paper's GRU DPO runs, with three Bradley-Terry reward models,

    per-answer      one free r(y) per answer, mean −log σ(r(y_w) − r(y_l)) + λ‖r‖², exact
                    (:func:`fit_tabular_reward`): 0 on unseen answers
    lab tabular     the lab's per-(state, action) scorer, r(y) = Σ_t r(s_t, a_t) (:class:`treemdp.lab.rlhf.TabularScorer`):
                    an unseen answer sharing a prefix with a pair shares those steps' rewards
    GRU             the lab's GRU scorer (:class:`treemdp.lab.rlhf.RNNScorer`): shares parameters
                    across states, so it extrapolates to unseen answers

the last two fit by ``engine.bradley_terry_loss`` with the lab's own fit
(:func:`treemdp.lab.runner.fit_reward_models`, :func:`lab_rewards`); for each, the exact optimum
above; and for the GRU reward model also the GRU policy trained from ref on the engine by
``engine.kl_regularised_loss`` = −(E_π[r_φ] − β KL(π‖ref)), exact over every answer (the lab's
policy phase, :func:`rlhf_on_engine`), beside DPO with the GRU and tabular policies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import pandas as pd
import torch

from ..engine import torch_threads
from ..exact import trajectory_log_probs
from ..tree import Dataset, TreeMDP, paper_dataset

if TYPE_CHECKING:
    from ..lab.config import LabConfig


def unseen_mask(mdp: TreeMDP, dataset: Dataset) -> torch.Tensor:
    """Bool [T]: the answers no preference mentions (as chosen or rejected)."""
    mask = torch.ones(mdp.n_trajectories, dtype=torch.bool)
    if dataset.preferences:
        mask[mdp.trajectory_index(dataset.chosen())] = False
        mask[mdp.trajectory_index(dataset.rejected())] = False
    return mask


def fit_tabular_reward(mdp: TreeMDP, dataset: Dataset, *, weight_decay: float = 1e-2) -> torch.Tensor:
    """A per-answer reward r_φ [T] minimising mean_i −log σ(r(y_w,i) − r(y_l,i)) + λ‖r‖² (convex, exact).

    Answers no pair mentions get exactly 0 (their gradient is the decay alone). With λ > 0 the
    optimum is finite even for deterministic preferences (Bradley-Terry alone would need an
    infinite gap: IPO's argument). Solved by Newton's method on the mentioned answers.
    """
    chosen, rejected = mdp.trajectory_index(dataset.chosen()), mdp.trajectory_index(dataset.rejected())
    reward = torch.zeros(mdp.n_trajectories, dtype=torch.float64, requires_grad=True)

    def objective(r):
        margin = r[chosen] - r[rejected]
        return torch.nn.functional.softplus(-margin).mean() + weight_decay * (r * r).sum()

    for _ in range(50):  # Newton: the objective is smooth and strongly convex
        grad = torch.autograd.grad(objective(reward), reward, create_graph=True)[0]
        hessian = torch.stack([torch.autograd.grad(grad[i], reward, retain_graph=True)[0]
                               for i in range(mdp.n_trajectories)])
        with torch.no_grad():
            reward -= torch.linalg.solve(hessian, grad)
        if float(grad.detach().abs().max()) < 1e-12:
            break
    return reward.detach()


def rlhf_optimum(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """log π_RLHF = log_softmax(log ref + r_φ/β): the maximiser of E_π[r_φ] − β KL(π‖ref), [T]."""
    return torch.log_softmax(ref_logp.double() + reward.double() / beta, dim=-1)


def unseen_ratios(logp: torch.Tensor, ref_logp: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """π(y)/ref(y) of every unseen answer, [n_unseen]."""
    return (logp.double() - ref_logp.double())[unseen].exp()


def lab_rewards(mdp: TreeMDP, dataset: Dataset, kind: str, seeds: Sequence[int], *,
                lab: Optional["LabConfig"] = None) -> torch.Tensor:
    """r_φ [len(seeds), T]: the lab's reward model ``kind`` (``"rnn"``: the GRU scorer; ``"tabular"``: one
    reward per (state, action)) fit on ``dataset``'s pairs by ``engine.bradley_terry_loss``, one per seed.

    The fit is the lab's own (:func:`treemdp.lab.runner.fit_reward_models`), at ``lab``'s reward-model
    settings (default :class:`~treemdp.lab.config.LabConfig`: hidden size 16, Adam lr 1e-2, 300 full-batch
    steps), initialised from the seed as a lab run with that seed initialises its reward model.
    """
    from ..lab.config import LabConfig
    from ..lab.runner import rm_seed, fit_reward_models
    lab = lab or LabConfig()
    chosen, rejected = mdp.trajectory_index(dataset.chosen()), mdp.trajectory_index(dataset.rejected())
    n = len(seeds)
    with torch_threads(1):
        return fit_reward_models(mdp, kind, [chosen] * n, [rejected] * n, seeds=[rm_seed(s) for s in seeds],
                                 lrs=[lab.rm_lr] * n, steps=lab.rm_steps, optimizer=lab.optimizer,
                                 hidden_size=lab.rm_hidden_size, cell=lab.cell)


def rlhf_on_engine(mdp: TreeMDP, dataset: Dataset, policy, ref_params: dict, reward: torch.Tensor,
                   betas: Sequence[float], *, steps: int, lr: float, optimizer: str = "adam"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """R stacked policies trained from their references by ``engine.kl_regularised_loss`` (exact RLHF).

    Each run r maximises E_π[r_φ,r] − β_r KL(π‖ref_r), ref_r = ``policy`` at row r of ``ref_params``
    (where it starts); the lab's policy phase (:func:`treemdp.lab.runner.policy_phase`). Returns
    (log ref, log π at the end), both [R, T] float64.
    """
    from ..engine import kl_regularised_loss
    from ..lab.runner import policy_phase
    from ..training import context_from_rows
    R = len(betas)
    chosen, rejected = mdp.trajectory_index(dataset.chosen()), mdp.trajectory_index(dataset.rejected())
    ctx = context_from_rows(mdp, [torch.as_tensor(mdp.trajectory_index(dataset.demonstrations))] * R,
                            [chosen] * R, [rejected] * R)
    with torch_threads(1):
        with torch.no_grad():
            ctx.ref_logp = policy.stacked_log_probs(ref_params)
        loss = kl_regularised_loss(ctx, reward.float(), torch.tensor([float(b) for b in betas])[:, None])
        _, final = policy_phase(policy, ref_params, ctx, loss, name="rlhf", steps=steps, lrs=[lr] * R,
                                optimizer=optimizer)
    return ctx.ref_logp.double(), final


#: The methods of :func:`unseen_experiment`, in its row order.
METHODS = ("DPO, GRU", "DPO, tabular", "RLHF optimum, per-answer r_φ", "RLHF optimum, lab tabular r_φ",
           "RLHF optimum, GRU r_φ", "RLHF on the engine, GRU r_φ")


def unseen_experiment(*, seeds: Sequence[int] = range(10), betas: Sequence[float] = (0.01, 0.1, 0.5),
                      weight_decay: float = 1e-2, daa_steps: int = 1000, rlhf_steps: Optional[int] = None,
                      rlhf_lr: Optional[float] = None, progress: bool = False) -> pd.DataFrame:
    """DPO (GRU and tabular policies, the paper's settings) vs RLHF on the paper's data (:data:`METHODS`).

    RLHF starts from the GRU DPO runs' references (the SFT policies, one per seed):

        RLHF optimum, per-answer r_φ     rlhf_optimum with :func:`fit_tabular_reward` (exact, λ = weight_decay)
        RLHF optimum, lab tabular r_φ    rlhf_optimum with the lab's per-(state, action) scorer (:func:`lab_rewards`)
        RLHF optimum, GRU r_φ            rlhf_optimum with the lab's GRU scorer, one per seed
        RLHF on the engine, GRU r_φ      the GRU policy trained from ref by engine.kl_regularised_loss on that
                                         reward (:func:`rlhf_on_engine`; ``rlhf_steps`` default ``daa_steps``,
                                         ``rlhf_lr`` default the lab's lr, 1e-2; Adam)

    One row per (method, beta, seed): the largest π/ref over the unseen answers at the end
    (``max_ratio``), which answer, how many unseen answers rose above their reference, and the
    mass they hold before and after.
    """
    from ..lab.config import LabConfig
    from ..engine import stack_parameters
    from ..experiments import PAPER
    from ..training import TrainConfig, train_batch
    mdp, data = TreeMDP(), paper_dataset()
    seeds, betas = [int(s) for s in seeds], [float(b) for b in betas]
    unseen = unseen_mask(mdp, data)
    names = mdp.trajectory_names()
    lab = LabConfig()
    rlhf_steps = daa_steps if rlhf_steps is None else rlhf_steps
    rlhf_lr = lab.lr if rlhf_lr is None else rlhf_lr
    per_answer = fit_tabular_reward(mdp, data, weight_decay=weight_decay)
    scorers = {kind: dict(zip(seeds, lab_rewards(mdp, data, kind, seeds, lab=lab))) for kind in ("tabular", "rnn")}
    base = TrainConfig(**{**PAPER, "daa_steps": daa_steps, "log_every": daa_steps})
    arms = {"DPO, GRU": base, "DPO, tabular": TrainConfig(**{**base.to_dict(), "policy": "tabular", "sft_lr": 3e-2})}
    rows = []

    def add(method, config, policy_logp, ref):
        ratios = unseen_ratios(policy_logp, ref, unseen)
        top = int(ratios.argmax())
        rows.append({"method": method, "beta": config.beta, "seed": config.seed,
                     "max_ratio": float(ratios.max()), "raised": int((ratios > 1 + 1e-9).sum()),
                     "top_unseen": names[int(unseen.nonzero()[top])],
                     "unseen_mass_ref": float(ref.exp()[unseen].sum()),
                     "unseen_mass": float(policy_logp.exp()[unseen].sum())})

    for method, arm in arms.items():
        configs = [TrainConfig(**{**arm.to_dict(), "loss": "dpo", "beta": b, "seed": s}) for b in betas for s in seeds]
        results = train_batch(configs, keep_history=False)
        with torch.no_grad():
            refs = [trajectory_log_probs(result.reference).double() for result in results]
            for config, result, ref in zip(configs, results, refs):
                add(method, config, trajectory_log_probs(result.policy).double(), ref)
        if method != "DPO, GRU":
            continue
        # RLHF from the same references: the closed forms, then the GRU policy on the engine (one stack)
        for config, ref in zip(configs, refs):
            add("RLHF optimum, per-answer r_φ", config, rlhf_optimum(ref, per_answer, config.beta), ref)
            add("RLHF optimum, lab tabular r_φ", config,
                rlhf_optimum(ref, scorers["tabular"][config.seed], config.beta), ref)
            add("RLHF optimum, GRU r_φ", config, rlhf_optimum(ref, scorers["rnn"][config.seed], config.beta), ref)
        references = [result.reference for result in results]
        ref_stack, final = rlhf_on_engine(mdp, data, references[0], stack_parameters(references),
                                          torch.stack([scorers["rnn"][c.seed] for c in configs]),
                                          [c.beta for c in configs], steps=rlhf_steps, lr=rlhf_lr,
                                          optimizer=lab.optimizer)
        for config, ref, logp in zip(configs, ref_stack, final):
            add("RLHF on the engine, GRU r_φ", config, logp, ref)
    order = {m: i for i, m in enumerate(METHODS)}
    frame = pd.DataFrame(rows)
    return frame.sort_values("method", key=lambda m: m.map(order), kind="stable").reset_index(drop=True)


__all__ = ["unseen_mask", "fit_tabular_reward", "rlhf_optimum", "unseen_ratios", "lab_rewards", "rlhf_on_engine",
           "METHODS", "unseen_experiment"]
