"""Engine benchmark: the one engine against the code before it, side by side; exact enumeration
on large trees.

    .venv/bin/python benchmarks/bench_engine.py                  # everything (~3 min on 2 cores)
    .venv/bin/python benchmarks/bench_engine.py --skip-large     # without the 10^7-trajectory case
    .venv/bin/python benchmarks/bench_engine.py --before REV     # compare with another commit

Every case runs in a fresh subprocess on one torch thread. The code before the one-engine change
(``--before``, default the last commit with two engines) is checked out into a temporary git
worktree and timed in the same run, alternating rounds with the current code, so the ratios do not
depend on what else the machine is doing at the time (each side's minimum over rounds is used).
Enumeration cases report their peak resident memory (``ru_maxrss``) as their own process's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The last commit with two engines (training.py's single-run loop and batched.py).
BEFORE = "5210668"

#: Timed in a subprocess; prints one JSON line. ``sys.argv[1]``: which case.
CASE = r"""
import json, sys, time, torch
torch.set_num_threads(1)
case = sys.argv[1]
from treemdp.training import TrainConfig, train
try:
    from treemdp.training import train_batch
except ImportError:  # before the one engine
    from treemdp.batched import train_batch
from treemdp.sweep import grid
if case == "single":
    train(progress=False, sft_steps=5, daa_steps=5)  # warm-up (first autograd call, allocator)
    seconds = []
    for seed in range(3):
        started = time.perf_counter()
        train(seed=seed, progress=False)
        seconds.append(time.perf_counter() - started)
    print(json.dumps({"seconds": min(seconds)}))
elif case == "grid":
    configs = grid(TrainConfig(), loss=["dpo", "ipo", "slic"], beta=[0.01, 0.1, 0.5], seed=range(10))
    train_batch(configs[:2])  # warm-up
    started = time.perf_counter()
    results = train_batch(configs)
    for r in results:  # what a sweep reads of every run
        r.summary
    print(json.dumps({"seconds": time.perf_counter() - started, "runs": len(configs)}))
elif case == "zoo":  # a light sweep in one process: batches of the default size, run folders written
    import tempfile
    from treemdp.sweep import sweep
    configs = grid(TrainConfig(), loss=json.loads(sys.argv[2]), beta=[0.01, 0.1, 0.5], seed=range(10))
    train_batch(configs[:2])  # warm-up
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        table = sweep(configs, out, light=True, workers=int(sys.argv[3]), progress=False)
        seconds = time.perf_counter() - started
    diverged = int(table["diverged"].notna().sum()) if "diverged" in table else 0
    print(json.dumps({"seconds": seconds, "runs": len(configs), "diverged": diverged}))
"""

ENUMERATION = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
from treemdp import TreeMDP, RNNPolicy, trajectory_log_probs
branching, depth, hidden, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
mdp = TreeMDP(branching, depth)
policy = RNNPolicy(mdp, hidden_size=hidden, seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def naive(policy):  # every trajectory evaluated separately: depth cell steps on a batch of b**d sequences
    traj = mdp.trajectories()
    prep = policy.prepare(policy.stacked_parameters())
    state = policy.repeat_state(policy.root(prep), len(traj))
    logp = torch.zeros(len(traj))
    for t in range(depth):
        logp = logp + policy.next_log_probs(prep, state)[0].gather(1, traj[:, t:t + 1]).squeeze(1)
        if t + 1 < depth:
            state = policy.advance(prep, state, traj[:, t])
    return logp
fn = trajectory_log_probs if mode.startswith("tree") else naive
grad = mode.endswith("grad")
times = []
for _ in range(3):
    policy.zero_grad(set_to_none=True)
    t = time.perf_counter()
    with torch.set_grad_enabled(grad):
        logp = fn(policy)
        if grad:
            logp.exp().mul(torch.linspace(0, 1, len(logp))).sum().backward()
    times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": min(times), "peak_rss_mb": peak / 1024, "baseline_rss_mb": base / 1024,
                  "sum": float(logp.detach().double().exp().sum())}))
"""


def run_case(script: str, args: list, pythonpath: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         timeout=1800, env=env, cwd=pythonpath)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def worktree(rev: str):
    """The repository at ``rev`` in a temporary git worktree."""
    path = Path(tempfile.mkdtemp(prefix="treemdp-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def side_by_side(case: str, before: Path, rounds: int) -> tuple[float, float]:
    """Alternating rounds of the old and the current code; each side's best."""
    old, new = [], []
    for _ in range(rounds):
        old.append(run_case(CASE, [case], before)["seconds"])
        new.append(run_case(CASE, [case], ROOT)["seconds"])
    return min(old), min(new)


def zoo_specs() -> list[str]:
    """Every registered objective, TRL's loss types one by one (the zoo figure's set)."""
    sys.path.insert(0, str(ROOT))
    from treemdp.reproduce import zoo_objectives
    return zoo_objectives()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help=f"the commit to compare with (default {BEFORE})")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison")
    parser.add_argument("--skip-large", action="store_true", help="skip the 10^7-trajectory enumeration")
    parser.add_argument("--skip-compare", action="store_true", help="only the current code")
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    import torch
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, 1 thread per process; load average "
          f"{os.getloadavg()[0]:.2f} at start")

    grid_new = None
    if not args.skip_compare:
        with worktree(args.before) as before:
            old, new = side_by_side("single", before, args.rounds)
            print(f"one default train() run (GRU h=32, Adam, 200 SFT + 1000 DAA, every probability every step): "
                  f"before {old:.3f} s, now {new:.3f} s -> {new / old:.2f}x the time (target <= 0.70x)")
            old, grid_new = side_by_side("grid", before, args.rounds)
            print(f"90-run paper grid (3 losses x 3 betas x 10 seeds) as one batch: before {old:.2f} s, "
                  f"now {grid_new:.2f} s -> {grid_new / old:.2f}x the time (target <= 1.00x)")
    specs = zoo_specs()
    if grid_new is None:
        grid_new = min(run_case(CASE, ["grid"], ROOT)["seconds"] for _ in range(args.rounds))
    # One process (the grid's conditions), then the default of 'treemdp sweep' (up to 2 workers).
    for workers in sorted({1, min(2, os.cpu_count() or 1)}):
        zoo = run_case(CASE, ["zoo", json.dumps(specs), workers], ROOT)
        if "error" in zoo:
            print(f"zoo sweep failed: {zoo['error']}")
            continue
        print(f"zoo sweep (light, {workers} worker process{'es' if workers > 1 else ''} of one thread, default "
              f"batches): {len(specs)} objectives x 3 betas x 10 seeds = {zoo['runs']} runs in "
              f"{zoo['seconds']:.1f} s ({zoo['diverged']} diverged) -> {zoo['seconds'] / grid_new:.1f}x the "
              f"90-run grid in one process (target <= 8x)")

    cases = [(4, 10)] + ([] if args.skip_large else [(10, 7)])
    for branching, depth in cases:
        n = branching**depth
        for mode in ("tree", "tree-grad"):
            r = run_case(ENUMERATION, [branching, depth, args.hidden, mode], ROOT)
            if "error" in r:
                print(f"  {branching}^{depth} {mode}: failed: {r['error']}")
                continue
            print(f"enumeration {branching}^{depth} = {n:.2e} trajectories, hidden {args.hidden}, {mode:9s}: "
                  f"{r['seconds']:.3f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(+{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} MB over import), sum of probs {r['sum']:.6f}")
        if n <= 4**10:
            naive = run_case(ENUMERATION, [branching, depth, args.hidden, "naive"], ROOT)
            tree = run_case(ENUMERATION, [branching, depth, args.hidden, "tree"], ROOT)
            if "error" in naive:
                print(f"  every trajectory separately: failed: {naive['error']}")
            else:
                print(f"  every trajectory separately: {naive['seconds']:.3f} s, peak RSS {naive['peak_rss_mb']:.0f} MB "
                      f"-> prefix sharing is {naive['seconds'] / tree['seconds']:.1f}x faster")


if __name__ == "__main__":
    main()
