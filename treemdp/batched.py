"""Many toy runs as one computation: stacked per-run weights, batched cells, per-run optimisers.

:func:`train_batch` runs R configurations that share a *shape* (tree, policy class, cell, hidden
size, optimiser, step counts, logging) together; they may differ in ``loss``, ``beta``, ``seed``,
``sft_lr`` and ``daa_lr``. Each parameter is stacked over runs, ``W`` -> [R, *shape], and every
step does for all runs at once what :func:`treemdp.training.train` does for one:

    logp = enumerate(W)                     # [R, T], exact, level by level (prefix sharing)
    loss = per-run SFT NLL or g(beta * h)   # [R]; runs never mix: d loss_r / d W_s = 0 for s != r
    W    = optimiser step, lr per run       # torch's fused Adam / SGD kernels, RMSprop by hand

The recurrent cells are written out with batched matrix products (``baddbmm``), following
PyTorch's GRUCell/LSTMCell/RNNCell equations, and each run's initial weights come from
:func:`treemdp.policies.make_policy` with its own seed, so a run gives the same numbers (to float
tolerance) alone through ``train()`` or inside a batch; ``tests/test_sweep.py`` checks it. Runs
with the same seed and SFT lr share one SFT phase (it does not depend on the loss, beta or DAA lr).

The result for each run is an ordinary :class:`~treemdp.training.RunResult` (history, metrics,
summary built by :func:`treemdp.training.summarize`, policy and reference modules), so
:func:`treemdp.runs.write_run` writes it like any other run.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .exact import in_distribution_mask
from .losses import get_g
from .policies import make_policy
from .training import RunResult, TrainConfig, TrainingDiverged, resolve_dataset, summarize
from .tree import Dataset, TreeMDP

#: Fields that may differ between the runs of one batch; every other field is part of the shape.
PER_RUN_FIELDS = ("loss", "beta", "seed", "sft_lr", "daa_lr")

#: Largest tree the batched engine handles (it keeps every step's [R, T] log-probs).
MAX_BATCHED_TRAJECTORIES = 4096

#: torch.optim defaults (Adam betas/eps, RMSprop alpha/eps), spelled out because we re-implement them.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
RMSPROP_ALPHA, RMSPROP_EPS = 0.99, 1e-8


def shape_key(config: TrainConfig) -> tuple:
    """The settings a batch must share: every field except :data:`PER_RUN_FIELDS`."""
    fields = config.to_dict()
    return tuple(sorted((k, v) for k, v in fields.items() if k not in PER_RUN_FIELDS))


def can_batch(config: TrainConfig) -> bool:
    """Whether :func:`train_batch` handles this configuration (else use ``train()``)."""
    return (config.branching ** config.depth <= min(MAX_BATCHED_TRAJECTORIES, config.history_limit)
            and config.optimizer in OPTIMIZER_STEPS)


# ----- stacked parameters ----------------------------------------------------------------------
#: Weight matrices kept transposed ([R, in, out]) in the stack, so x @ W needs no transpose and
#: autograd hands back contiguous gradients for the fused optimiser kernels.
TRANSPOSED = ("cell.weight_ih", "cell.weight_hh", "head.weight")


def _stack(policies: Sequence[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """name -> [R, *shape]: run r's parameter in row r (each a contiguous tensor)."""
    names = [name for name, _ in policies[0].named_parameters()]
    per_run = [dict(p.named_parameters()) for p in policies]
    stacked = {name: torch.stack([run[name].detach() for run in per_run]) for name in names}
    return {name: p.transpose(1, 2).contiguous() if name in TRANSPOSED else p for name, p in stacked.items()}


def _load(policy: torch.nn.Module, params: dict[str, torch.Tensor], r: int) -> torch.nn.Module:
    """Copy row r of stacked ``params`` into ``policy``'s parameters."""
    with torch.no_grad():
        for name, p in policy.named_parameters():
            row = params[name][r]
            p.copy_(row.T if name in TRANSPOSED else row)
    return policy.requires_grad_(False).eval()


# ----- batched enumeration ---------------------------------------------------------------------
def _gru(gi, gh, h):
    """PyTorch's GRUCell on pre-computed input/hidden gates (r, z, n order): h' = (h - n) z + n."""
    H = h.shape[-1]
    rz = torch.sigmoid(gi[..., :2 * H] + gh[..., :2 * H])  # reset and update gates together
    n = torch.tanh(gi[..., 2 * H:] + rz[..., :H] * gh[..., 2 * H:])
    return (h - n) * rz[..., H:] + n


def _lstm(gi, gh, c):
    """PyTorch's LSTMCell (i, f, g, o order); returns (h, c)."""
    i, f, g, o = (gi + gh).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _rnn_log_probs(w: dict[str, torch.Tensor], mdp: TreeMDP, cell: str) -> torch.Tensor:
    """Exact trajectory log-probs of R stacked RNN policies: [R, T], lexicographic order.

    Same walk as :func:`treemdp.exact.trajectory_log_probs`: at depth t the state of all b**t
    nodes [R, b**t, H]; the hidden-side gates are computed once per node and shared by its b
    children, the input-side gates once per action token (a table [R, b+1, G*H]), and the head
    once for the nodes of every level together. Weight matrices arrive transposed ([R, in, out],
    see :data:`TRANSPOSED`) so their gradients come out contiguous.
    """
    b = mdp.branching
    weight_hh = w["cell.weight_hh"]  # [R, H, G*H]
    bias_hh = w["cell.bias_hh"][:, None, None, :]  # [R, 1, 1, G*H]
    gi_table = torch.baddbmm(w["cell.bias_ih"][:, None, :], w["embed.weight"],
                             w["cell.weight_ih"])  # [R, b+1, G*H]; token b is BOS
    R, H = weight_hh.shape[0], weight_hh.shape[1]

    def step(gi, gh, h, c):  # gi [R, 1, b|1, G*H]; gh [R, N, 1, G*H]; h, c [R, N, H] -> [R, N*b, H]
        if cell == "gru":
            return _gru(gi, gh, h[:, :, None, :]).reshape(R, -1, H), None
        if cell == "lstm":
            new_h, new_c = _lstm(gi, gh, c[:, :, None, :])
            return new_h.reshape(R, -1, H), new_c.reshape(R, -1, H)
        return torch.tanh(gi + gh).reshape(R, -1, H), None  # rnn (tanh)

    # The root s1: the cell reads BOS from the zero state, whose hidden-side gates are the bias.
    zeros = weight_hh.new_zeros(R, 1, H)
    h, c = step(gi_table[:, None, b:b + 1, :], bias_hh, zeros, zeros)  # [R, 1, H]
    children_gi = gi_table[:, None, :b, :]  # [R, 1, b, G*H]: one row per action token
    levels = [h]
    for t in range(1, mdp.depth):
        gh = torch.baddbmm(w["cell.bias_hh"][:, None, :], h, weight_hh)[:, :, None, :]  # [R, N, 1, G*H]
        h, c = step(children_gi, gh, h, c)
        levels.append(h)
    every_node = torch.cat(levels, dim=1) if len(levels) > 1 else h  # [R, n_states, H], BFS order
    step_logp = torch.log_softmax(torch.baddbmm(w["head.bias"][:, None, :], every_node, w["head.weight"]),
                                  dim=-1)  # [R, n_states, b]
    logp = weight_hh.new_zeros(R, 1)
    for t in range(mdp.depth):
        start, stop = int(mdp.level_start[t]), int(mdp.level_start[t + 1])
        logp = (logp[:, :, None] + step_logp[:, start:stop]).reshape(R, -1)  # child j*b + k of node j
    return logp


def _tabular_log_probs(w: dict[str, torch.Tensor], mdp: TreeMDP) -> torch.Tensor:
    """Exact trajectory log-probs of R stacked tabular policies: [R, T]."""
    logits = w["logits"]  # [R, n_states, b]
    R = logits.shape[0]
    logp = logits.new_zeros(R, 1)
    for t in range(mdp.depth):
        nodes = torch.as_tensor(mdp.nodes_at_depth(t), device=logits.device)
        logp = (logp[:, :, None] + torch.log_softmax(logits[:, nodes], dim=-1)).reshape(R, -1)
    return logp


# ----- per-run optimisers (torch.optim's update rules) ------------------------------------------
# Each optimiser updates lists of stacked parameters [R, ...] in place. Runs may have different
# learning rates: rows are grouped into contiguous segments of equal lr (the caller orders runs
# so that segments are few), and each segment is one call of PyTorch's fused kernel, which is
# what torch.optim.Adam(fused=True) / SGD(fused=True) run, so the update rule is torch.optim's own.
def _segments(lrs: Sequence[float]) -> list[tuple[int, int, float]]:
    """Contiguous runs of equal learning rate: (start, stop, lr)."""
    out, start = [], 0
    for i in range(1, len(lrs) + 1):
        if i == len(lrs) or lrs[i] != lrs[start]:
            out.append((start, i, float(lrs[start])))
            start = i
    return out


class _Adam:
    def __init__(self, params, lrs):
        self.segments = _segments(lrs)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = torch.zeros((), dtype=torch.float32, device=params[0].device)  # fused kernels want it beside the weights

    def step(self, params, grads):
        beta1, beta2 = ADAM_BETAS
        self.t += 1
        for a, b, lr in self.segments:
            cut = lambda ts: [x[a:b] for x in ts]  # noqa: E731
            torch._fused_adam_(cut(params), cut(grads), cut(self.m), cut(self.v), [], [self.t] * len(params),
                               lr=lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=ADAM_EPS,
                               amsgrad=False, maximize=False)


class _RMSprop:
    def __init__(self, params, lrs):
        shape = lambda p: (len(lrs),) + (1,) * (p.dim() - 1)  # noqa: E731
        self.lr = [torch.tensor(lrs, dtype=p.dtype, device=p.device).reshape(shape(p)) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, params, grads):
        for p, g, v, lr in zip(params, grads, self.v, self.lr):
            v.mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
            p.sub_(lr * (g / v.sqrt().add_(RMSPROP_EPS)))


class _SGD:
    def __init__(self, params, lrs):
        self.segments = _segments(lrs)

    def step(self, params, grads):
        for a, b, lr in self.segments:
            with torch.no_grad():
                torch._foreach_add_([p[a:b] for p in params], [g[a:b] for g in grads], alpha=-lr)


OPTIMIZER_STEPS = {"adam": _Adam, "rmsprop": _RMSprop, "sgd": _SGD}


# ----- the batched run --------------------------------------------------------------------------
def train_batch(configs: Sequence[TrainConfig], dataset: Optional[Dataset] = None, *,
                on_step: Optional[Callable[[int], None]] = None,
                ) -> list[RunResult | TrainingDiverged]:
    """Train every configuration in ``configs`` as one batched computation.

    Args:
        configs: runs sharing :func:`shape_key`; they may differ in loss, beta, seed and the two
            learning rates.
        dataset: as for ``train()`` (default: ``config.data`` or the paper's).
        on_step: called with the number of optimisation steps done since the last call (for a
            progress bar); the batch does ``sft_steps + daa_steps`` steps in all.

    Returns:
        One item per config, in order: a :class:`RunResult` equal (to float tolerance) to what
        ``train(config)`` returns, or the :class:`TrainingDiverged` error ``train`` would raise.
    """
    configs = [c.validate() for c in configs]
    if not configs:
        return []
    first = configs[0]
    if any(shape_key(c) != shape_key(first) for c in configs):
        raise ValueError("train_batch needs configs that differ only in " + ", ".join(PER_RUN_FIELDS))
    if not can_batch(first):
        raise ValueError(f"the batched engine does not handle this configuration ({first.policy}, "
                         f"{first.branching}x{first.depth}, {first.optimizer}); use train()")
    mdp = TreeMDP(first.branching, first.depth)
    dataset = resolve_dataset(first, mdp, dataset)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(first.threads)
    try:
        return _train_batch(configs, mdp, dataset, on_step)
    finally:
        torch.set_num_threads(previous_threads)


def _train_batch(configs, mdp, dataset, on_step):
    # Order the runs by learning rates so equal-lr rows are contiguous (few optimiser calls);
    # results go back in the caller's order at the end.
    order = sorted(range(len(configs)), key=lambda i: (configs[i].sft_lr, configs[i].daa_lr))
    configs = [configs[i] for i in order]
    first = configs[0]
    device = torch.device(first.device)
    R = len(configs)
    # Runs with the same seed and SFT lr share their whole SFT phase (the loss, beta and DAA lr
    # only act later): train each distinct SFT once, then copy it into every run that uses it.
    sft_keys = list(dict.fromkeys((c.sft_lr, c.seed) for c in configs))  # sorted by sft_lr already
    sft_of_run = torch.tensor([sft_keys.index((c.sft_lr, c.seed)) for c in configs])
    sft_configs = [configs[int((sft_of_run == u).nonzero()[0])] for u in range(len(sft_keys))]
    make = lambda c: make_policy(mdp, c.policy, seed=c.seed, hidden_size=c.hidden_size, cell=c.cell)  # noqa: E731
    params = {name: p.to(device) for name, p in _stack([make(c) for c in sft_configs]).items()}  # [U, ...]
    names = list(params)

    def log_probs(leaves):
        w = dict(zip(names, leaves))
        return _rnn_log_probs(w, mdp, first.cell) if first.policy == "rnn" else _tabular_log_probs(w, mdp)

    in_dist = in_distribution_mask(mdp, dataset)
    demo_index = mdp.trajectory_index(dataset.demonstrations).to(device)
    has_prefs = bool(dataset.preferences)
    chosen = mdp.trajectory_index(dataset.chosen()) if has_prefs else torch.zeros(0, dtype=torch.long)
    rejected = mdp.trajectory_index(dataset.rejected()) if has_prefs else torch.zeros(0, dtype=torch.long)
    chosen_d, rejected_d = chosen.to(device), rejected.to(device)
    beta = torch.tensor([c.beta for c in configs], dtype=torch.float32, device=device)[:, None]
    loss_names = sorted({c.loss for c in configs})
    loss_of_run = torch.tensor([loss_names.index(c.loss) for c in configs], device=device)[:, None]

    n_sft, n_daa = first.sft_steps, first.daa_steps
    T = mdp.n_trajectories
    sft_logp, sft_loss = torch.empty(n_sft + 1, len(sft_keys), T), torch.empty(n_sft + 1, len(sft_keys))
    n_daa_records = n_daa + 1 if n_daa > 0 else 0
    daa_logp, daa_loss = torch.empty(n_daa_records, R, T), torch.empty(n_daa_records, R)
    started = time.perf_counter()

    def run_phase(n_steps, lrs, loss_fn, record_logp, record_loss):
        weights = [params[name] for name in names]
        optimizer = OPTIMIZER_STEPS[first.optimizer](weights, lrs)
        pending = 0
        for step in range(n_steps + 1):
            leaves = [w.detach().requires_grad_(True) for w in weights]  # share storage with weights
            logp = log_probs(leaves)  # [R, T]
            loss = loss_fn(logp)  # [R]
            record_logp[step] = logp.detach()
            record_loss[step] = loss.detach()
            if step == n_steps:
                break
            grads = torch.autograd.grad(loss.sum(), leaves)  # run r's loss reaches only row r
            with torch.no_grad():
                optimizer.step(weights, [g.contiguous() for g in grads])  # no-op copies
            pending += 1
            if on_step is not None and pending >= 25:
                on_step(pending)
                pending = 0
        if on_step is not None and pending:
            on_step(pending)

    def sft(logp):  # behaviour cloning, as training.sft_loss, per run
        return -logp[:, demo_index].mean(-1)

    def daa(logp):  # paper eq. 4 per run, mean over the preferences, as training.daa_loss
        pi_w, pi_l = logp[:, chosen_d], logp[:, rejected_d]  # [R, n_prefs]
        h = (pi_w - ref_logp[:, chosen_d]) - (pi_l - ref_logp[:, rejected_d])
        x = beta * h
        out = get_g(loss_names[0])(x)
        for k, name in enumerate(loss_names[1:], start=1):
            out = torch.where(loss_of_run == k, get_g(name)(x), out)
        return out.mean(-1)

    run_phase(n_sft, [k[0] for k in sft_keys], sft, sft_logp, sft_loss)
    params = {name: p[sft_of_run.to(device)].contiguous() for name, p in params.items()}  # [U] -> [R]
    reference = {name: p.detach().cpu().clone() for name, p in params.items()}
    ref_logp = sft_logp[n_sft][sft_of_run].to(device)  # the frozen SFT policy's exact log-probs, [R, T]
    if n_daa > 0:
        run_phase(n_daa, [c.daa_lr for c in configs], daa, daa_logp, daa_loss)
    elapsed = time.perf_counter() - started

    final = {name: p.detach().cpu() for name, p in params.items()}
    names_array = pd.array(mdp.trajectory_names(), dtype="str")  # built once per batch
    results = [_run_result(r, configs[r], mdp, dataset, in_dist, chosen, rejected,
                           torch.cat([sft_logp[:, sft_of_run[r]], daa_logp[:, r]]),
                           torch.cat([sft_loss[:, sft_of_run[r]], daa_loss[:, r]]),
                           make(configs[r]), final, reference, elapsed / R, names_array)
               for r in range(R)]
    unsorted = [None] * R
    for position, i in enumerate(order):
        unsorted[i] = results[position]
    return unsorted


def _run_result(r, config, mdp, dataset, in_dist, chosen, rejected, logp, loss, policy, final,
                reference, seconds, names_array):
    """Build run r's RunResult (history, metrics, summary) from its recorded log-probs [n, T]."""
    n_sft, n_daa = config.sft_steps, config.daa_steps
    phase = np.array(["sft"] * (n_sft + 1) + ["daa"] * (n_daa + 1 if n_daa > 0 else 0))
    step = np.concatenate([np.arange(n_sft + 1), np.arange(n_daa + 1 if n_daa > 0 else 0)])
    probs64 = logp.double().exp()  # [n, T]; masses in float64, as training's recorder does
    ood = probs64[:, ~in_dist].sum(-1)
    nan = torch.full((len(phase),), float("nan"), dtype=torch.float64)
    chosen_prob = probs64[:, chosen].mean(-1) if len(chosen) else nan
    rejected_prob = probs64[:, rejected].mean(-1) if len(rejected) else nan

    last = np.where(phase == "sft", n_sft, n_daa)
    logged = (step % config.log_every == 0) | (step == last)
    # train() stops at the first non-finite loss, or non-finite policy at a logged step.
    bad_loss = ~torch.isfinite(loss)
    bad_policy = ~torch.isfinite(logp).all(-1) & torch.as_tensor(logged)
    if (bad_loss | bad_policy).any():
        i = int((bad_loss | bad_policy).nonzero()[0])
        if bad_loss[i]:
            message = (f"{phase[i]} step {step[i]}: the loss became {float(loss[i])} "
                       f"(learning rate too high for this optimiser?); stopped")
        else:
            message = f"{phase[i]} step {step[i]}: the policy's probabilities became NaN/inf; stopped"
        return TrainingDiverged(message)

    ref_logp = logp[n_sft]
    probs = logp.exp()
    kl = torch.sum(probs * (logp - ref_logp), -1).double()  # float32 sums, as exact.kl_divergence
    kl[torch.as_tensor(phase == "sft")] = float("nan")
    entropy = (-torch.sum(probs * logp, -1)).double()

    steps = pd.DataFrame({
        "phase": phase, "step": step, "loss": loss.double().numpy(),
        "ood_mass": ood.numpy(), "chosen_prob": chosen_prob.numpy(),
        "rejected_prob": rejected_prob.numpy()})
    steps["in_distribution_mass"] = 1.0 - steps["ood_mass"]
    metrics = steps[logged].reset_index(drop=True)
    metrics["kl_to_reference"] = kl[torch.as_tensor(logged)].numpy()
    metrics["entropy"] = entropy[torch.as_tensor(logged)].numpy()

    T, L = mdp.n_trajectories, int(logged.sum())
    phases = pd.array(["sft", "daa"], dtype="str")
    history = pd.DataFrame({
        "phase": phases.take(np.repeat((phase[logged] == "daa").astype(np.int64), T)),
        "step": np.repeat(step[logged], T),
        "trajectory": names_array.take(np.tile(np.arange(T), L)),
        "prob": probs[torch.as_tensor(logged)].double().numpy().ravel(),
        "in_distribution": np.tile(in_dist.numpy(), L)})

    summary = summarize(config, mdp, steps, logp[-1], ref_logp, in_dist, seconds)
    reference_policy = make_policy(mdp, config.policy, seed=config.seed, hidden_size=config.hidden_size,
                                   cell=config.cell)
    return RunResult(config, history, metrics, summary, _load(policy, final, r),
                     _load(reference_policy, reference, r), dataset)
