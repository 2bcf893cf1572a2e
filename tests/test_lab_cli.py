"""`treemdp lab run|bon|fit|report` end to end on a tiny grid: files, resume, one-line errors."""

import json
import shutil
import subprocess

import pandas as pd
import pytest

from treemdp.cli import main

TINY = ["--tree", "3x2", "--pairs", "4", "8", "--seeds", "0-1", "--demos", "12", "--hidden-size", "8",
        "--rm-hidden-size", "8", "--sft-steps", "30", "--rm-steps", "30"]


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    done = subprocess.run([*__import__("sys").executable.split(), "-m", "treemdp", "lab", "run", *TINY,
                           "--loss", "dpo", "ipo", "--beta", "0.1", "--steps", "25", "--batch-size", "0", "2",
                           "--out", str(root / "daa"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(["lab", "run", *TINY, "--method", "rlhf", "--beta", "0.1", "0.5", "--steps", "25",
                 "--out", str(root / "rlhf"), "--quiet"]) == 0
    assert main(["lab", "bon", *TINY, "--n", "1", "2", "4", "16", "--format", "parquet", "--out", str(root / "bon"),
                 "--quiet"]) == 0
    return root


def test_grid_folders_hold_tidy_tables(grids):
    results = pd.read_csv(grids / "daa" / "results.csv")
    assert len(results) == 16 and set(results["loss"]) == {"dpo", "ipo"} and set(results["pairs"]) == {4, 8}
    run = grids / "daa" / results[results["batch_size"] == 2]["run"].iloc[0]
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "curve.csv", "data.json", "frontier.csv",
                                                    "summary.json"]
    curve = pd.read_csv(run / "curve.csv")
    assert len(curve) == 26 and {"step", "epoch", "gold_gain", "win_rate", "kl_to_reference", "sqrt_kl",
                                 "proxy_gain", "ood_mass", "spurious_r2"} <= set(curve)
    assert curve["epoch"].iloc[-1] == pytest.approx(25 / (json.loads((run / "config.json").read_text())["pairs"] / 2))
    assert json.loads((run / "config.json").read_text())["batch_size"] == 2
    bon = pd.read_parquet(next((grids / "bon").glob("method=bon*")) / "curve.parquet")
    assert set(bon["proxy"]) == {"rm", "gold"} and sorted(set(bon["n"])) == [1, 2, 4, 16]
    assert (bon["kl_to_reference"] <= bon["kl_bound"] + 1e-9).all()


def test_rerun_resumes_and_a_lost_run_is_redone(grids, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in (grids / "daa").glob("*/summary.json")}
    victim = sorted(stamps)[0].parent
    before = (victim / "curve.csv").read_bytes()
    shutil.rmtree(victim)
    (grids / "daa" / ".half.tmp-123").mkdir()  # what an interrupted write leaves
    args = ["lab", "run", *TINY, "--loss", "dpo", "ipo", "--beta", "0.1", "--steps", "25", "--batch-size", "0", "2",
            "--out", str(grids / "daa"), "--quiet"]
    assert main(args) == 0
    after = {p: p.stat().st_mtime_ns for p in (grids / "daa").glob("*/summary.json")}
    assert after.keys() == stamps.keys() and not list((grids / "daa").glob(".*"))
    assert [p for p in after if after[p] != stamps[p]] == [victim / "summary.json"]
    assert (victim / "curve.csv").read_bytes() == before  # its stack was recomputed: the same numbers, bit for bit
    assert len(pd.read_csv(grids / "daa" / "results.csv")) == 16


def test_fit_and_report(grids, tmp_path, capsys):
    assert main(["lab", "fit", str(grids / "daa"), str(grids / "rlhf"), str(grids / "bon"), "--bootstrap", "50",
                 "--out", str(tmp_path / "fits.csv")]) == 0
    fits = pd.read_csv(tmp_path / "fits.csv")
    assert set(fits["form"]) == {"rl", "bon", "quad_kl"} and set(fits["method"]) == {"daa", "rlhf", "bon"}
    assert "rl/quad" in capsys.readouterr().out
    assert main(["lab", "report", str(grids / "daa"), str(grids / "rlhf"), str(grids / "bon"),
                 "--out", str(tmp_path / "figs"), "--quiet"]) == 0
    names = sorted(p.stem for p in (tmp_path / "figs").glob("*.png"))
    assert {"humps_win_rate", "frontier", "rmse_forms", "first_epoch", "kl_spent"} <= set(names)
    assert all((tmp_path / "figs" / f"{n}.pdf").stat().st_size > 1000 for n in names)
    assert {"daas_overoptimize", "rl_spends_more_kl"} <= set(pd.read_csv(tmp_path / "figs" / "claims.csv")["claim"])
    assert main(["lab", "report", str(grids / "daa"), "--out", str(tmp_path / "daa-only"), "--quiet"]) == 0
    assert (tmp_path / "daa-only" / "humps_win_rate.png").is_file()
    assert not (tmp_path / "daa-only" / "kl_spent.png").exists()  # no RLHF or best-of-n runs: skipped


@pytest.mark.parametrize("args,message", [
    (["run", "--gold", "nope"], "unknown gold reward"),
    (["run", "--beta", "0"], "beta must be"),
    (["run", "--beta", "nan"], "beta must be"),
    (["run", "--tree", "4by4"], "bad tree"),
    (["run", "--tree", "1x3"], "branching must be"),
    (["run", "--loss", "nope"], "unknown loss"),
    (["run", "--method", "ppo"], "unknown method"),
    (["bon", "--n", "0"], "n must be"),
    (["fit", "/nonexistent/lab"], "holds no lab results"),
])
def test_bad_input_is_one_error_line(args, message, tmp_path, capsys):
    extra = ["--out", str(tmp_path / "x")] if args[0] in ("run", "bon") else []
    assert main(["lab", *args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err, err


def test_report_compares_methods_at_equal_kl(grids, tmp_path, capsys):
    out = tmp_path / "eq"
    assert main(["lab", "report", str(grids / "daa"), str(grids / "rlhf"), str(grids / "bon"), "--out", str(out),
                 "--sqrt-kl", "0.1", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "gold gain at equal sqrt KL" in printed and "win-rate gain at equal sqrt KL" in printed
    assert (out / "equal_kl.png").stat().st_size > 10_000 and (out / "equal_kl.pdf").is_file()
    curves = pd.read_csv(out / "equal_kl.csv")
    assert set(curves["method"]) == {"dpo", "ipo", "rlhf", "bon", "frontier"}  # minibatch DAA runs left out
    assert set(curves["pairs"]) == {4, 8} and curves["seeds"].max() == 2
    reached = curves[curves["seeds"] > 0]
    assert curves["mean"].isna().equals(curves["seeds"] == 0)  # past every seed's reach: no number
    assert (reached["low"] <= reached["mean"] + 1e-12).all() and (reached["mean"] <= reached["high"] + 1e-12).all()
    step = curves["sqrt_kl"].drop_duplicates().sort_values().diff().dropna()
    assert step.to_numpy() == pytest.approx(0.05)
    # every seed's envelope stays below the exact frontier of its reference, at every sqrt KL
    from treemdp.lab.compare import equal_kl
    from treemdp.lab.store import load_lab
    envelopes = equal_kl(load_lab([grids / "daa", grids / "rlhf", grids / "bon"]), resamples=10).envelopes
    wide = envelopes.pivot_table(index=["pairs", "seed", "quality", "sqrt_kl"], columns="method", values="gain")
    for method in ("dpo", "ipo", "rlhf", "bon"):
        below = (wide[method] <= wide["frontier"] + 2e-3)[wide[method].notna()]
        assert below.all(), method
    table = pd.read_csv(out / "equal_kl_table.csv")
    assert sorted(table["sqrt_kl"].unique()) == [0.1, 0.2]
    peaks = pd.read_csv(out / "equal_kl_peaks.csv")
    assert {"peak_sqrt_kl", "peak_sqrt_kl_low", "peak_sqrt_kl_high", "peak_saturation", "peak_at_edge"} <= set(peaks)
    assert (peaks.loc[peaks["method"] != "frontier", "peak_saturation"] > 0).all()
    claims = pd.read_csv(out / "claims.csv")
    assert claims["setting"].str.startswith("envelopes over beta").any()
    first = claims[claims["claim"] == "who_overoptimizes_first"]
    assert first["setting"].str.contains("dpo - rlhf").any() and first["setting"].str.contains("rlhf - bon").any()


def test_lab_run_table_shows_sqrt_kl(grids, capsys):
    assert main(["lab", "run", *TINY, "--method", "rlhf", "--beta", "0.1", "0.5", "--steps", "25",
                 "--out", str(grids / "rlhf")]) == 0
    out = capsys.readouterr().out
    assert "(at sqrt KL)" in out and "(at KL)" not in out
    results = pd.read_csv(grids / "rlhf" / "results.csv")
    assert {"rm_scale", "rm_normalized", "optimum_argmax_mass", "saturation_sqrt_kl", "transient_gold_gain",
            "min_chosen_log_ratio", "chosen_dipped_below_sft"} <= set(results)
