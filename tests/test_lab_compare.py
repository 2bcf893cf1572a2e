"""Issue 21: RLHF on DPO's scale, methods compared at equal KL, peaks that mean what they say, the
chosen log-ratio's dip, and the small things (each test fails on the code before it)."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from treemdp.lab import LabConfig, run_lab, tilted_log_probs
from treemdp.lab.compare import envelope_peak, equal_kl, equal_kl_claims, polyline_max
from treemdp.lab.rlhf import degenerate_betas, degenerate_warning
from treemdp.lab.runner import normalize_reward, optimum_summary, reward_scale, saturation_sqrt_kl, summarize_lab
from treemdp.lab.store import LabTables
from treemdp.training import chosen_dip

ROOT = Path(__file__).resolve().parents[1]


def _tiny(**overrides):
    base = dict(tree="3x2", pairs=6, demos=12, sft_steps=40, steps=30, rm_steps=40, hidden_size=8, rm_hidden_size=8)
    return LabConfig(**{**base, **overrides})


# ----- 1. RLHF on a comparable scale ------------------------------------------------------------------------
def test_reward_normalisation_has_mean_zero_and_unit_variance_under_the_reference():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 9, generator=g, dtype=torch.float64)
    ref = ref / ref.sum(-1, keepdim=True)
    r = 5.0 * torch.randn(2, 9, generator=g, dtype=torch.float64) + 3.0
    mean = (ref * r).sum(-1)
    std = ((ref * (r - mean[:, None]) ** 2).sum(-1)).sqrt()
    assert torch.allclose(reward_scale(r, ref), std, atol=1e-12)
    z = normalize_reward(r, ref)
    assert torch.allclose((ref * z).sum(-1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose((ref * z * z).sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert torch.equal(normalize_reward(torch.full((9,), 2.0, dtype=torch.float64), ref[0]), torch.zeros(9, dtype=torch.float64))


def test_rlhf_summary_reports_the_reward_scale_and_normalises_by_default():
    plain, raw = run_lab([_tiny(method="rlhf", steps=5), _tiny(method="rlhf", steps=5, rm_normalize=False)])
    for result in (plain, raw):
        assert result.summary["rm_scale"] > 0
    assert plain.summary["rm_normalized"] is True and raw.summary["rm_normalized"] is False
    assert plain.summary["rm_scale"] == pytest.approx(raw.summary["rm_scale"], rel=1e-12)  # the same fit
    ref = plain.ref_probs
    assert float(reward_scale(plain.reward_model, ref)) == pytest.approx(1.0, abs=1e-9)  # what RLHF maximised
    assert float(reward_scale(raw.reward_model, ref)) == pytest.approx(raw.summary["rm_scale"], rel=1e-9)
    assert torch.allclose(normalize_reward(raw.reward_model, ref), plain.reward_model, atol=1e-9)
    optimum = tilted_log_probs(ref.log(), plain.reward_model, plain.config.beta).exp()
    top = plain.reward_model >= plain.reward_model.max()
    assert plain.summary["optimum_argmax_mass"] == pytest.approx(float(optimum[top].sum()), abs=1e-12)


def test_the_argmax_policy_is_the_optimum_of_every_small_beta():
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 8.0], dtype=torch.float64)
    small = optimum_summary(ref, r, 0.1)
    assert small["optimum_argmax_mass"] > 0.999 and small["optimum_sqrt_kl"] == pytest.approx(math.sqrt(-math.log(0.2)), abs=1e-6)
    assert optimum_summary(ref, r, 100.0)["optimum_argmax_mass"] == pytest.approx(0.2, abs=0.02)


def test_a_degenerate_beta_sweep_is_named():
    results = pd.DataFrame({"method": ["rlhf"] * 6 + ["daa"], "beta": [0.02, 0.02, 0.1, 0.1, 3.0, 3.0, 0.1],
                            "optimum_argmax_mass": [1.0, 0.999, 0.995, 0.999, 0.4, 0.5, np.nan],
                            "rm_scale": [7.0] * 7, "rm_normalized": [False] * 7})
    assert degenerate_betas(results) == [0.02, 0.1]
    warning = degenerate_warning(results)
    assert "beta 0.02, 0.1" in warning and "7" in warning and "--rm-normalize" in warning
    assert degenerate_warning(results[results["beta"] != 0.02]) is None  # one degenerate beta is not a degenerate sweep


def test_lab_run_warns_on_a_degenerate_rlhf_sweep(tmp_path, capsys):
    from treemdp.cli import main
    tiny = ["--tree", "3x2", "--pairs", "6", "--demos", "12", "--hidden-size", "8", "--rm-hidden-size", "8",
            "--sft-steps", "30", "--rm-steps", "30", "--steps", "5", "--method", "rlhf", "--quiet"]
    assert main(["lab", "run", *tiny, "--beta", "0.0001", "0.0002", "--out", str(tmp_path / "small")]) == 0
    assert "warning: RLHF beta sweep is degenerate: at beta 0.0001, 0.0002" in capsys.readouterr().err
    assert main(["lab", "run", *tiny, "--beta", "30", "100", "--out", str(tmp_path / "large")]) == 0
    assert "degenerate" not in capsys.readouterr().err


def test_readme_rlhf_example_sweeps_kl():
    """The README's RLHF example uses betas whose optimum is not the argmax policy for a unit-variance reward."""
    text = (ROOT / "README.md").read_text()
    line = next(l for l in text.splitlines() if "lab run" in l and "--method rlhf" in l)
    betas = [float(b) for b in re.search(r"--beta ((?:[\d.]+ ?)+)", line).group(1).split()]
    assert len(betas) >= 3 and min(betas) >= 0.1 and max(betas) >= 1


# ----- 2. equal KL ------------------------------------------------------------------------------------------
def test_polyline_max_equals_a_loop_over_segments():
    rng = np.random.default_rng(1)
    x = np.abs(np.cumsum(rng.normal(size=40)))  # goes back and forth
    x[7] = x[6]  # a vertical segment
    y = rng.normal(size=40)
    grid = np.concatenate([np.linspace(0, x.max() + 0.5, 37), [x[6]]])
    got = polyline_max(x, y, grid)
    for g, value in zip(grid, got):
        crossings = [np.interp(g, *((x[i:i + 2], y[i:i + 2]) if x[i] < x[i + 1] else (x[i:i + 2][::-1], y[i:i + 2][::-1])))
                     if x[i] != x[i + 1] else max(y[i], y[i + 1])
                     for i in range(len(x) - 1) if min(x[i], x[i + 1]) <= g <= max(x[i], x[i + 1])]
        if crossings:
            assert value == pytest.approx(max(crossings), abs=1e-12)
        else:
            assert np.isnan(value) and (g < x.min() or g > x.max())


def _synthetic_tables():
    """Two methods, two seeds, curves of known shape: 'a' peaks at d=1 with gain 1, 'b' at d=2 with gain 0.5."""
    rows, results, fronts = [], [], []
    d = np.linspace(0, 3, 61)
    for seed in (0, 1):
        for method, loss, peak, top in (("daa", "dpo", 1.0, 1.0), ("rlhf", "", 2.0, 0.5)):
            for k, beta in enumerate((0.1, 1.0)):
                run = f"{method}-{beta}-{seed}"
                scale = 1.0 if k == 0 else 0.5  # the second beta reaches less: the envelope is the first
                gain = scale * top * (1 - (d - peak) ** 2 / peak ** 2)
                rows.append(pd.DataFrame({"dir": run, "method": method, "loss": loss, "beta": beta, "pairs": 8,
                                          "seed": seed, "step": np.arange(61) + 20, "sqrt_kl": d,
                                          "gold_gain": gain + 0.01 * seed, "win_gain": 0.5 * gain}))
                results.append({"dir": run, "method": method, "loss": loss, "beta": beta, "pairs": 8, "seed": seed,
                                "gold": "random", "batch_size": 0, "hidden_size": 16, "steps": 100,
                                "saturation_sqrt_kl": 2.0})
        for kind in ("gold", "win"):
            fronts.append(pd.DataFrame({"dir": f"daa-0.1-{seed}", "pairs": 8, "seed": seed, "kind": kind,
                                        "sqrt_kl": d, "gold_gain": np.minimum(d, 2), "win_gain": np.minimum(d, 2) / 4}))
    return LabTables(pd.DataFrame(results), pd.concat(rows, ignore_index=True), pd.concat(fronts, ignore_index=True))


def test_equal_kl_envelopes_peaks_and_table_on_known_curves():
    comparison = equal_kl(_synthetic_tables(), points=(0.5, 1.0, 2.0), resamples=200)
    peaks = comparison.peaks.set_index(["method", "quality"])
    assert peaks.loc[("dpo", "gold"), "peak_sqrt_kl"] == pytest.approx(1.0)
    assert peaks.loc[("rlhf", "gold"), "peak_sqrt_kl"] == pytest.approx(2.0)
    assert peaks.loc[("dpo", "gold"), "peak_gain"] == pytest.approx(1.005)  # mean of 1.00 and 1.01 over the seeds
    assert peaks.loc[("dpo", "gold"), "peak_saturation"] == pytest.approx(0.5)
    assert peaks.loc[("rlhf", "gold"), "peak_saturation"] == pytest.approx(1.0)
    assert peaks.loc[("dpo", "gold"), "peak_at_edge"] == 0.0 and peaks.loc[("dpo", "gold"), "seeds"] == 2
    table = comparison.table.set_index(["method", "quality", "sqrt_kl"])
    expected = 1 - (0.5 - 1) ** 2 + 0.005  # dpo's gold gain at d = 0.5, mean over seeds
    assert table.loc[("dpo", "gold", 0.5), "mean"] == pytest.approx(expected)
    assert table.loc[("dpo", "gold", 0.5), "low"] == pytest.approx(expected - 0.005)
    assert table.loc[("dpo", "gold", 0.5), "high"] == pytest.approx(expected + 0.005)
    assert table.loc[("frontier", "gold", 2.0), "mean"] == pytest.approx(2.0)
    assert table.loc[("rlhf", "win", 1.0), "mean"] == pytest.approx(0.5 * 0.5 * (1 - 0.25))
    claims = pd.DataFrame(equal_kl_claims(comparison))
    first = claims[(claims["claim"] == "who_overoptimizes_first") & claims["setting"].str.startswith("dpo - rlhf")]
    assert first["value"].iloc[0] == pytest.approx(-1.0)  # DPO's envelope peaks 1 sqrt-KL earlier


def test_envelope_peak_flags_a_peak_at_the_edge():
    d = np.array([0.0, 0.5, 1.0, 1.5])
    assert envelope_peak(d, np.array([0.0, 0.2, 0.4, np.nan])) == (1.0, 0.4, True, 1.0)
    assert envelope_peak(d, np.array([0.0, 0.5, 0.4, 0.1])) == (0.5, 0.5, False, 1.5)


# ----- 3. peaks that mean what they say ----------------------------------------------------------------------
def test_a_first_step_spike_is_a_transient_not_the_peak():
    config = _tiny(steps=100)
    ref = torch.full((9,), 1 / 9, dtype=torch.float64)
    gold = torch.arange(9, dtype=torch.float64)
    steps = np.arange(101)
    gain = 0.3 * np.sin(np.pi * steps / 100)  # the real hump, top 0.3 at step 50
    gain[2] = 0.8  # Adam's first-step overshoot
    kl = np.where(steps == 2, 3.0, steps / 50.0)
    curve = pd.DataFrame({"step": steps, "epoch": steps / 1.0, "kl_to_reference": kl, "sqrt_kl": np.sqrt(kl),
                          "gold_gain": gain, "win_gain": gain / 2, "proxy_gain": gain, "ood_mass": 0.0,
                          "chosen_log_ratio": -np.sin(np.pi * steps / 100) * (steps < 30)})
    front = pd.DataFrame({"kind": ["gold", "win"] * 2, "sqrt_kl": [0.0, 0.0, 3.0, 3.0], "gold_gain": [0, 0, 1, 1],
                          "win_gain": [0, 0, 0.5, 0.5], "kl": [0.0, 0.0, 9.0, 9.0]})
    from treemdp.lab import GoldReward
    s = summarize_lab(config, curve, front, ref, GoldReward("test", gold, torch.zeros(9, dtype=torch.float64)), None, 0.0)
    assert s["peak_gold_step"] == 50 and s["peak_gold_gain"] == pytest.approx(0.3)
    assert s["transient_gold_gain"] == pytest.approx(0.8) and s["transient_gold_kl"] == pytest.approx(3.0)
    assert s["saturation_sqrt_kl"] == pytest.approx(math.sqrt(math.log(9)))
    assert s["peak_gold_saturation"] == pytest.approx(1.0 / math.sqrt(math.log(9)))
    assert s["min_chosen_log_ratio_step"] == 29 and s["chosen_dipped_below_sft"] is True


def test_saturation_is_where_the_frontier_stops_gaining():
    from treemdp.lab import frontier
    ref = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    gold = torch.tensor([1.0, 3.0, 0.0, 3.0, -1.0], dtype=torch.float64)  # a tie at the top
    assert saturation_sqrt_kl(ref, gold) == pytest.approx(math.sqrt(-math.log(0.35)))
    f = frontier(ref.log(), gold, kind="gold")
    assert f["sqrt_kl"].max() == pytest.approx(saturation_sqrt_kl(ref, gold), abs=1e-3)


def test_peak_ood_gain_is_the_daa_phase_rise_over_sft():
    from treemdp.training import train
    from treemdp.training import TrainConfig
    s = train(TrainConfig(policy="tabular", sft_steps=20, daa_steps=30, sft_lr=0.05, daa_lr=0.05)).summary
    assert s["sft_ood_mass"] > 0.05  # SFT left mass off the data
    assert s["peak_ood_gain"] == pytest.approx(s["peak_ood_mass"] - s["sft_ood_mass"], abs=1e-12)
    assert 0 <= s["peak_ood_gain"] < s["peak_ood_mass"]


def test_sweep_table_has_the_ood_gain_and_spells_beta_as_the_run_names():
    from treemdp.sweep import format_table, grid, run_names
    table = pd.DataFrame({"loss": ["dpo"] * 2, "beta": [10.0, 0.5], "seed": [0, 0], "peak_ood_mass": [0.3, 0.2],
                          "peak_ood_gain": [0.1, 0.05], "final_ood_mass": [0.0, 0.0]})
    text = format_table(table)
    names = run_names(grid(loss=["dpo"], beta=[10.0, 0.5], seed=[0]))
    assert "beta=10," in names[0] and "beta=10 " in text and "beta=10.0" not in text
    assert "peak OOD gain over SFT" in text and "0.100 [0.100, 0.100]" in text


def test_lab_table_prints_sqrt_kl_and_names_beta_as_the_folders():
    from treemdp.cli.lab import format_results
    table = pd.DataFrame({"method": ["rlhf"], "loss": [""], "beta": [10.0], "pairs": [8], "peak_win_gain": [0.2],
                          "peak_win_kl": [4.0], "final_win_gain": [0.1], "final_kl": [9.0]})
    text = format_results(table)
    assert "(at sqrt KL)" in text and "(2.00)" in text and "(3.00)" in text and "10.0" not in text


# ----- 4. the summaries a researcher computed by hand -------------------------------------------------------
def test_chosen_dip_finds_the_lowest_log_ratio_after_step_zero():
    assert chosen_dip(np.arange(4), np.array([0.0, 0.2, -0.3, 0.1])) == {
        "min_chosen_log_ratio": -0.3, "min_chosen_log_ratio_step": 2, "chosen_dipped_below_sft": True}
    assert chosen_dip(np.arange(3), np.array([0.0, 0.2, 0.1]))["chosen_dipped_below_sft"] is False


def test_every_toy_summary_has_the_chosen_log_ratio_minimum():
    from treemdp.training import train
    from treemdp.training import TrainConfig
    run = train(TrainConfig(sft_steps=30, daa_steps=40))
    steps = run.steps[run.steps["phase"] == "daa"]
    ratio = steps["chosen_log_ratio"].to_numpy()
    assert run.summary["min_chosen_log_ratio"] == pytest.approx(ratio[1:].min())
    final = float(torch.log(torch.tensor(run.summary["final_chosen_prob"])))
    from treemdp import trajectory_log_probs
    ref_w = float(trajectory_log_probs(run.reference)[12])
    assert ratio[-1] == pytest.approx(final - ref_w, abs=1e-5)  # one preference: chosen row 12
    (lab,) = run_lab([_tiny(steps=20)])
    pairs = lab.dataset.preferences
    rows = torch.tensor([lab.config.mdp.trajectory_index(p.chosen) for p in pairs])
    direct = float((lab.final_probs[rows].log() - lab.ref_probs[rows].log()).mean())
    assert lab.curve["chosen_log_ratio"].iloc[-1] == pytest.approx(direct, abs=1e-4)
    assert lab.summary["min_chosen_log_ratio"] == pytest.approx(lab.curve["chosen_log_ratio"].iloc[1:].min())


@pytest.mark.parametrize("alpha", [0.1, 0.7])
def test_rpo_normalize_false_is_the_summed_nll(alpha):
    from treemdp import preference_loss
    g = torch.Generator().manual_seed(0)
    logps = [-torch.rand(5, generator=g, dtype=torch.float64) * 4 for _ in range(4)]
    lengths = torch.full((5,), 3, dtype=torch.long)
    call = lambda loss: preference_loss(*logps, beta=0.1, loss=loss, chosen_lengths=lengths, rejected_lengths=lengths)  # noqa: E731
    dpo = call("dpo")
    torch.testing.assert_close(call(f"rpo(alpha={alpha}, normalize=false)"), dpo - alpha * logps[0])
    torch.testing.assert_close(call(f"rpo(alpha={alpha})"), dpo - alpha * logps[0] / 3)  # the paper's default
    torch.testing.assert_close(call(f"rpo(alpha={alpha}, normalize=false)"), call(f"rpo(alpha={3 * alpha})"))


# ----- 5. the small things ------------------------------------------------------------------------------------
def test_phenomena_lists_its_submodules():
    import treemdp.phenomena as phenomena
    assert {"displacement", "squeezing", "ipo", "unseen", "explain", "figures"} <= set(dir(phenomena))
    assert callable(phenomena.displacement.ches_experiment)
    with pytest.raises(AttributeError):
        phenomena.nothing_here


def test_objectives_doc_names_the_batch_fields_as_the_code():
    import dataclasses
    from treemdp.losses import PreferenceBatch
    text = (ROOT / "docs" / "objectives.md").read_text()
    call = re.search(r"PreferenceBatch\(([^)]*)\)", text).group(1)
    assert [a.strip() for a in call.split(",")] == [f.name for f in dataclasses.fields(PreferenceBatch)]


def test_readme_defaults_table_says_which_phase_a_learning_rate_is():
    text = (ROOT / "README.md").read_text()
    rows = [l for l in text.splitlines() if l.startswith("| ") and re.search(r"\blr [\d.]", l)]
    assert rows and all(re.search(r"(SFT|DAA)[a-z ]* lr [\d.]", l) for l in rows), rows
