"""Where the mass is: the exact buckets partition every step; their definitions by brute force."""

import json

import numpy as np
import pytest
import torch

from treemdp import TreeMDP, make_dataset
from treemdp.accounting import bucket_ids, bucket_names, shared_prefix_length
from treemdp.exact import in_distribution_mask
from treemdp.training import train


def lcp(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@pytest.mark.parametrize("branching,depth", [(2, 4), (3, 3), (4, 2)])
def test_shared_prefix_length_by_brute_force(branching, depth):
    mdp = TreeMDP(branching, depth)
    traj = mdp.trajectories().tolist()
    others = torch.tensor([0, mdp.n_trajectories // 2 + 1, mdp.n_trajectories - 1])
    got = shared_prefix_length(mdp, others).tolist()
    want = [max(lcp(t, traj[o]) for o in others.tolist()) for t in traj]
    assert got == want


def test_bucket_ids_follow_their_definitions():
    mdp = TreeMDP(3, 3)
    data = make_dataset(mdp, [[0, 0, 0], [2, 2, 2]],
                        [{"chosen": [1, 1, 0], "rejected": [0, 0, 0]}, {"chosen": [0, 0, 0], "rejected": [2, 1, 0]}])
    in_dist = in_distribution_mask(mdp, data)
    chosen, rejected = mdp.trajectory_index(data.chosen()), mdp.trajectory_index(data.rejected())
    ids = bucket_ids(mdp, in_dist, chosen, rejected).tolist()
    names = bucket_names(mdp.depth)
    traj = mdp.trajectories().tolist()
    for row, t in enumerate(traj):
        if t in ([1, 1, 0], [0, 0, 0]):
            want = "mass_chosen"  # (0,0,0) is rejected once but chosen once: chosen wins
        elif t == [2, 1, 0]:
            want = "mass_rejected"
        elif t == [2, 2, 2]:
            want = "mass_other_data"
        else:
            want = f"mass_ood_prefix{max(lcp(t, c) for c in ([1, 1, 0], [0, 0, 0]))}"
        assert names[ids[row]] == want, t


def test_buckets_partition_the_mass_at_every_step_and_match_the_history():
    result = train(sft_steps=40, daa_steps=60, log_every=1, progress=False)
    steps = result.steps
    buckets = [c for c in steps.columns if c.startswith("mass_") and c != "mass_ood"]
    np.testing.assert_allclose(steps[buckets].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(steps["mass_ood"], steps["ood_mass"], atol=1e-12)  # default set: the same
    # recompute one step's buckets from the history's probabilities
    step = result.history[(result.history.phase == "daa") & (result.history.step == 30)]
    probs = dict(zip(step.trajectory, step.prob))
    chosen = "s1-a1-s3-a1-s9-a0-s∞"
    row = steps[(steps.phase == "daa") & (steps.step == 30)].iloc[0]
    assert row["mass_chosen"] == pytest.approx(probs[chosen], abs=1e-6)
    assert row["mass_rejected"] == pytest.approx(probs["s1-a0-s2-a0-s5-a0-s∞"], abs=1e-6)
    assert row["mass_other_data"] == pytest.approx(probs["s1-a2-s4-a2-s13-a2-s∞"], abs=1e-6)
    siblings = [n for n in probs if n.startswith("s1-a1-s3-a1-s9-") and n != chosen]
    assert row["mass_ood_prefix2"] == pytest.approx(sum(probs[n] for n in siblings), abs=1e-6)
    s = result.summary
    for column in buckets + ["mass_ood"]:
        daa = steps[steps.phase == "daa"][column]
        assert s[f"peak_{column}"] == pytest.approx(daa.max()) and s[f"final_{column}"] == pytest.approx(daa.iloc[-1])


def test_in_distribution_demonstrations_only_and_from_a_file(tmp_path):
    mdp = TreeMDP(3, 3)
    data = make_dataset(mdp, [[0, 0, 0], [2, 2, 2]], [{"chosen": [1, 1, 0], "rejected": [0, 1, 0]}])
    data_mask = in_distribution_mask(mdp, data)
    demos_mask = in_distribution_mask(mdp, data, "demonstrations")
    assert data_mask.sum() == 4 and demos_mask.sum() == 2
    file = tmp_path / "ref.json"
    file.write_text(json.dumps({"trajectories": [[1, 1, 1]]}))
    assert in_distribution_mask(mdp, data, str(file)).nonzero().squeeze(1).tolist() == [13]
    common = dict(dataset=data, sft_steps=30, daa_steps=30, log_every=10, progress=False)
    default = train(**common)
    demos = train(**common, in_distribution="demonstrations")
    # the policy is the same; only what counts as OOD changes: chosen and rejected move into ood_mass
    m, d = default.metrics, demos.metrics
    np.testing.assert_allclose(d["ood_mass"], m["ood_mass"] + m["mass_chosen"] + m["mass_rejected"], atol=1e-6)
    np.testing.assert_allclose(d["mass_chosen"], m["mass_chosen"], atol=1e-7)
    from treemdp.errors import UserError
    with pytest.raises(UserError, match="in-distribution file"):
        train(**common, in_distribution=str(tmp_path / "missing.json"))
