"""Peak and final OOD mass over seeds for a few settings: the table in the README.

Runs ``treemdp.train`` (200 SFT + 1000 DAA steps unless changed) for each setting and seed and
prints a Markdown table: mean [min-max] of peak OOD mass, its DAA step, and final OOD mass.

    .venv/bin/python benchmarks/defaults_table.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics

from treemdp.training import TrainConfig, train

SETTINGS = [
    ("default: GRU h=32, Adam, DPO beta=0.1", {}),
    ("DPO beta=0.5", {"beta": 0.5}),
    ("DPO beta=0.01", {"beta": 0.01}),
    ("IPO beta=0.1", {"loss": "ipo"}),
    ("SLiC beta=0.1", {"loss": "slic"}),
    ("DPO, daa_lr 1e-3", {"daa_lr": 1e-3}),
    ("DPO, RMSprop", {"optimizer": "rmsprop"}),
    ("DPO, SGD (SFT and DAA lr 0.1)", {"optimizer": "sgd", "sft_lr": 0.1, "daa_lr": 0.1}),
    ("DPO, tabular policy (SFT and DAA lr 0.05)", {"policy": "tabular", "sft_lr": 0.05, "daa_lr": 0.05}),
    ("DPO, GRU h=4", {"hidden_size": 4}),
    ("DPO, LSTM", {"cell": "lstm"}),
    ("DPO, transformer (2 layers, width 32)", {"policy": "transformer"}),
]


def fmt(values, pct=True):
    mean = statistics.fmean(values)
    if pct:
        return f"{mean:.0%} [{min(values):.0%}–{max(values):.0%}]"
    return f"{mean:.0f} [{min(values):.0f}–{max(values):.0f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print("| setting | OOD mass after SFT | peak OOD mass (DAA) | step of the peak | final OOD mass |")
    print("|---|---|---|---|---|")
    for label, overrides in SETTINGS:
        runs = [train(TrainConfig(seed=seed, **overrides), progress=False).summary for seed in range(args.seeds)]
        print(f"| {label} | {fmt([r['sft_ood_mass'] for r in runs])} | {fmt([r['peak_ood_mass'] for r in runs])} | "
              f"{fmt([r['peak_ood_step'] for r in runs], pct=False)} | {fmt([r['final_ood_mass'] for r in runs])} |",
              flush=True)


if __name__ == "__main__":
    main()
