"""What users hit on the released commands (issue 13): every case is a one-line ``error:`` with
exit code 2 and nothing damaged, or a correct result where a traceback or a wrong number was.
Each test drives the public CLI or library on tiny budgets (16 pairs, 1-2 steps)."""

import json
import math
import shutil

import pytest
import torch

from treemdp.cli import main

from .conftest import DATA, head
from .test_cli_errors import assert_user_error, run


def daa(capsys, tiny, data, out, *extra):
    """``treemdp llm daa`` in process on 16 pairs, 1 step of 4 unless ``extra`` says otherwise."""
    return run(capsys, "llm", "daa", "--model", tiny, "--data", data, "--out", out,
               "--no-progress", "--batch-size", "4", "--max-steps", "1", "--lr", "3e-4", *extra)


@pytest.fixture(scope="module")
def daa_run(tiny, pairs16, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dpo"
    assert main(["llm", "daa", "--model", str(tiny), "--data", str(pairs16), "--out", str(out),
                 "--no-progress", "--batch-size", "4", "--max-steps", "2", "--save-every", "1",
                 "--lr", "3e-4"]) == 0
    return out


def copy_model(src, dst, *, noise=0.0, nan=False, generation=None):
    """A copy of a model folder, its weights perturbed / poisoned, with a generation config."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        if noise:
            g = torch.Generator().manual_seed(1)
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=g))
        if nan:
            next(model.parameters())[0, 0] = float("nan")
    model.save_pretrained(dst)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dst / f)
    (dst / "generation_config.json").unlink(missing_ok=True)
    if generation:
        (dst / "generation_config.json").write_text(json.dumps(generation))
    return dst


# ---------------------------------------------------------------- sampling

def test_sampling_ignores_the_model_folders_generation_config(tiny, pairs16, tmp_path):
    """A generation_config.json (repetition_penalty, top_k, ...) must not change the samples the
    KL and win rate are estimated from: evaluation documents temperature 1, full distribution."""
    from treemdp.llm.evaluate import EvalConfig, evaluate_model
    plain = copy_model(tiny, tmp_path / "plain", noise=0.05)
    biased = copy_model(plain, tmp_path / "biased", generation={
        "repetition_penalty": 3.0, "top_k": 5, "temperature": 0.5, "no_repeat_ngram_size": 2})
    cfg = EvalConfig(data=str(pairs16), ref=str(tiny), n_prompts=4, samples=4,
                     max_new_tokens=12, device="cpu", seed=3)
    a, b = evaluate_model(str(plain), cfg), evaluate_model(str(biased), cfg)
    for key in ("kl", "kl_se", "mean_length", "length_r2", "win_rate"):
        assert a[key] == b[key], key


def test_sampled_kl_matches_exact_enumeration(tiny, pairs16, tmp_path):
    """The KL estimate from samples agrees with KL(pi || ref) enumerated over every answer of up
    to two tokens (samples cut at --max-new-tokens 2), within 4 standard errors."""
    from treemdp.llm.data import PAIR_FIELDS, read_jsonl, tokenize_rows
    from treemdp.llm.evaluate import EvalConfig, evaluate_model
    from treemdp.llm.models import load_model, load_tokenizer
    policy_dir = copy_model(tiny, tmp_path / "policy", noise=0.3,
                            generation={"repetition_penalty": 5.0})
    m = evaluate_model(str(policy_dir), EvalConfig(data=str(pairs16), ref=str(tiny), n_prompts=1,
                                                   samples=600, max_new_tokens=2, device="cpu",
                                                   judge="none", batch_size=200))
    tok = load_tokenizer(str(tiny))
    (ex, *_), _ = tokenize_rows(read_jsonl(pairs16, PAIR_FIELDS), tok, kind="pairs",
                                max_length=512, max_prompt_length=384)
    policy, ref = load_model(str(policy_dir)).eval(), load_model(str(tiny)).eval()
    eos, vocab = tok.eos_token_id, policy.config.vocab_size
    ids = torch.tensor([ex.prompt_ids + [y] for y in range(vocab)])  # [V, P + 1]
    with torch.no_grad():
        lp = policy(input_ids=ids).logits.double().log_softmax(-1)  # [V, P + 1, V]
        lr = ref(input_ids=ids).logits.double().log_softmax(-1)
    first_p, first_r = lp[0, -2], lr[0, -2]  # log p(y1 | prompt), [V]
    second_p, second_r = lp[:, -1], lr[:, -1]  # log p(y2 | prompt, y1), [V, V]
    inner = (second_p.exp() * (second_p - second_r)).sum(-1)  # KL of the second token given y1
    inner[eos] = 0.0  # an answer ends at EOS
    exact = float((first_p.exp() * (first_p - first_r + inner)).sum())
    assert exact > 0.05
    assert abs(m["kl"] - exact) < 4 * m["kl_se"], (m["kl"], m["kl_se"], exact)


# ---------------------------------------------------------------- one-line errors

def test_empty_prompts_train_and_evaluate(capsys, tiny, tmp_path):
    rows = [json.loads(line) for line in (DATA / "tldr_prefs.jsonl").read_text().splitlines()[:8]]
    for row in rows:  # a prompt-less export
        row["prompt"] = ""
    data = tmp_path / "prompt-less.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = daa(capsys, tiny, data, tmp_path / "o")
    assert code == 0 and "Traceback" not in err, err
    code, err = run(capsys, "llm", "eval", "--model", tiny, "--ref", tiny, "--data", data,
                    "--n-prompts", "8", "--samples", "1", "--max-new-tokens", "4", "--out",
                    tmp_path / "m.json")
    assert code == 0, err
    code, err = daa(capsys, tiny, data, tmp_path / "o2", "--max-prompt-length", "0")
    assert_user_error(code, err, "max prompt length must be in [1, max length)")


def test_reference_with_another_vocabulary(capsys, tiny, pairs16, tmp_path):
    from treemdp.llm.models import build_tiny_model
    other = build_tiny_model(tmp_path / "v400", hidden_size=32, num_layers=1, num_heads=2,
                             vocab_size=400)
    code, err = daa(capsys, tiny, pairs16, tmp_path / "o", "--ref", other)
    assert_user_error(code, err, "do not share a vocabulary")
    code, err = run(capsys, "llm", "eval", "--model", tiny, "--ref", other, "--data", pairs16)
    assert_user_error(code, err, "do not share a vocabulary")


def test_truncated_reference_cache_on_resume(capsys, tiny, pairs16, tmp_path):
    out = tmp_path / "o"
    code, err = daa(capsys, tiny, pairs16, out, "--max-steps", "2", "--stop-after", "1")
    assert code == 0, err
    cache = out / "ref_logps.pt"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a kill mid-write
    code, err = daa(capsys, tiny, pairs16, out, "--max-steps", "2", "--resume")
    assert code == 0 and "unreadable; recomputing" in err, err
    assert torch.load(cache)["sums"].shape == (16, 2)


def test_daa_resume_into_an_sft_run(capsys, tiny, tmp_path):
    sft_data = head(DATA / "tldr_sft.jsonl", tmp_path / "s.jsonl", 8)
    out = tmp_path / "sft"
    code, err = run(capsys, "llm", "sft", "--model", tiny, "--data", sft_data, "--out", out,
                    "--no-progress", "--batch-size", "4", "--max-steps", "1")
    assert code == 0, err
    before = sorted(p.name for p in out.iterdir())
    code, err = daa(capsys, tiny, DATA / "tldr_prefs.jsonl", out, "--resume")
    assert_user_error(code, err, "holds an sft run")
    assert sorted(p.name for p in out.iterdir()) == before


def test_evaluating_nan_weights(capsys, tiny, pairs16, tmp_path):
    broken = copy_model(tiny, tmp_path / "nan", nan=True)
    code, err = run(capsys, "llm", "eval", "--model", broken, "--ref", tiny, "--data", pairs16)
    assert_user_error(code, err, "NaN or infinite weights")


def test_final_without_its_state(capsys, daa_run, pairs16, tmp_path):
    run_dir = shutil.copytree(daa_run, tmp_path / "copy")
    (run_dir / "final" / "trainer_state.pt").unlink()
    code, err = run(capsys, "llm", "eval", "--run", run_dir, "--data", pairs16)
    assert_user_error(code, err, "has no trainer_state.pt")


def test_judge_that_is_not_callable(capsys, tiny, pairs16):
    code, err = run(capsys, "llm", "eval", "--model", tiny, "--ref", tiny, "--data", pairs16,
                    "--judge", "treemdp.llm.synthetic:SUBJECTS")
    assert_user_error(code, err, "not a function")


# ---------------------------------------------------------------- silent damage refused

def test_out_equal_to_the_model_folder(capsys, tiny, pairs16, tmp_path):
    model = shutil.copytree(tiny, tmp_path / "m")
    config = (model / "config.json").read_text()
    code, err = daa(capsys, model, pairs16, model)
    assert_user_error(code, err, "is the --model folder")
    assert (model / "config.json").read_text() == config and not (model / "final").exists()


def test_out_holding_another_run(capsys, tiny, pairs16, daa_run):
    before = {p.name: p.stat().st_mtime_ns for p in daa_run.rglob("*")}
    sft_data = head(DATA / "tldr_sft.jsonl", daa_run.parent / "s8.jsonl", 8)
    code, err = run(capsys, "llm", "sft", "--model", tiny, "--data", sft_data, "--out", daa_run,
                    "--no-progress")
    assert_user_error(code, err, "holds an daa run")
    code, err = daa(capsys, tiny, pairs16, daa_run)
    assert_user_error(code, err, "already holds a daa run; pass --resume")
    assert {p.name: p.stat().st_mtime_ns for p in daa_run.rglob("*")} == before


def test_resume_with_other_settings(capsys, tiny, pairs16, tmp_path):
    out = tmp_path / "o"
    code, err = daa(capsys, tiny, pairs16, out, "--max-steps", "2", "--stop-after", "1")
    assert code == 0, err
    code, err = daa(capsys, tiny, pairs16, out, "--max-steps", "2", "--resume", "--lr", "1e-2")
    assert_user_error(code, err, "--resume: --lr is 0.01 here but 0.0003")
    code, err = daa(capsys, tiny, pairs16, out, "--max-steps", "2", "--resume",
                    "--batch-size", "2")
    assert_user_error(code, err, "--batch-size is 2 here but 4")
    # a bare resume takes every setting from the run
    code, err = run(capsys, "llm", "daa", "--out", out, "--resume", "--no-progress")
    assert code == 0 and "resumed from" in err, err
    assert json.loads((out / "config.json").read_text())["lr"] == 3e-4


def test_negative_max_grad_norm(capsys, tiny, pairs16, tmp_path):
    code, err = daa(capsys, tiny, pairs16, tmp_path / "o", "--max-grad-norm", "-1")
    assert_user_error(code, err, "--max-grad-norm must be a finite number > 0")
    assert not (tmp_path / "o").exists()


def test_nan_loss_stops_without_saving(capsys, tiny, pairs16, tmp_path):
    out = tmp_path / "o"
    code, err = daa(capsys, tiny, pairs16, out, "--optimizer", "sgd", "--lr", "1e30",
                    "--max-steps", "4")
    last = err.strip().splitlines()[-1]  # after the data and reference lines of a started run
    assert code == 2 and "Traceback" not in err and last.startswith("error: daa step "), err
    assert "the loss became NaN/inf" in last and "stopped before updating the weights" in last
    assert not (out / "final").exists()
    for checkpoint in out.glob("checkpoint-*"):  # any checkpoint written holds finite weights
        from safetensors.torch import load_file
        assert all(torch.isfinite(w).all() for w in load_file(checkpoint / "model.safetensors").values())


# ---------------------------------------------------------------- correctness

def test_config_paths_do_not_depend_on_the_working_folder(capsys, tiny, pairs16, tmp_path,
                                                          monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(tiny, work / "models" / "tiny")
    shutil.copy(pairs16, work / "p.jsonl")
    monkeypatch.chdir(work)
    code, err = daa(capsys, "models/tiny", "p.jsonl", "runs/dpo")
    assert code == 0, err
    config = json.loads((work / "runs" / "dpo" / "config.json").read_text())
    assert config["model"] == str(work / "models" / "tiny") and config["data"] == str(work / "p.jsonl")
    monkeypatch.chdir(tmp_path)  # elsewhere, a relative models/tiny would be another model
    (tmp_path / "models").mkdir()
    from treemdp.llm.evaluate import EvalConfig, evaluate_run
    rows = evaluate_run(str(work / "runs" / "dpo"), EvalConfig(
        data=str(pairs16), n_prompts=1, samples=1, max_new_tokens=2, device="cpu"))
    assert rows[-1]["ref"] == str(work / "models" / "tiny")


def test_reward_model_judge_refuses_a_random_head(capsys, tiny, pairs16):
    code, err = run(capsys, "llm", "eval", "--model", tiny, "--ref", tiny, "--data", pairs16,
                    "--judge", f"rm:{tiny}")
    assert_user_error(code, err, "has no trained reward head")


def test_json_output_is_standard_json(capsys, tiny, pairs16, tmp_path):
    out = tmp_path / "m.json"
    code, err = run(capsys, "llm", "eval", "--model", tiny, "--ref", tiny, "--data", pairs16,
                    "--n-prompts", "1", "--samples", "1", "--max-new-tokens", "2", "--out", out)
    assert code == 0, err

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")
    metrics = json.loads(out.read_text(), parse_constant=refuse)
    assert metrics["kl_se"] is None and math.isfinite(metrics["kl"])
