"""Our ``preference_loss`` against TRL's DPOTrainer loss code on identical log-prob tensors.

TRL computes its loss inside ``DPOTrainer._compute_loss`` from the model's per-token log-probs;
we call that method with a stand-in ``self`` and a stand-in model that returns the given
per-token log-probs, so TRL's own code (sum over the completion, log-ratios, its ``g``) runs on
exactly the tensors ours sees. Mapping (documented in ``treemdp.losses``):
DPO == ``sigmoid`` and SLiC == ``hinge`` at the same beta; our IPO on per-token mean log-probs
== beta^2 * TRL ``ipo`` with TRL beta (tau) = beta / 2.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from treemdp.losses import preference_loss, trl_ipo_equivalent_beta

trl = pytest.importorskip("trl")
from trl import DPOTrainer  # noqa: E402


def trl_loss(per_token, completion_mask, ref_chosen, ref_rejected, *, loss_type, beta):
    """TRL's DPO-family loss (batch mean) via its real ``_compute_loss`` code path."""
    fake_self = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather=lambda x: x,
                                    gather_for_metrics=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0, loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, use_weighting=False, label_smoothing=0.0,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    n, t = per_token.shape

    def fake_model(**kwargs):
        return SimpleNamespace(log_probs=per_token, entropy=torch.zeros(n, t),
                               mean_logits=torch.zeros(n, t), is_top1=torch.zeros(n, t, dtype=torch.bool))

    inputs = {"input_ids": torch.zeros(n, t + 1, dtype=torch.long),
              "attention_mask": torch.ones(n, t + 1, dtype=torch.long),
              "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return DPOTrainer._compute_loss(fake_self, fake_model, inputs, return_outputs=False)


def make_inputs(seed, batch=6, t=12):
    g = torch.Generator().manual_seed(seed)
    completion_mask = torch.zeros(2 * batch, t + 1, dtype=torch.long)
    for i in range(2 * batch):  # prompt of 1..4 tokens, then a completion of random length
        start = int(torch.randint(1, 5, (1,), generator=g))
        end = int(torch.randint(start + 1, t + 2, (1,), generator=g))
        completion_mask[i, start:end] = 1
    shift = completion_mask[:, 1:].double()
    per_token = (-3 * torch.rand(2 * batch, t, generator=g, dtype=torch.double)) * shift
    ref = (-3 * torch.rand(2 * batch, t, generator=g, dtype=torch.double)) * shift
    ref_logps = ref.sum(1)
    return per_token, completion_mask, shift, ref_logps[:batch], ref_logps[batch:]


def ours(per_token, shift, ref_w, ref_l, *, loss, beta, average=False):
    logps = per_token.sum(1)
    refs = torch.cat([ref_w, ref_l])
    if average:
        n_tok = shift.sum(1)
        logps, refs = logps / n_tok, refs / n_tok
    pi_w, pi_l = logps.chunk(2)
    ref_w, ref_l = refs.chunk(2)
    return preference_loss(pi_w, pi_l, ref_w, ref_l, beta=beta, loss=loss).mean()


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("loss, loss_type", [("dpo", "sigmoid"), ("slic", "hinge")])
@pytest.mark.parametrize("seed", [0, 1])
def test_dpo_and_slic_equal_trl(loss, loss_type, beta, seed):
    per_token, mask, shift, ref_w, ref_l = make_inputs(seed)
    a = per_token.clone().requires_grad_(True)
    b = per_token.clone().requires_grad_(True)
    mine = ours(a, shift, ref_w, ref_l, loss=loss, beta=beta)
    theirs = trl_loss(b, mask, ref_w, ref_l, loss_type=loss_type, beta=beta)
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    mine.backward()
    theirs.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    assert a.grad.abs().sum() > 0 or loss == "slic"  # hinge may be saturated


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_ipo_equals_trl_after_conversion(beta, seed):
    per_token, mask, shift, ref_w, ref_l = make_inputs(seed)
    a = per_token.clone().requires_grad_(True)
    b = per_token.clone().requires_grad_(True)
    mine = ours(a, shift, ref_w, ref_l, loss="ipo", beta=beta, average=True)
    theirs = trl_loss(b, mask, ref_w, ref_l, loss_type="ipo", beta=trl_ipo_equivalent_beta(beta))
    torch.testing.assert_close(mine, beta ** 2 * theirs, rtol=1e-10, atol=1e-12)
    mine.backward()
    theirs.backward()
    torch.testing.assert_close(a.grad, beta ** 2 * b.grad, rtol=1e-10, atol=1e-14)
    assert a.grad.abs().sum() > 0


def test_a_wrong_mapping_is_caught():
    """The comparison can fail: IPO with TRL's beta taken unchanged does not match."""
    per_token, mask, shift, ref_w, ref_l = make_inputs(3)
    mine = ours(per_token, shift, ref_w, ref_l, loss="ipo", beta=0.1, average=True)
    theirs = trl_loss(per_token, mask, ref_w, ref_l, loss_type="ipo", beta=0.1)
    assert not torch.allclose(mine, 0.1 ** 2 * theirs)


def test_one_training_step_equals_trls(tiny, prefs_small, tmp_path):
    """One SGD step of DPO on 8 pairs from the same weights: treemdp (shared-prompt forward,
    ``tokenization="trl"``, ``truncation="keep_start"``) and TRL 1.16's DPOTrainer end with the
    same weights. The batch is the whole data set, so the order TRL draws it in does not matter.
    Two rows differ between the conventions, so ``tokenization="default"`` fails this test."""
    import json

    datasets = pytest.importorskip("datasets")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from treemdp.llm.train import LLMConfig, train

    rows = [json.loads(line) for line in prefs_small.read_text().splitlines()[:8]]
    # two rows where the conventions differ: a space merging across the boundary, an EOS in text
    rows[0]["prompt"] += " "
    rows[0]["chosen"], rows[0]["rejected"] = rows[0]["chosen"].lstrip(), rows[0]["rejected"].lstrip()
    rows[1]["chosen"] += "<|endoftext|>"
    data = tmp_path / "pairs8.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lr, beta = 0.5, 0.1
    train(LLMConfig(phase="daa", model=str(tiny), data=str(data), out=str(tmp_path / "ours"),
                      loss="dpo", beta=beta, optimizer="sgd", lr=lr, warmup_steps=0, batch_size=8,
                      grad_accum=1, max_steps=1, max_length=128, max_prompt_length=96,
                      truncation="keep_start", tokenization="trl", device="cpu",
                      precision="fp32", progress=False))
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours" / "final")

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), loss_type=["sigmoid"], beta=beta,
                     learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
                     optim="sgd", weight_decay=0.0, max_grad_norm=0.0,
                     per_device_train_batch_size=8, gradient_accumulation_steps=1, max_steps=1,
                     max_length=128, bf16=False, fp16=False, save_strategy="no",
                     report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                     logging_steps=10 ** 6, dataloader_num_workers=0)
    DPOTrainer(model=policy, ref_model=ref, args=args, processing_class=AutoTokenizer.from_pretrained(tiny),
               train_dataset=datasets.Dataset.from_list(rows)).train()

    start = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    theirs, mine = policy.state_dict(), ours.state_dict()
    moved = max((theirs[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the step did something
    for key in start:
        torch.testing.assert_close(mine[key], theirs[key], atol=2e-6, rtol=1e-5, msg=key)
