"""The figures README checker: right numbers pass, wrong ones fail naming line, number and table value;
and the committed README's tags all resolve to rows of the committed tables."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from treemdp.check_figures import agrees, check, main, quoted_numbers

ROOT = Path(__file__).resolve().parents[1]

TABLE = pd.DataFrame([
    dict(claim="overopt", setting="all runs", statistic="share", value=0.733333, low=0.686111, high=0.777778, n=360),
    dict(claim="overopt", setting="dpo", statistic="mean drop", value=0.207691, low=0.169979, high=0.250063, n=120),
    dict(claim="diff", setting="ipo - dpo", statistic="mean", value=-0.118497, low=-0.17573, high=-0.0651173, n=30),
])


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "lab").mkdir(exist_ok=True)
    TABLE.to_csv(tmp_path / "lab" / "claims.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(textwrap.dedent(text))
    return readme


RIGHT = """\
    # Figures 1 and 2

    - **Holds.** 264 of 360 runs (73%, interval 69–78%)<!-- check lab/claims.csv: overopt | all runs | share -> count n value low high -->
      end below their peak; the mean fall is 0.21 (DPO)<!-- check lab/claims.csv: overopt | dpo | mean drop -->.
    - At β = 0.5 less (−0.12, −0.18 to −0.07)<!-- check lab/claims.csv: diff | ipo - dpo | mean -> value low high -->, in 12 runs.
"""


def test_right_numbers_pass(tmp_path, capsys):
    readme = write(tmp_path, RIGHT)
    problems, unchecked, checked = check(readme)
    assert problems == [] and checked == 9
    assert [q.text for _, q in unchecked] == ["0.5", "12"]  # prose numbers tied to no table (the heading's are not prose)
    assert main([str(readme)]) == 0
    assert "9 quoted numbers checked" in capsys.readouterr().out
    assert main([str(readme), "--strict"]) == 1


def test_a_wrong_number_fails_naming_sentence_number_and_table_value(tmp_path, capsys):
    readme = write(tmp_path, RIGHT.replace("(73%, interval 69–78%)", "(74%, interval 69–78%)")
                   .replace("0.21 (DPO)", "0.22 (DPO)"))
    problems, _, _ = check(readme)
    assert len(problems) == 2
    first, second = (str(p) for p in problems)
    assert first.startswith("line 3: ") and "quotes 74% as value of lab/claims.csv [overopt | all runs | share]" in first
    assert "0.733333 (quoted at this precision: 73%)" in first and "264 of 360 runs (74%" in first
    assert "quotes 0.22 as value" in second and "0.207691 (quoted at this precision: 0.21)" in second
    assert main([str(readme)]) == 1
    err = capsys.readouterr().err
    assert err.count("README.md:line") == 2


def test_tags_that_cannot_resolve_are_problems(tmp_path):
    readme = write(tmp_path, """\
        A 0.5<!-- check lab/claims.csv: overopt | nobody | share -->.

        B 0.5<!-- check nothere.csv: overopt | all runs | share -->.

        C 0.73<!-- check lab/claims.csv: overopt | all runs | share -> value low high -->.
    """)
    messages = [str(p) for p in check(readme)[0]]
    assert "has 0 rows for [overopt | nobody | share]" in messages[0]
    assert "no table" in messages[1] and "nothere.csv" in messages[1]
    assert "names 3 numbers" in messages[2]


@pytest.mark.parametrize("text, expected", [
    ("69–78%", [(69, True, 0), (78, True, 0)]),
    ("−0.18 to +0.07", [(-0.18, False, 2), (0.07, False, 2)]),
    ("s1-a1-s3 fig07 at step 24, 1e-2", [(24, False, 0), (0.01, False, 2)]),
])
def test_numbers_are_read_as_written(text, expected):
    assert [(q.number, q.percent, q.decimals) for q in quoted_numbers(text)] == expected


def test_agreement_is_rounding_at_the_quoted_precision():
    q = quoted_numbers("0.21")[0]
    assert agrees(q, 0.2077) and agrees(q, 0.2149) and not agrees(q, 0.2151)
    assert agrees(quoted_numbers("74%")[0], 0.742) and not agrees(quoted_numbers("73%")[0], 0.742)
    assert not agrees(q, float("nan"))


def test_the_committed_readme_tags_resolve_to_committed_rows():
    """Every tag names a row that exists (the numbers themselves: ``make check-figures``)."""
    problems, _, checked = check(ROOT / "figures" / "README.md")
    unresolved = [str(p) for p in problems if "rows for" in str(p) or "no table" in str(p) or "names" in str(p)]
    assert checked > 0 and not unresolved, unresolved


def test_paper_claims_rows_are_the_means_over_seeds():
    from treemdp.figure_claims import controls, dpo_seeds, mass_summary
    rows = []
    for loss in ("dpo", "ipo", "slic"):
        for beta in (0.01, 0.1, 0.5):
            for seed in range(4):
                peak = 0.9 if loss == "dpo" else 0.1 * seed
                rows.append(dict(loss=loss, beta=beta, seed=seed, peak_ood_mass=peak, final_ood_mass=peak / 2,
                                 peak_ood_step=10 + seed, sft_ood_mass=0.01, optimizer="adam"))
    paper = pd.DataFrame(rows)
    table = pd.DataFrame(mass_summary(paper)).set_index(["setting", "statistic"])
    assert table.loc[("dpo, beta=0.1", "mean peak OOD mass"), "value"] == pytest.approx(0.9)
    assert table.loc[("ipo, beta=0.5", "mean peak OOD mass"), "value"] == pytest.approx(0.15)
    assert table.loc[("ipo, beta=0.5", "mean final OOD mass"), "n"] == 4
    low, high = table.loc[("ipo, beta=0.5", "mean peak OOD mass"), ["low", "high"]]
    assert 0 <= low < 0.15 < high <= 0.3  # a bootstrap interval of the mean of 0, 0.1, 0.2, 0.3
    assert table.loc[("all (loss, beta)", "cells with mean peak OOD mass > 0.5"), "value"] == 3
    assert table.loc[("all (loss, beta)", "lowest mean peak OOD mass"), "value"] == pytest.approx(0.15)
    seeds = pd.DataFrame(dpo_seeds(paper)).set_index(["setting", "statistic"])
    assert seeds.loc[("dpo, beta=0.1, seed 2", "step of the peak"), "value"] == 12
    sgd = paper.assign(optimizer="sgd", peak_ood_mass=0.05)
    by = pd.DataFrame(controls(paper, sgd, by="optimizer", claim="optimizers")).set_index(["setting", "statistic"])
    assert by.loc[("optimizer=sgd, all loss and beta", "max peak OOD mass over runs"), "value"] == pytest.approx(0.05)
    assert by.loc[("optimizer=adam, all loss and beta", "mean peak OOD mass"), "value"] == pytest.approx(
        paper["peak_ood_mass"].mean())
