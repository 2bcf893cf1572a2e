"""What a TRL user expects of the LLM track (issue 20): no silent damage, files a cluster can
share, TRL-like logging, reruns from config.json, schedules and precision, LoRA, reference
updates. Every test drives the public CLI or library on the tiny models (16 pairs, 1-4 steps)."""

import csv
import errno
import json
import math
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch


from .conftest import DATA, ENV, head, treemdp_cli
from .test_cli_errors import assert_user_error, run
from .test_reliability import daa  # one step of 4 of the 16 pairs (conftest's pairs16)


def assert_one_error(code, err, *fragments):
    """Exit 2, no traceback, exactly one ``error:`` line holding every fragment (progress lines
    a run printed before failing are allowed)."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], err


def metrics(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def weights(folder):
    from safetensors.torch import load_file
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() \
        else "model.safetensors"
    return load_file(str(folder / name))


def copy_tokenizer(src, dst):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dst / f)


@pytest.fixture(scope="module")
def gpt2_dropout(tiny, tmp_path_factory):
    """A tiny GPT-2 (dropout 0.1 everywhere, as GPT-2 ships) with the tiny model's tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from treemdp.llm.models import load_tokenizer
    tok = load_tokenizer(str(tiny))
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2") / "gpt2-dropout"
    GPT2LMHeadModel(config).save_pretrained(path)
    copy_tokenizer(tiny, path)
    return path


# ---------------------------------------------------------------- 1. names and parts

def test_llm_classes_have_their_own_names_and_the_old_ones_warn():
    import treemdp.llm as llm
    from treemdp.llm import train as trainer
    assert trainer.LLMConfig().phase == "daa" and trainer.LLMRun.__name__ == "LLMRun"
    for old, new in (("TrainConfig", "LLMConfig"), ("RunResult", "LLMRun")):
        with pytest.warns(DeprecationWarning, match=f"use {new}"):
            assert getattr(trainer, old) is getattr(trainer, new)
        with pytest.warns(DeprecationWarning):
            assert getattr(llm, old) is getattr(trainer, new)
    for part in ("prepare_run", "reference_table", "train_step", "save_checkpoint", "MetricsLog"):
        assert callable(getattr(trainer, part))


def test_llm_does_not_import_the_toy_training_module():
    code = ("import sys, treemdp.llm.train, treemdp.cli.llm; "
            "print('treemdp.training' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_train_is_made_of_its_parts(tiny, pairs16, tmp_path):
    """prepare_run + train_step give the numbers train() logs (one step, same seed)."""
    from treemdp.llm.train import LLMConfig, prepare_run, train, train_step
    common = dict(phase="daa", model=str(tiny), data=str(pairs16), batch_size=4, max_steps=2,
                  progress=False, lr=3e-4)
    logged = train(LLMConfig(out=str(tmp_path / "a"), **common)).metrics
    run_state = prepare_run(LLMConfig(out=str(tmp_path / "b"), **common))
    first = train_step(run_state)
    assert run_state.step == 1
    assert first["loss"] == pytest.approx(float(logged[0]["loss"]), abs=0, rel=0)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference


# ---------------------------------------------------------------- 2. no silent damage

def test_model_folder_without_tokenizer_is_refused(capsys, tiny, pairs16, tmp_path):
    from transformers import AutoModelForCausalLM
    bare = tmp_path / "bare"
    AutoModelForCausalLM.from_pretrained(tiny).save_pretrained(bare)  # no tokenizer files
    code, err = daa(capsys, bare, pairs16, tmp_path / "o")
    assert_user_error(code, err, str(bare), "no tokenizer", "tokenizer.save_pretrained")
    assert not (tmp_path / "o" / "final").exists()


def test_degenerate_tokenizer_is_refused(capsys, tiny, pairs16, tmp_path):
    """transformers' two-token tokenizer (what it builds without vocabulary files), saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    bare = tmp_path / "bare"
    AutoModelForCausalLM.from_pretrained(tiny).save_pretrained(bare)
    empty = AutoTokenizer.from_pretrained(bare)
    assert empty("some text", add_special_tokens=False)["input_ids"] == []
    empty.save_pretrained(bare)
    code, err = daa(capsys, bare, pairs16, tmp_path / "o")
    assert_user_error(code, err, str(bare), "turns text into no tokens")


class DroppingTokenizer:
    """A tokenizer that loses every character it does not know: ``x`` and case."""
    eos_token_id, eos_token, bos_token_id = 0, "<eos>", 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text.lower() if c != "x"]}


@pytest.mark.parametrize("row, fragment", [
    ({"prompt": "p", "chosen": "xxx", "rejected": "b"}, "the chosen text tokenises to no tokens"),
    ({"prompt": "xx", "chosen": "a", "rejected": "b"}, "the prompt text tokenises to no tokens"),
    ({"prompt": "p", "chosen": "Same", "rejected": "same"}, "chosen and rejected differ as text"),
])
def test_data_the_tokenizer_damages_is_refused(row, fragment):
    from treemdp.errors import UserError
    from treemdp.llm.data import check_tokenized, tokenize_rows
    tok = DroppingTokenizer()
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    rows = [good, row]
    examples, _ = tokenize_rows(rows, tok, kind="pairs", max_length=64, max_prompt_length=32)
    check_tokenized(rows[:1], examples[:1], tok, kind="pairs", path="d.jsonl", model="M")
    with pytest.raises(UserError, match=f"d.jsonl: row 2: {fragment}.*tokenizer of M"):
        check_tokenized(rows, examples, tok, kind="pairs", path="d.jsonl", model="M")


def test_dropout_is_off_by_default_and_step1_loss_is_log2(capsys, gpt2_dropout, pairs16,
                                                          tmp_path):
    """TRL's disable_dropout: with policy = reference the first DPO loss is exactly log 2
    (up to the float sums); --keep-dropout keeps GPT-2's 0.1 dropout and the loss moves off it."""
    assert daa(capsys, gpt2_dropout, pairs16, tmp_path / "off")[0] == 0
    assert float(metrics(tmp_path / "off")[0]["loss"]) == pytest.approx(math.log(2), abs=2e-6)
    assert float(metrics(tmp_path / "off")[0]["reward_margin"]) == pytest.approx(0, abs=2e-6)
    assert daa(capsys, gpt2_dropout, pairs16, tmp_path / "on", "--keep-dropout")[0] == 0
    assert abs(float(metrics(tmp_path / "on")[0]["loss"]) - math.log(2)) > 1e-4


def test_disable_dropout_zeroes_every_rate(gpt2_dropout):
    from treemdp.llm.models import load_model
    from treemdp.llm.train import disable_dropout
    model = load_model(str(gpt2_dropout))
    assert disable_dropout(model) > 0
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    model.train()
    ids = torch.arange(1, 9)[None]
    assert torch.equal(model(ids).logits, model(ids).logits)  # deterministic in training mode


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(
        capsys, tiny, pairs16, tmp_path, monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("trainer_state.pt") and ".checkpoint-2.tmp-" in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    code, err = daa(capsys, tiny, pairs16, out, "--max-steps", "3", "--save-every", "1")
    assert_one_error(code, err, f"cannot write {out / 'checkpoint-2'}", "No space left",
                      f"the last checkpoint is {out / 'checkpoint-1'} (intact)", "--resume")
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]
    assert torch.load(out / "checkpoint-1" / "trainer_state.pt", weights_only=False)["step"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    assert daa(capsys, tiny, pairs16, out, "--max-steps", "3", "--save-every", "1",
               "--resume")[0] == 0
    assert [int(r["step"]) for r in metrics(out)] == [1, 2, 3]


def test_a_failing_judge_is_one_line_naming_it(capsys, tiny, pairs16, tmp_path, monkeypatch):
    mod = tmp_path / "badjudge.py"
    mod.write_text("def judge(prompts, completions, references):\n    return len(None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = run(capsys, "llm", "eval", "--model", tiny, "--ref", tiny, "--data", pairs16,
                    "--judge", "badjudge:judge", "--n-prompts", "2", "--samples", "1",
                    "--max-new-tokens", "4")
    assert_one_error(code, err, "judge badjudge:judge failed: TypeError")


@pytest.mark.parametrize("body, message", [
    ("return [2.0 for _ in completions]", "judge outjudge:judge"),          # a raw score, not a win probability
    ("return [float('nan') for _ in completions]", "judge outjudge:judge"),  # not finite
])
def test_a_judge_answering_outside_0_1_is_one_line(capsys, tiny, pairs16, tmp_path, monkeypatch, body, message):
    mod = tmp_path / "outjudge.py"
    mod.write_text(f"def judge(prompts, completions, references):\n    {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = run(capsys, "llm", "eval", "--model", tiny, "--ref", tiny, "--data", pairs16,
                    "--judge", "outjudge:judge", "--n-prompts", "2", "--samples", "1",
                    "--max-new-tokens", "4")
    assert_one_error(code, err, message)


# ---------------------------------------------------------------- 3. files a cluster can share

def test_atomic_directory_honours_the_umask(tmp_path):
    import tempfile
    from treemdp.runs import atomic_directory
    old = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "run") as tmp:
            fd, name = tempfile.mkstemp(dir=tmp)  # 0600, as safetensors writes
            os.close(fd)
            os.rename(name, tmp / "weights.bin")
            (tmp / "sub").mkdir()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "run" / "weights.bin").stat().st_mode) == 0o640


def test_run_folders_and_weights_are_readable_by_the_group(capsys, tiny, pairs16, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert daa(capsys, tiny, pairs16, out, "--max-steps", "2", "--save-every", "1")[0] == 0
    finally:
        os.umask(old)
    for folder in (out / "checkpoint-1", out / "final"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tiny / "model.safetensors").stat().st_mode) == 0o644


def test_resume_removes_leftovers_of_a_killed_write(capsys, tiny, pairs16, tmp_path):
    out = tmp_path / "run"
    assert daa(capsys, tiny, pairs16, out, "--max-steps", "3", "--save-every", "1",
               "--stop-after", "1")[0] == 0
    (out / ".checkpoint-2.tmp-abc123").mkdir()  # a SIGKILL during the write of checkpoint-2
    (out / ".checkpoint-2.tmp-abc123" / "model.safetensors").write_bytes(b"half")
    (out / ".config.json.tmp-1-ff").write_text("{")
    code, err = daa(capsys, tiny, pairs16, out, "--max-steps", "3", "--save-every", "1",
                    "--resume")
    assert code == 0 and "removed .checkpoint-2.tmp-abc123" in err
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- 4. logging like TRL

def test_logged_lr_is_the_steps_own_and_grad_norm_is_before_clipping(capsys, tiny, pairs16,
                                                                     tmp_path):
    out = tmp_path / "run"
    assert daa(capsys, tiny, pairs16, out, "--max-steps", "3", "--warmup-steps", "2",
               "--max-grad-norm", "1e-6")[0] == 0
    rows = metrics(out)
    # warm-up (step + 1) / (warmup + 1): steps 1, 2, 3 train at 1/3, 2/3 and 3/3 of 3e-4
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-4, 2e-4, 3e-4], rel=1e-12)
    assert all(float(r["grad_norm"]) > 1e-3 for r in rows)  # measured before the 1e-6 clip
    for r in rows:
        assert float(r["reward_margin"]) == pytest.approx(
            float(r["reward_chosen"]) - float(r["reward_rejected"]), abs=1e-6)
        assert float(r["tokens_per_s"]) > 0
        assert {"logp_chosen", "logp_rejected", "reward_accuracy"} <= set(r)
    assert not (out / "tensorboard").exists()  # --report-to none is the default


def test_report_to_tensorboard_writes_events(capsys, tiny, pairs16, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert daa(capsys, tiny, pairs16, out, "--report-to", "tensorboard")[0] == 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_report_to_wandb_without_wandb_says_how(capsys, tiny, pairs16, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    code, err = daa(capsys, tiny, pairs16, tmp_path / "o", "--report-to", "wandb")
    assert_user_error(code, err, "pip install wandb")  # before any work
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- 5. rerun from config.json

def test_rerun_from_config_is_bit_for_bit(capsys, tiny, tmp_path):
    data = head(DATA / "tldr_sft.jsonl", tmp_path / "sft16.jsonl", 16)
    first = tmp_path / "first"
    assert run(capsys, "llm", "sft", "--model", tiny, "--data", data, "--out", first,
               "--no-progress", "--batch-size", "4", "--max-steps", "3", "--lr", "1e-3",
               "--lr-scheduler", "cosine", "--weight-decay", "0.01")[0] == 0
    again = tmp_path / "again"
    assert run(capsys, "llm", "sft", "--config", first / "config.json", "--out", again,
               "--no-progress")[0] == 0
    assert [r["loss"] for r in metrics(again)] == [r["loss"] for r in metrics(first)]
    a, b = weights(first / "final"), weights(again / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((again / "config.json").read_text())
    assert saved["lr_scheduler"] == "cosine" and saved["weight_decay"] == 0.01
    code, err = run(capsys, "llm", "daa", "--config", first / "config.json", "--out",
                    tmp_path / "x")
    assert_user_error(code, err, "is a sft run", "treemdp llm sft")


def test_user_objective_records_its_file_and_a_rerun_says_how_to_find_it(capsys, tiny, pairs16,
                                                                       tmp_path):
    import hashlib
    import importlib
    folder = tmp_path / "objectives"
    folder.mkdir()
    source = folder / "myloss.py"
    source.write_text("import torch.nn.functional as F\n\n\ndef g(x):\n"
                      "    return -F.logsigmoid(x)\n")
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        assert daa(capsys, tiny, pairs16, tmp_path / "run", "--loss", "myloss:g")[0] == 0
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("myloss", None)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["loss"] == "myloss:g"
    assert saved["loss_source"] == {"path": str(source),
                                    "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    proc = treemdp_cli("llm", "daa", "--config", tmp_path / "run" / "config.json", "--out",
                       tmp_path / "again", check=False)  # a new process: myloss not importable
    assert_user_error(proc.returncode, proc.stderr, "cannot load loss 'myloss:g'", f"it came from {source}",
                      f"PYTHONPATH={folder}", f"--loss {source}:g")


# ---------------------------------------------------------------- 6. schedules and precision

def test_lr_factor_closed_forms():
    from treemdp.llm.train import lr_factor
    # warm-up 1 of 4 steps: (s + 1) / 2, then p = (s - 1) / 3
    assert [lr_factor(s, 1, 4, "constant") for s in range(4)] == [0.5, 1, 1, 1]
    assert [lr_factor(s, 1, 4, "linear") for s in range(4)] == pytest.approx([0.5, 1, 2 / 3, 1 / 3])
    assert [lr_factor(s, 1, 4, "cosine") for s in range(4)] == pytest.approx([0.5, 1, 0.75, 0.25])
    assert [lr_factor(s, 0, 2, "constant") for s in range(2)] == [1, 1]


def test_cosine_schedule_is_what_the_steps_train_at(capsys, tiny, pairs16, tmp_path):
    out = tmp_path / "run"
    assert daa(capsys, tiny, pairs16, out, "--max-steps", "4", "--warmup-steps", "1",
               "--lr-scheduler", "cosine", "--lr", "1e-3")[0] == 0
    assert [float(r["lr"]) for r in metrics(out)] == pytest.approx([5e-4, 1e-3, 7.5e-4, 2.5e-4])


def test_weight_decay_is_the_l2_step_of_sgd(capsys, tiny, pairs16, tmp_path):
    """One SGD step: w1(wd) = w1(0) - lr * wd * w0 (torch's SGD adds wd * w to the gradient)."""
    lr, wd = 1e-2, 0.5
    common = ("--optimizer", "sgd", "--warmup-steps", "0", "--lr", str(lr), "--batch-size", "16")
    assert daa(capsys, tiny, pairs16, tmp_path / "plain", *common)[0] == 0
    assert daa(capsys, tiny, pairs16, tmp_path / "wd", *common, "--weight-decay", str(wd))[0] == 0
    w0, plain, decayed = weights(tiny), weights(tmp_path / "plain" / "final"), \
        weights(tmp_path / "wd" / "final")
    for k in w0:
        assert torch.allclose(decayed[k], plain[k] - lr * wd * w0[k], atol=1e-7), k


def test_fp16_on_cpu_says_what_to_use(capsys, tiny, pairs16, tmp_path):
    code, err = daa(capsys, tiny, pairs16, tmp_path / "o", "--precision", "fp16",
                    "--device", "cpu")
    assert_user_error(code, err, "--precision fp16 needs a CUDA GPU", "bf16 or fp32")


def test_save_total_limit_keeps_the_newest_checkpoints(capsys, tiny, pairs16, tmp_path):
    out = tmp_path / "run"
    assert daa(capsys, tiny, pairs16, out, "--max-steps", "4", "--save-every", "1",
               "--save-total-limit", "2")[0] == 0
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == \
        ["checkpoint-2", "checkpoint-3"]
    assert (out / "final" / "trainer_state.pt").is_file()


# ---------------------------------------------------------------- 8. reference updates (TR-DPO)

def test_hard_reference_update_makes_the_next_loss_log2(capsys, tiny, pairs16, tmp_path):
    """ref <- pi after step 1: at step 2 the policy is its reference again (margin 0, log 2)."""
    out = tmp_path / "sync"
    assert daa(capsys, tiny, pairs16, out, "--max-steps", "2", "--ref-sync-steps", "1")[0] == 0
    rows = metrics(out)
    assert float(rows[1]["loss"]) == pytest.approx(math.log(2), abs=2e-6)
    assert float(rows[1]["reward_margin"]) == pytest.approx(0, abs=2e-6)
    assert daa(capsys, tiny, pairs16, tmp_path / "frozen", "--max-steps", "2")[0] == 0
    assert abs(float(metrics(tmp_path / "frozen")[1]["loss"]) - math.log(2)) > 1e-4


def test_soft_reference_update_mixes_the_weights_and_resumes_bit_for_bit(capsys, tiny, pairs16,
                                                                         tmp_path):
    from treemdp.llm.data import PAIR_FIELDS, read_jsonl, tokenize_rows
    from treemdp.llm.logprobs import log_prob_table
    from treemdp.llm.models import load_model, load_tokenizer
    args = ("--max-steps", "3", "--save-every", "1", "--ref-sync-steps", "1",
            "--ref-mixup-alpha", "0.25")
    out = tmp_path / "soft"
    assert daa(capsys, tiny, pairs16, out, *args)[0] == 0
    # the reference after step 1: 0.25 * pi_1 + 0.75 * pi_0, scored on every pair
    state = torch.load(out / "checkpoint-1" / "trainer_state.pt", weights_only=False)
    mixed = load_model(str(tiny))
    pi1 = load_model(str(out / "checkpoint-1")).state_dict()
    mixed.load_state_dict({k: 0.25 * pi1[k] + 0.75 * v for k, v in mixed.state_dict().items()})
    examples, _ = tokenize_rows(read_jsonl(pairs16, PAIR_FIELDS), load_tokenizer(str(tiny)),
                                kind="pairs", max_length=128, max_prompt_length=96)
    sums, _ = log_prob_table(mixed, examples, 0, "cpu", 4, pairs=True, shared=True)
    assert torch.allclose(state["ref_table"], sums, atol=1e-4)
    resumed = tmp_path / "resumed"
    assert daa(capsys, tiny, pairs16, resumed, *args, "--stop-after", "1")[0] == 0
    for _ in range(2):  # --stop-after 1 is kept from the run's config: one step each
        assert daa(capsys, tiny, pairs16, resumed, *args, "--resume")[0] == 0
    assert [r["loss"] for r in metrics(resumed)] == [r["loss"] for r in metrics(out)]
    a, b = weights(out / "final"), weights(resumed / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- 7. LoRA

def test_lora_step_equals_the_step_computed_by_hand(capsys, tiny, pairs16, tmp_path):
    """One SGD step on all 16 pairs: only the adapters move, by -lr * the gradient of
    mean(-log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))) with ref = the base."""
    peft = pytest.importorskip("peft")
    import torch.nn.functional as F
    from treemdp.llm.data import PAIR_FIELDS, collate_pairs, read_jsonl, tokenize_rows
    from treemdp.llm.logprobs import sequence_log_probs
    from treemdp.llm.models import load_model, load_tokenizer
    lr, beta = 0.5, 0.1
    out = tmp_path / "lora"
    assert daa(capsys, tiny, pairs16, out, "--optimizer", "sgd", "--warmup-steps", "0",
               "--lr", str(lr), "--batch-size", "16", "--lora-r", "2", "--lora-alpha", "4",
               "--lora-target-modules", "query_key_value,dense_4h_to_h")[0] == 0
    saved = weights(out / "final")
    assert saved and all("lora_" in k for k in saved)  # adapters only, no base weights
    assert not (out / "final" / "model.safetensors").exists()

    torch.manual_seed(0)  # the run seeds the adapters' A matrices with --seed 0
    model = peft.get_peft_model(load_model(str(tiny)), peft.LoraConfig(
        r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["query_key_value", "dense_4h_to_h"],
        task_type="CAUSAL_LM"))
    examples, _ = tokenize_rows(read_jsonl(pairs16, PAIR_FIELDS), load_tokenizer(str(tiny)),
                                kind="pairs", max_length=128, max_prompt_length=96)
    batch = collate_pairs(examples, 0)  # [chosen rows; rejected rows]
    with torch.no_grad(), model.disable_adapter():
        ref = sequence_log_probs(model, batch)[0].view(2, -1)
    pi = sequence_log_probs(model, batch)[0].view(2, -1)
    loss = -F.logsigmoid(beta * ((pi[0] - ref[0]) - (pi[1] - ref[1]))).mean()
    loss.backward()
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    moved = 0
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert not p.requires_grad and p.grad is None
            continue
        key = name.replace(".default", "")
        expected = p.detach() - lr * p.grad
        assert torch.allclose(saved[key], expected, atol=1e-6), name
        moved += int(not torch.equal(saved[key], p.detach()))
    assert moved > 0  # B moves (A's gradient is 0 while B = 0)


def test_lora_resumes_bit_for_bit_and_eval_loads_the_adapters(capsys, tiny, pairs16, tmp_path):
    pytest.importorskip("peft")
    from treemdp.llm.models import load_model
    args = ("--max-steps", "3", "--save-every", "1", "--lora-r", "4", "--lr", "1e-2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert daa(capsys, tiny, pairs16, straight, *args)[0] == 0
    assert daa(capsys, tiny, pairs16, resumed, *args, "--stop-after", "1")[0] == 0
    for _ in range(2):
        assert daa(capsys, tiny, pairs16, resumed, *args, "--resume")[0] == 0
    assert [r["loss"] for r in metrics(resumed)] == [r["loss"] for r in metrics(straight)]
    a, b = weights(straight / "final"), weights(resumed / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    merged = load_model(str(straight / "final"))  # base + adapters, merged
    base = load_model(str(tiny))
    ids = torch.arange(1, 9)[None]
    assert not torch.allclose(merged(ids).logits, base(ids).logits)
    code, err = run(capsys, "llm", "eval", "--model", straight / "final", "--ref", tiny,
                    "--data", pairs16, "--judge", "none", "--n-prompts", "2", "--samples", "2",
                    "--max-new-tokens", "4")
    assert code == 0, err


def test_lora_without_peft_says_how_to_install(capsys, tiny, pairs16, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    code, err = daa(capsys, tiny, pairs16, tmp_path / "o", "--lora-r", "4")
    assert_user_error(code, err, "pip install 'treemdp[lora]'")
