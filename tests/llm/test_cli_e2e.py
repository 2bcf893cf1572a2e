"""End to end through the CLI: tiny model -> SFT -> DPO / IPO / SLiC -> eval -> plots; resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import DATA, ENV, treemdp_cli


def read_metrics(path):
    """metrics.csv rows, numbers as floats (the objective column stays text)."""
    with open(path, newline="") as f:
        return [{k: v if k == "objective" else float(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def weights(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def test_tiny_model_command_loads_back(llm_tmp):
    out = llm_tmp / "tiny-cli"
    proc = treemdp_cli("llm", "tiny-model", "--out", out, "--hidden", "32", "--layers", "2",
                       "--heads", "2", "--vocab", "400")
    assert "written" in proc.stdout
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert model.config.hidden_size == 32 and len(tok) == 400 and tok.pad_token is not None


def test_sft_lowers_the_loss(sft_run):
    rows = read_metrics(sft_run / "metrics.csv")
    assert len(rows) == 24
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.6 * first
    assert (sft_run / "final" / "model.safetensors").is_file()
    assert [p.name for p in sorted(sft_run.glob("checkpoint-*"))] == ["checkpoint-12"]
    config = json.loads((sft_run / "config.json").read_text())
    assert config["phase"] == "sft" and config["total_steps"] == 24 and config["rows"]["kept"] == 192


_DAA_RUNS = {}


def daa_run(loss, sft_run, prefs_small, llm_tmp):
    """One DAA run per loss through the CLI (2 epochs of 64 pairs), shared by the tests below."""
    if loss not in _DAA_RUNS:
        out = llm_tmp / f"daa-{loss}"
        beta = {"dpo": "0.1", "ipo": "0.1", "slic": "0.5"}[loss]
        treemdp_cli("llm", "daa", "--loss", loss, "--beta", beta, "--model", sft_run / "final",
                    "--data", prefs_small, "--out", out, "--threads", "2", "--no-progress",
                    "--lr", "3e-4", "--epochs", "2")
        _DAA_RUNS[loss] = (out, float(beta))
    return _DAA_RUNS[loss]


@pytest.mark.parametrize("loss", ["dpo", "ipo", "slic"])
def test_daa_end_to_end(loss, sft_run, prefs_small, llm_tmp):
    from treemdp.llm.evaluate import EvalConfig, evaluate_model
    out, beta = daa_run(loss, sft_run, prefs_small, llm_tmp)
    rows = read_metrics(out / "metrics.csv")
    assert len(rows) == 16  # 64 pairs / 8 per step x 2 epochs
    h0 = {"dpo": 0.6931, "ipo": 1.0, "slic": 1.0}[loss]  # policy == reference at step 1
    assert rows[0]["loss"] == pytest.approx(h0, abs=1e-3)
    assert sum(r["loss"] for r in rows[-4:]) / 4 < 0.7 * h0
    assert (out / "ref_logps.pt").is_file() and (out / "final" / "trainer_state.pt").is_file()
    assert len(list(out.glob("checkpoint-*"))) == 7  # every 2 steps (4 per epoch), not the last

    # implicit-reward accuracy on the training pairs (reference and beta read from the run)
    metrics = evaluate_model(str(out / "final"), EvalConfig(
        data=str(prefs_small), n_prompts=4, samples=2, max_new_tokens=16, device="cpu"))
    assert metrics["reward_accuracy"] > 0.5
    assert metrics["ref"] == str(sft_run / "final") and metrics["beta"] == beta
    assert metrics["samples"] == 8 and metrics["kl_se"] >= 0 and 0 <= metrics["length_r2"] <= 1
    assert 0 <= metrics["win_rate"] <= 1 and metrics["mean_length"] >= 1


def test_eval_over_checkpoints_and_plots(sft_run, prefs_small, llm_tmp):
    out, _ = daa_run("dpo", sft_run, prefs_small, llm_tmp)
    result = llm_tmp / "eval.json"
    treemdp_cli("llm", "eval", "--run", out, "--data", DATA / "tldr_prefs_test.jsonl",
                "--n-prompts", "3", "--samples", "2", "--max-new-tokens", "12", "--out", result)
    with open(out / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8", "checkpoint-10",
             "checkpoint-12", "checkpoint-14", "final"]
    assert [r["checkpoint"] for r in rows] == names
    assert len(json.loads(result.read_text())) == len(names)
    assert all(float(r["kl"]) == float(r["kl"]) for r in rows)  # not NaN
    proc = treemdp_cli("llm", "plot", out, "--out", llm_tmp / "plots")
    for name in ("win_rate_vs_sqrt_kl.png", "trends.png"):
        assert (llm_tmp / "plots" / name).stat().st_size > 5000 and name in proc.stdout


def test_stop_kill_and_resume_equal_uninterrupted(sft_run, prefs_small, llm_tmp):
    """Stop after 3 steps then resume; SIGKILL mid-run then resume: both end where an
    uninterrupted run ends (same metrics rows, same weights)."""
    common = ["llm", "daa", "--model", sft_run / "final", "--data", prefs_small, "--threads", "1",
              "--no-progress", "--max-steps", "6", "--save-every", "1", "--lr", "3e-4"]
    full, parts, killed = llm_tmp / "full", llm_tmp / "parts", llm_tmp / "killed"
    treemdp_cli(*common, "--out", full)
    a = read_metrics(full / "metrics.csv")
    wa = weights(full / "final")

    proc = treemdp_cli(*common, "--out", parts, "--stop-after", "3")
    assert "3/6 steps" in proc.stdout and not (parts / "final").exists()
    assert (parts / "checkpoint-3" / "trainer_state.pt").is_file()
    proc = treemdp_cli(*common, "--out", parts, "--resume")
    assert "resumed from" in proc.stderr and "6/6 steps" in proc.stdout

    proc = subprocess.Popen([sys.executable, "-m", "treemdp", *map(str, common), "--out", killed],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint-2").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "run finished before it could be killed"
    treemdp_cli(*common, "--out", killed, "--resume")

    for run in (parts, killed):
        b = read_metrics(run / "metrics.csv")
        assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
        for ra, rb in zip(a, b):  # same seed, same threads: identical numbers on CPU
            assert ra["loss"] == rb["loss"] and ra["logp_chosen"] == rb["logp_chosen"]
        wb = weights(run / "final")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


_ONE_PROCESS = {}


def one_process_run(sft_run, prefs_small, llm_tmp):
    """3 DAA steps of a global batch of 4 in one process: what 2-process runs must reproduce."""
    if not _ONE_PROCESS:
        out = llm_tmp / "one"
        treemdp_cli(*DIST_COMMON(sft_run, prefs_small), "--out", out, "--batch-size", "2",
                    "--grad-accum", "2")
        _ONE_PROCESS["out"] = out
    return _ONE_PROCESS["out"]


def DIST_COMMON(sft_run, prefs_small):
    return ["llm", "daa", "--model", sft_run / "final", "--data", prefs_small, "--threads", "1",
            "--no-progress", "--max-steps", "3", "--device", "cpu", "--lr", "3e-4"]


def assert_same_run(one, two):
    a, b = read_metrics(one / "metrics.csv"), read_metrics(two / "metrics.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("loss", "logp_chosen", "logp_rejected", "tokens"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), key
    wa, wb = weights(one / "final"), weights(two / "final")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(sft_run, prefs_small, llm_tmp):
    """accelerate launch with 2 CPU processes (gloo DDP) == 1 process, same global batch of 4."""
    one, two = one_process_run(sft_run, prefs_small, llm_tmp), llm_tmp / "two"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # `--multi_gpu` picks accelerate's torchrun launcher; on a machine without GPUs the processes
    # run MULTI_CPU over gloo (`--cpu --num_processes 2` alone starts a single process).
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
                           "no", "--main_process_port", "29517", "-m", "treemdp",
                           *map(str, DIST_COMMON(sft_run, prefs_small)), "--out", two,
                           "--batch-size", "2", "--grad-accum", "1"],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2 and config["distributed"] == "MULTI_CPU"
    assert config["shared_prompt_used"]  # two forward passes per micro-batch under DDP
    assert_same_run(one, two)


@pytest.mark.slow
def test_two_process_fsdp_with_resume_equals_one_process(sft_run, prefs_small, llm_tmp):
    """FSDP2 through accelerate on 2 CPU processes (gloo; tests/llm/fsdp_cpu.py lifts
    accelerate's GPU-only switch): stop after 2 steps, resume, and end where 1 process ends
    (weights gathered for every save, the optimizer state gathered and re-sharded)."""
    one, fsdp = one_process_run(sft_run, prefs_small, llm_tmp), llm_tmp / "fsdp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(ENV, ACCELERATE_USE_FSDP="true", FSDP_VERSION="2",
               FSDP_STATE_DICT_TYPE="FULL_STATE_DICT")
    for extra in (["--stop-after", "2", "--save-every", "1"], ["--resume"]):
        proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29519",
                               str(Path(__file__).with_name("fsdp_cpu.py")),
                               *map(str, DIST_COMMON(sft_run, prefs_small)), "--out", fsdp,
                               "--batch-size", "2", "--grad-accum", "1", *extra],
                              env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    config = json.loads((fsdp / "config.json").read_text())
    assert config["world_size"] == 2 and config["distributed"] == "FSDP"
    assert_same_run(one, fsdp)
