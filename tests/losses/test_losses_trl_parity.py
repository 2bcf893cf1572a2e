"""``treemdp.losses.trl_loss`` against TRL 1.16's own ``DPOTrainer._compute_loss``, in float64.

TRL computes its loss from the model's per-token log-probs inside ``_compute_loss``. We call that
method with a stand-in ``self`` (the attributes ``DPOTrainer.__init__`` sets from a ``DPOConfig``)
and a stand-in model returning given per-token log-probs, so TRL's real loss code runs on exactly
the tensors ours sees (ours: their sums, plus the completion lengths). Checked for every loss type,
f-divergence, label smoothing and weighted combination: the batch mean, its gradients with
respect to the completion tokens' log-probs and the reference log-probs, and, where TRL's loss is per
example, each example's value (TRL on that pair alone).
"""

import dataclasses
import math
import re
import zlib
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from treemdp.losses import OBJECTIVES, TRL_LOSS_TYPES, preference_loss, trl_loss

trl = pytest.importorskip("trl")
from trl import DPOConfig, DPOTrainer  # noqa: E402

FIELDS = ("loss_type", "loss_weights", "label_smoothing", "f_divergence_type", "f_alpha_divergence_coef",
          "discopop_tau")
CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(DPOConfig)}


def config_default(name):
    f = CONFIG_FIELDS[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def trl_mean_loss(per_token, completion_mask, ref_chosen, ref_rejected, *, beta, **fields):
    """TRL's batch loss: ``DPOTrainer._compute_loss`` on a stand-in self built from DPOConfig fields."""
    cfg = {name: config_default(name) for name in FIELDS} | fields
    loss_types = [cfg["loss_type"]] if isinstance(cfg["loss_type"], str) else list(cfg["loss_type"])
    fake_self = SimpleNamespace(
        model=SimpleNamespace(training=True), args=SimpleNamespace(discopop_tau=cfg["discopop_tau"]),
        accelerator=SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, use_weighting=False,
        f_divergence_type=cfg["f_divergence_type"], f_alpha_divergence_coef=cfg["f_alpha_divergence_coef"],
        loss_types=loss_types, loss_weights=cfg["loss_weights"] or [1.0] * len(loss_types), beta=beta,
        label_smoothing=cfg["label_smoothing"], _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1)
    n, t = per_token.shape

    def fake_model(**kwargs):
        return SimpleNamespace(log_probs=per_token, entropy=torch.zeros(n, t), mean_logits=torch.zeros(n, t),
                               is_top1=torch.zeros(n, t, dtype=torch.bool))

    inputs = {"input_ids": torch.zeros(n, t + 1, dtype=torch.long),
              "attention_mask": torch.ones(n, t + 1, dtype=torch.long), "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(fake_self, fake_model, inputs, return_outputs=False)


def make_inputs(seed, batch=6, t=12, dtype=torch.float64):
    """Per-token log-probs [2B, t] (chosen rows first), completion mask [2B, t+1], refs [B] each."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2 * batch, t + 1, dtype=torch.long)
    for i in range(2 * batch):  # a prompt of 1..4 tokens, then a completion of random length
        start = int(torch.randint(1, 5, (1,), generator=g))
        end = int(torch.randint(start + 1, t + 2, (1,), generator=g))
        mask[i, start:end] = 1
    shift = mask[:, 1:].to(dtype)
    per_token = -2 * torch.rand(2 * batch, t, generator=g, dtype=dtype) * shift
    ref_per_token = (per_token + 0.25 * torch.randn(2 * batch, t, generator=g, dtype=dtype)) * shift
    ref = ref_per_token.sum(1)
    return per_token, mask, ref[:batch].clone(), ref[batch:].clone()


def ours(per_token, mask, ref_w, ref_l, *, beta, objective):
    """Our per-example losses from the sequence sums and completion lengths (torch.long [B])."""
    pi_w, pi_l = per_token.sum(1).chunk(2)
    len_w, len_l = mask.sum(1).chunk(2)
    return preference_loss(pi_w, pi_l, ref_w, ref_l, beta=beta, loss=objective,
                           chosen_lengths=len_w, rejected_lengths=len_l)


ALPHA = [("alpha_divergence", 0.5), ("alpha_divergence", 1.5), ("alpha_divergence", -0.5),
         ("alpha_divergence", 1.0)]
F_DIVS = [("forward_kl", 0.5), ("js_divergence", 0.5)] + ALPHA
F_OK = ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"]

CASES = (
    [dict(loss_type=t) for t in TRL_LOSS_TYPES if t != "exo_pair"]
    + [dict(loss_type="exo_pair", label_smoothing=1e-3), dict(loss_type="exo_pair", label_smoothing=0.1),
       dict(loss_type="robust", label_smoothing=0.1), dict(loss_type="robust", label_smoothing=0.3),
       dict(loss_type="aot", label_smoothing=0.1), dict(loss_type="aot_unpaired", label_smoothing=0.2),
       dict(loss_type="sigmoid", label_smoothing=0.2),  # TRL 1.16's sigmoid ignores label_smoothing
       dict(loss_type="discopop", discopop_tau=0.3)]
    + [dict(loss_type=t, f_divergence_type=f, f_alpha_divergence_coef=a,
            **({"label_smoothing": 1e-3} if t == "exo_pair" else {}))
       for t in F_OK for f, a in F_DIVS]
    + [dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),  # RPO as TRL writes it
       dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]),  # MPO
       dict(loss_type=["hinge", "ipo"]),
       dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 2.0], f_divergence_type="js_divergence"),
       dict(loss_type=["aot", "apo_zero", "nca_pair"], loss_weights=[0.5, 2.0, -1.0], label_smoothing=0.05)]
)


def case_id(case):
    return ",".join(f"{k}={v}" for k, v in case.items())


def needs_float32(case):
    """TRL 1.16's alpha_divergence only knows float16/bfloat16/float32 (float64: KeyError)."""
    return case.get("f_divergence_type") == "alpha_divergence" and abs(case["f_alpha_divergence_coef"] - 1) > 1e-6


def tolerance(case, dtype):
    if dtype == torch.float32:
        return dict(rtol=2e-5, atol=1e-6)
    if "exo_pair" in case["loss_type"]:  # TRL holds eps as a float32 tensor: log(eps), log(1-eps) ~1e-7 off
        return dict(rtol=1e-6, atol=1e-8)
    return dict(rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.7])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_trl_loss_equals_trl(case, beta):
    dtype = torch.float32 if needs_float32(case) else torch.float64
    tol = tolerance(case, dtype)
    per_token, mask, ref_w, ref_l = make_inputs(seed=zlib.crc32(case_id(case).encode()) % 1000, dtype=dtype)
    objective = trl_loss(**case)
    types = [case["loss_type"]] if isinstance(case["loss_type"], str) else case["loss_type"]
    assert objective.batch_coupled == any(t in ("aot", "aot_unpaired", "sft") for t in types)

    leaves_ours = [x.clone().requires_grad_(True) for x in (per_token, ref_w, ref_l)]
    leaves_trl = [x.clone().requires_grad_(True) for x in (per_token, ref_w, ref_l)]
    mine = ours(leaves_ours[0], mask, *leaves_ours[1:], beta=beta, objective=objective)
    theirs = trl_mean_loss(leaves_trl[0], mask, *leaves_trl[1:], beta=beta, **case)
    assert mine.shape == ref_w.shape and mine.dtype == dtype
    torch.testing.assert_close(mine.mean(), theirs, **tol)
    mine.mean().backward()
    theirs.backward()
    completion = mask[:, 1:].to(dtype)  # gradients on completion tokens (the stand-in model has no others)
    torch.testing.assert_close(leaves_ours[0].grad * completion, leaves_trl[0].grad * completion, **tol)
    for a, b in zip(leaves_ours[1:], leaves_trl[1:]):
        torch.testing.assert_close(a.grad, b.grad, **tol)
    assert leaves_ours[0].grad.abs().sum() > 0

    if not objective.batch_coupled:  # per example: TRL on each pair alone
        batch = ref_w.numel()
        for i in range(batch):
            rows = [i, batch + i]
            alone = trl_mean_loss(per_token[rows], mask[rows], ref_w[i:i + 1], ref_l[i:i + 1], beta=beta, **case)
            torch.testing.assert_close(mine[i].detach(), alone, **tol)


def test_every_trl_loss_type_is_covered():
    """Our loss types are exactly those DPOConfig documents, and each is in a parity case."""
    help_text = CONFIG_FIELDS["loss_type"].metadata["help"]
    assert set(re.findall(r"`'(\w+)'`", help_text)) == set(TRL_LOSS_TYPES)
    covered = {t for case in CASES for t in ([case["loss_type"]] if isinstance(case["loss_type"], str)
                                             else case["loss_type"])}
    assert covered == set(TRL_LOSS_TYPES)


def test_f_divergence_support_matches_dpoconfig():
    help_text = CONFIG_FIELDS["f_divergence_type"].metadata["help"]
    divergences, supported = help_text.split("Only the loss types", 1)
    assert set(re.findall(r"`(\w+)`", divergences)) == {"reverse_kl", "forward_kl", "js_divergence",
                                                        "alpha_divergence"}
    assert set(re.findall(r"`'(\w+)'`", supported)) == {t for t, v in TRL_LOSS_TYPES.items() if v.f_divergence}
    assert set(F_OK) == {t for t, v in TRL_LOSS_TYPES.items() if v.f_divergence}


def test_defaults_are_dpoconfig_defaults():
    defaults = OBJECTIVES["trl"].defaults
    assert config_default("loss_type") == [defaults["loss_type"]]
    for name in FIELDS[1:]:
        assert config_default(name) == defaults[name], name
    assert trl_loss().spec == "trl" and trl_loss("sigmoid", loss_weights=None).spec == "trl"


def test_a_wrong_convention_is_caught():
    """The comparison can fail: TRL's ipo normalises by length, our paper-convention ipo does not."""
    per_token, mask, ref_w, ref_l = make_inputs(3)
    trl_ipo = trl_mean_loss(per_token, mask, ref_w, ref_l, beta=0.1, loss_type="ipo")
    assert not math.isclose(ours(per_token, mask, ref_w, ref_l, beta=0.1, objective="ipo").mean().item(),
                            trl_ipo.item(), rel_tol=1e-3)
    assert not math.isclose(ours(per_token, mask, ref_w, ref_l, beta=0.1, objective="trl(loss_type=sigmoid)")
                            .mean().item(), trl_ipo.item(), rel_tol=1e-3)
    torch.testing.assert_close(ours(per_token, mask, ref_w, ref_l, beta=0.1, objective="trl(loss_type=ipo)").mean(),
                               trl_ipo)
