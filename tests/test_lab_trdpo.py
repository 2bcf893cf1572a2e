"""TR-DPO reference updates in the lab and the verdict table (issue 20)."""

import pytest

from treemdp.errors import UserError
from treemdp.lab.config import LabConfig
from treemdp.lab.runner import run_lab
from treemdp.lab.trdpo import markdown, verdict

SMALL = dict(tree="2x3", pairs=8, demos=8, sft_steps=20, steps=12, hidden_size=8, log_every=1)


def kl_curve(result):
    return result.curve.set_index("step")["kl_to_reference"]


def test_lab_reference_updates_start_at_the_first_update():
    frozen, never, moving = run_lab([LabConfig(**SMALL), LabConfig(**SMALL, ref_sync_steps=50),
                                     LabConfig(**SMALL, ref_sync_steps=4, ref_mixup_alpha=0.5)])
    assert kl_curve(never).tolist() == kl_curve(frozen).tolist()
    # the update before step 4 changes the gradient of step 4, so the policy differs from step 5
    assert kl_curve(moving).loc[:4].tolist() == kl_curve(frozen).loc[:4].tolist()
    assert kl_curve(moving).loc[5:].tolist() != pytest.approx(kl_curve(frozen).loc[5:].tolist())


def test_lab_rejects_bad_reference_update_settings():
    with pytest.raises(UserError, match="ref_mixup_alpha"):
        LabConfig(ref_mixup_alpha=2.0).validate()
    with pytest.raises(UserError, match="ref_sync_steps"):
        LabConfig(ref_sync_steps=-3).validate()


def test_verdict_table_has_one_row_per_setting():
    settings = {"frozen": {}, "hard": {"ref_sync_steps": 4}}
    table = verdict(seeds=range(2), steps=12, settings=settings,
                    **{k: v for k, v in SMALL.items() if k != "steps"})
    assert table["reference"].tolist() == ["frozen", "hard"]
    assert set(table["runs with a gold hump"]) <= {"0/2", "1/2", "2/2"}
    text = markdown(table)
    assert text.splitlines()[0].startswith("| reference | peak OOD mass") and len(text.splitlines()) == 4
