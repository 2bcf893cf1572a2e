"""`treemdp reproduce --quick` writes every figure, each a non-empty image of the expected size."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from treemdp.figures import DPI, SIZES
from treemdp.phenomena.figures import SIZES as PHEN_SIZES

pytestmark = pytest.mark.slow  # one `treemdp reproduce --quick` in a subprocess

EXPECTED = (["fig06_tree_mdp", "fig07_mass_summary"]
            + [f"fig{9 + 3 * i + j:02d}_{loss}_beta{beta}" for i, loss in enumerate(("dpo", "ipo", "slic"))
               for j, beta in enumerate(("0.01", "0.1", "0.5"))]
            + ["fig18_dpo_seeds", "atlas_peak_ood", "atlas_final_ood", "optimizers", "tabular_vs_gru", "zoo_ood_map"]
            + ["phen_theory", "phen_explain", "phen_ipo", "phen_unseen", "phen_squeezing", "phen_displacement"])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


def size_key(name: str) -> str:
    if name.startswith("phen_"):
        return name
    return "fig_trajectories" if name.startswith("fig") and name[3:5].isdigit() and 9 <= int(name[3:5]) <= 17 else name


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    result = subprocess.run([sys.executable, "-m", "treemdp", "reproduce", "--quick", "--out", str(root / "figs"),
                             "--runs", str(root / "runs")], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_every_figure_is_written_at_its_size(quick):
    figs = quick / "figs"
    assert sorted(p.stem for p in figs.glob("*.png")) == sorted(EXPECTED)
    for name in EXPECTED:
        png, pdf = figs / f"{name}.png", figs / f"{name}.pdf"
        width, height = {**SIZES, **PHEN_SIZES}[size_key(name)]
        assert png_size(png) == (round(width * DPI), round(height * DPI)), name
        assert png.stat().st_size > 20_000, f"{name}.png looks empty"
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000, name


def test_figures_are_not_blank(quick):
    """Each PNG has real content: many distinct colours, not a single flat fill."""
    import matplotlib.image as mpimg
    import numpy as np
    for png in (quick / "figs").glob("*.png"):
        pixels = mpimg.imread(png)[..., :3].reshape(-1, 3)
        assert (pixels.std(0) > 0.05).any(), png.name
        assert len(np.unique((pixels[::17] * 255).astype(int), axis=0)) > 50, png.name


def test_reproduce_resumes_and_cli_errors(quick, tmp_path, capsys):
    """The same sweeps again retrain nothing; bad input is one error line, exit 2."""
    from treemdp.cli import main
    from treemdp.reproduce import QUICK, reproduce_jobs
    from treemdp.sweep import sweep_many
    stamps = {p: p.stat().st_mtime_ns for p in (quick / "runs").glob("*/*/summary.json")}
    assert len(stamps) > 100
    tables = sweep_many(reproduce_jobs(QUICK, quick / "runs"), progress=False)
    assert sum(len(t) for t in tables) == len(stamps)
    assert {p: p.stat().st_mtime_ns for p in (quick / "runs").glob("*/*/summary.json")} == stamps
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["reproduce", "--quick", "--quiet", "--out", str(blocker / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


LAB = ["humps_win_rate", "frontier", "fit_coefficients", "rmse_forms", "spurious_share", "first_epoch", "kl_spent",
       "equal_kl"]


def test_the_lab_figures_and_their_numbers_are_written(quick):
    """reproduce also trains the lab's grids and draws figures/lab with fits.csv and claims.csv."""
    import pandas as pd
    lab = quick / "figs" / "lab"
    assert sorted(p.stem for p in lab.glob("*.png")) == sorted(LAB)
    for name in LAB:
        assert (lab / f"{name}.png").stat().st_size > 20_000, f"lab/{name}.png looks empty"
        assert (lab / f"{name}.pdf").read_bytes()[:5] == b"%PDF-", name
    fits, claims = pd.read_csv(lab / "fits.csv"), pd.read_csv(lab / "claims.csv")
    assert set(fits["form"]) == {"rl", "bon", "quad_kl"} and set(fits["method"]) == {"daa", "rlhf", "bon"} and fits["rmse"].ge(0).all()
    assert len(claims) > 0 and claims["claim"].notna().all()
    assert {"who_overoptimizes_first", "rl_spends_more_kl"} <= set(claims["claim"])
    table = pd.read_csv(lab / "equal_kl_table.csv")
    assert {"dpo", "ipo", "slic", "rlhf", "bon", "frontier"} <= set(table["method"])
    assert set(pd.read_csv(lab / "equal_kl_peaks.csv")["quality"]) == {"gold", "win"}
