"""train() against values recorded before the one-engine rewrite (tests/data/pinned_train.json).

The numbers were written by the previous single-run trainer at the commit named in the file; the
engine that replaced it must give the same runs to float tolerance (float32 sums in another order
drift by ~1e-6 per step; Adam amplifies nothing here over 250 steps).
"""

import json
import math
from pathlib import Path

import pytest

from treemdp.training import train

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_train.json").read_text())


@pytest.mark.parametrize("name", sorted(PINNED["cases"]))
def test_train_matches_the_recorded_run(name):
    case = PINNED["cases"][name]
    result = train(**case["overrides"], **PINNED["settings"], progress=False)
    metrics = result.metrics
    assert metrics["phase"].tolist() == case["phase"] and metrics["step"].tolist() == case["step"]
    for column, values in case["metrics"].items():
        for got, want in zip(metrics[column], values):
            if want is None:
                assert math.isnan(got), column
            else:
                assert got == pytest.approx(want, abs=2e-4, rel=1e-3), column
    for key, want in case["summary"].items():
        assert result.summary[key] == pytest.approx(want, abs=2e-4, rel=1e-3), key
    final = result.history[(result.history.phase == "daa") & (result.history.step == PINNED["settings"]["daa_steps"])]
    assert final["prob"].tolist() == pytest.approx(case["final_probs"], abs=2e-4)
