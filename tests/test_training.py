"""SFT then DAA: behaviour, determinism, schema, many preferences, divergence."""

import dataclasses

import pytest
import torch

from treemdp import TreeMDP, make_dataset, trajectory_log_probs
from treemdp.training import TrainConfig, TrainingDiverged, train

FAST = dict(sft_steps=150, daa_steps=60, log_every=10, progress=False)


@pytest.mark.parametrize("policy,cell", [("rnn", "gru"), ("rnn", "lstm"), ("tabular", "gru")])
def test_sft_brings_each_demonstration_near_one_third(policy, cell):
    result = train(policy=policy, cell=cell, sft_steps=200, daa_steps=0, progress=False,
                   sft_lr=0.05 if policy == "tabular" else 1e-2)
    final = result.history[(result.history.phase == "sft") & (result.history.step == 200)]
    demo = final[final.in_distribution]["prob"]
    assert len(demo) == 3
    assert ((demo - 1 / 3).abs() < 0.05).all(), demo.tolist()
    assert abs(final["prob"].sum() - 1) < 1e-6


@pytest.mark.parametrize("loss", ["dpo", "ipo", "slic"])
def test_daa_raises_chosen_over_rejected(loss):
    result = train(loss=loss, beta=0.1, **FAST)
    m = result.metrics[result.metrics.phase == "daa"]
    first, last = m.iloc[0], m.iloc[-1]
    assert abs(first["chosen_prob"] - first["rejected_prob"]) < 0.05  # both ~1/3 after SFT
    # the margin h = log(pi_w/ref_w) - log(pi_l/ref_l) grows and the loss falls; the chosen
    # probability itself may fall too (mass leaves for OOD trajectories: the paper's point)
    import math
    h = math.log(last["chosen_prob"] / first["chosen_prob"]) - math.log(last["rejected_prob"] / first["rejected_prob"])
    assert h > 1.0 and last["loss"] < first["loss"]
    assert last["rejected_prob"] < first["rejected_prob"]
    s = result.summary
    assert s["final_chosen_prob"] > s["final_rejected_prob"]
    # probabilities of every logged step sum to 1
    sums = result.history.groupby(["phase", "step"])["prob"].sum()
    assert ((sums - 1).abs() < 1e-6).all()
    with torch.no_grad():
        assert abs(trajectory_log_probs(result.policy).exp().sum().item() - 1) < 1e-6


def test_reference_is_frozen_sft_policy_and_kl_is_exact():
    result = train(**FAST)
    with torch.no_grad():
        ref = trajectory_log_probs(result.reference)
        pol = trajectory_log_probs(result.policy)
    sft_end = result.history[(result.history.phase == "sft") & (result.history.step == 150)]["prob"]
    torch.testing.assert_close(ref.exp().double(), torch.tensor(sft_end.to_numpy()), atol=1e-6, rtol=0)
    assert all(not p.requires_grad for p in result.reference.parameters())
    assert abs(result.summary["kl_to_reference"] - float((pol.exp() * (pol - ref)).sum())) < 1e-5


def test_same_seed_bit_identical_history():
    a, b = train(seed=4, **FAST), train(seed=4, **FAST)
    assert a.history.equals(b.history) and a.metrics.equals(b.metrics)
    c = train(seed=5, **FAST)
    assert not a.history["prob"].equals(c.history["prob"])


def test_summary_peak_is_the_max_over_every_step():
    result = train(log_every=1000, sft_steps=150, daa_steps=80, progress=False)
    logged_max = result.history[(result.history.phase == "daa") & ~result.history.in_distribution] \
        .groupby("step")["prob"].sum().max()
    assert result.summary["peak_ood_mass"] >= logged_max - 1e-9
    assert 0 <= result.summary["peak_ood_step"] <= 80
    keys = {"loss", "beta", "seed", "final_in_distribution_mass", "final_ood_mass", "peak_ood_mass",
            "peak_ood_step", "final_chosen_prob", "final_rejected_prob", "kl_to_reference"}
    assert keys <= set(result.summary)
    assert abs(result.summary["final_in_distribution_mass"] + result.summary["final_ood_mass"] - 1) < 1e-6


def test_many_preferences_and_other_tree_shapes():
    mdp = TreeMDP(2, 4)
    data = make_dataset(mdp, [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]],
                        [{"chosen": [1, 1, 1, 1], "rejected": [0, 0, 0, 0]},
                         {"chosen": [0, 1, 0, 1], "rejected": [0, 0, 0, 0]}])
    result = train(branching=2, depth=4, dataset=data, **FAST)
    assert result.history.trajectory.nunique() == 16
    assert result.summary["final_rejected_prob"] < 0.05


def test_large_tree_logs_in_distribution_and_top_ood_only():
    mdp = TreeMDP(4, 7)
    data = make_dataset(mdp, [[0] * 7, [1] * 7], [{"chosen": [1] * 7, "rejected": [0] * 7}])
    result = train(branching=4, depth=7, dataset=data, hidden_size=8, sft_steps=3, daa_steps=2,
                   log_every=1, history_limit=1000, progress=False)
    per_step = result.history.groupby(["phase", "step"]).size()
    assert (per_step == 12).all()  # 2 in-distribution + top-10 OOD


def test_divergence_stops_with_the_step():
    with pytest.raises(TrainingDiverged, match="sft step 1"):
        train(sft_lr=1e38, optimizer="sgd", sft_steps=5, daa_steps=0, progress=False)


@pytest.mark.parametrize("field,value,message", [
    ("beta", 0.0, "beta"), ("beta", -1.0, "beta"), ("beta", float("nan"), "beta"), ("beta", float("inf"), "beta"),
    ("loss", "nonsense", "unknown loss"), ("cell", "transformer", "unknown cell"), ("optimizer", "lion", "unknown optimizer"),
    ("policy", "mlp", "unknown policy"), ("branching", 1, "branching"), ("depth", 0, "depth"),
    ("sft_lr", 0.0, "sft_lr"), ("daa_steps", -1, "daa_steps"),
])
def test_bad_config_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainConfig(), **{field: value}).validate()
