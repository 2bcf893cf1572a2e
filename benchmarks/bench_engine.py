"""Engine benchmark: one default ``train`` run, and exact enumeration on large trees.

Prints the figures reported in the engine issue. Each enumeration case runs in a fresh
subprocess so its peak resident memory (ru_maxrss) is its own. Usage:

    .venv/bin/python benchmarks/bench_engine.py [--repeats 3] [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CASE = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
from treemdp import TreeMDP, RNNPolicy, trajectory_log_probs
branching, depth, hidden, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
mdp = TreeMDP(branching, depth)
policy = RNNPolicy(mdp, hidden_size=hidden, seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def naive(policy):  # every trajectory evaluated separately: depth RNN steps on a batch of b**d sequences
    traj = mdp.trajectories()
    state = policy.repeat_state(policy.root_state(), len(traj))
    logp = torch.zeros(len(traj))
    for t in range(depth):
        logp = logp + policy.next_log_probs(state).gather(1, traj[:, t:t + 1]).squeeze(1)
        if t + 1 < depth:
            state = policy.advance(state, traj[:, t])
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


def enumeration_case(branching: int, depth: int, hidden: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CASE, str(branching), str(depth), str(hidden), mode],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout)


def bench_train(repeats: int) -> None:
    from treemdp.training import train
    train(progress=False, sft_steps=5, daa_steps=5)  # warm-up (first autograd call, allocator)
    seconds = [train(progress=False).summary["train_seconds"] for _ in range(repeats)]
    med = statistics.median(seconds)
    print(f"default train run (GRU h=32, Adam, 200 SFT + 1000 DAA steps, all 27 probabilities every step): "
          f"median {med:.3f} s over {repeats} ({med / 1200 * 1e3:.3f} ms/step; min {min(seconds):.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-large", action="store_true", help="skip the 10^7-trajectory case")
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    bench_train(args.repeats)
    cases = [(4, 10)] + ([] if args.skip_large else [(10, 7)])
    for branching, depth in cases:
        n = branching**depth
        for mode in ("tree", "tree-grad"):
            r = enumeration_case(branching, depth, args.hidden, mode)
            if "error" in r:
                print(f"  {branching}^{depth} {mode}: failed: {r['error']}")
                continue
            print(f"enumeration {branching}^{depth} = {n:.2e} trajectories, hidden {args.hidden}, {mode:9s}: "
                  f"{r['seconds']:.3f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(+{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} MB over import), sum of probs {r['sum']:.6f}")
        if n <= 4**10:
            naive, tree = enumeration_case(branching, depth, args.hidden, "naive"), enumeration_case(branching, depth, args.hidden, "tree")
            if "error" in naive:
                print(f"  every trajectory separately: failed: {naive['error']}")
            else:
                print(f"  every trajectory separately: {naive['seconds']:.3f} s, peak RSS {naive['peak_rss_mb']:.0f} MB "
                      f"-> prefix sharing is {naive['seconds'] / tree['seconds']:.1f}x faster")


if __name__ == "__main__":
    main()
