"""One over-optimization lab run: a gold reward, data drawn from it, DPO, and the hump.

The lab knows the true reward r* of every trajectory, so it measures what DPO's proxy objective
hides: the gold reward and the win rate against the reference at every step, against the KL
spent. Everything is exact (all 256 trajectories of a 4x4 tree are enumerated).

    python examples/lab_run.py
"""

from treemdp.lab import LabConfig, run_lab


def lab_run(**settings):
    """One DPO run of the lab; returns its result (``.summary``, ``.curve`` per step, ``.frontier``)."""
    config = LabConfig(**{**dict(method="daa", loss="dpo", beta=0.1, pairs=64, tree="4x4", gold="random"), **settings})
    (result,) = run_lab([config])
    return result


if __name__ == "__main__":
    result = lab_run(steps=300)
    s = result.summary
    print(f"win-rate gain: peak {s['peak_win_gain']:+.3f} at step {s['peak_win_step']} "
          f"(KL {s['peak_win_kl']:.2f}), final {s['final_win_gain']:+.3f}")
    print(f"gold gain:     peak {s['peak_gold_gain']:+.3f}, final {s['final_gold_gain']:+.3f}")
    print(result.curve[["step", "kl_to_reference", "win_gain", "gold_gain"]].iloc[::50].to_string(index=False))
