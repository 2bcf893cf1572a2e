"""TR-DPO reference updates in the toy track (issue 20): exact, by enumeration."""

import math

import pytest
import torch

from treemdp.engine import ReferenceUpdates
from treemdp.errors import UserError
from treemdp.policies import make_policy
from treemdp.training import TrainConfig, train
from treemdp.tree import TreeMDP

BASE = dict(policy="tabular", sft_steps=30, daa_steps=12, daa_lr=0.05, log_every=1)


def daa_losses(result):
    m = result.metrics
    return m[m["phase"] == "daa"].set_index("step")["loss"]


def test_hard_update_every_step_keeps_the_dpo_loss_at_log2():
    """ref <- pi before every step: pi = ref whenever the loss is evaluated, so it is log 2."""
    losses = daa_losses(train(TrainConfig(**BASE, ref_sync_steps=1), progress=False))
    assert losses.loc[1:].tolist() == pytest.approx([math.log(2)] * 12, abs=1e-6)


def test_updates_change_nothing_before_the_first_one_and_never_if_never_due():
    frozen = train(TrainConfig(**BASE), progress=False)
    never = train(TrainConfig(**BASE, ref_sync_steps=100), progress=False)
    soft = train(TrainConfig(**BASE, ref_sync_steps=5, ref_mixup_alpha=0.5), progress=False)
    assert daa_losses(never).tolist() == daa_losses(frozen).tolist()
    # the first update comes before step 5 is evaluated (after 5 optimizer steps)
    assert daa_losses(soft).loc[:4].tolist() == daa_losses(frozen).loc[:4].tolist()
    assert daa_losses(soft).loc[5:].tolist() != pytest.approx(daa_losses(frozen).loc[5:].tolist())
    assert soft.summary["final_ood_mass"] != frozen.summary["final_ood_mass"]


def test_reference_updates_mix_parameters_and_enumerate_the_reference():
    mdp = TreeMDP(branching=2, depth=3)
    policy = make_policy(mdp, "tabular", seed=0)
    template = policy
    params0 = {n: p.detach()[None].clone() for n, p in policy.named_parameters()}
    params1 = {n: p + torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3 for n, p in params0.items()}
    moving = ReferenceUpdates(template, params0, template.stacked_log_probs(params0), 4, 0.25)
    for step in (0, 1, 3):
        moving.before_step(step, params1)
    assert moving.updates == 0
    moving.before_step(4, params1)
    mixed = {n: 0.25 * params1[n] + 0.75 * params0[n] for n in params0}
    assert moving.updates == 1
    assert torch.allclose(moving.ref_logp, template.stacked_log_probs(mixed), atol=1e-6)


@pytest.mark.parametrize("field, value", [("ref_sync_steps", -1), ("ref_mixup_alpha", 0.0),
                                          ("ref_mixup_alpha", 1.5)])
def test_bad_reference_update_settings(field, value):
    with pytest.raises(UserError, match=field):
        TrainConfig(**{field: value}).validate()
