"""GPU check of the LLM track (run by benchmarks/gpu_check.sh; ≤ 5 minutes on one CUDA GPU, offline).

1. ``llm lab`` end to end on a Pythia-160m-shaped GPT-NeoX (hidden 768, 12 layers, 12 heads,
   built from its config, random init, no download) over the tree language (vocabulary of 5
   tokens): SFT, pairs, reference, proxy reward model, one DPO run with checkpoints every half
   epoch, evaluation with exact values, the report. Prints the hump and the sampled-vs-exact gaps.
2. DAA speed: the same Pythia-160m shape with Pythia's vocabulary size (50304), TL;DR-shaped pairs
   (prompts 200-380 tokens, completions 20-60; benchmarks/bench_llm.py's data), 8 pairs per step:
   ours (``treemdp.llm.train``) against TRL 1.16 ``DPOTrainer`` (``precompute_ref_log_probs=True``)
   on the same batches, bf16 and fp32; steps/s (median step), tokens/s and peak GPU memory
   (``torch.cuda.max_memory_allocated``), each variant in a fresh subprocess.

``--device cpu --tiny`` runs the same code at toy size on CPU (a dry run of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = {"pythia-160m": dict(hidden_size=768, num_layers=12, num_heads=12, vocab=50304),
          "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, vocab=512)}


def build_neox(out: Path, tokenizer, shape: dict, vocab: int, seed: int = 0) -> Path:
    """A random-init GPT-NeoX of ``shape`` (Pythia layout) saved with ``tokenizer``."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    config = GPTNeoXConfig(vocab_size=vocab, hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_layers"],
                           num_attention_heads=shape["num_heads"], intermediate_size=4 * shape["hidden_size"],
                           max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
                           tie_word_embeddings=False, bos_token_id=tokenizer.eos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    GPTNeoXForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def lab_end_to_end(out: Path, shape: dict, device: str) -> None:
    from treemdp.llm.lab.report import report
    from treemdp.llm.lab.study import StudyConfig, run_study
    from treemdp.llm.language import TreeLanguage
    language = TreeLanguage("4x4")
    model = build_neox(out / "tree-model", language.tokenizer(), shape, vocab=language.branching + 1)
    t0 = time.perf_counter()
    cfg = StudyConfig(model=str(model), gold="additive", pairs=(512,), epochs=2.0, checkpoint_every=0.5,
                      lr=1e-4, sft_lr=3e-4, sft_epochs=2.0, rm_epochs=1.0, device=device)
    results = run_study(cfg, out / "lab")
    report(out / "lab", bootstrap=50)
    print(f"lab end to end: {time.perf_counter() - t0:.1f}s")
    cols = ["step", "kl", "kl_se", "exact_kl", "gold", "exact_gold", "win_rate", "win_rate_se", "exact_win_rate"]
    print(results[cols].round(3).to_string(index=False))
    later = results[results["step"] > 0]
    for s, e, se in (("kl", "exact_kl", "kl_se"), ("gold", "exact_gold", "gold_se"),
                     ("win_rate", "exact_win_rate", "win_rate_se")):
        print(f"max |{s} - exact| / SE: {float(((later[s] - later[e]).abs() / later[se]).max()):.2f}")


# ----- DAA speed: workers in fresh subprocesses ---------------------------------------------------------
def worker(variant: str, precision: str, data: Path, model: Path, out: Path, steps: int, device: str) -> dict:
    import torch
    cuda = device == "cuda"
    if variant == "ours":
        import csv
        from treemdp.llm import train as trainer
        cls = getattr(trainer, "LLMConfig", None) or trainer.TrainConfig
        trainer.train(cls(phase="daa", model=str(model), data=str(data), out=str(out), loss="dpo", beta=0.1,
                          optimizer="adamw", lr=1e-6, warmup_steps=0, batch_size=8, grad_accum=1, max_steps=steps,
                          save_every=10 ** 9, max_length=512, max_prompt_length=384, device=device,
                          precision=precision, progress=False))
        with open(out / "metrics.csv", newline="") as f:
            times = [float(r["time_s"]) for r in csv.DictReader(f)]
    else:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import DPOConfig, DPOTrainer
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        tok = AutoTokenizer.from_pretrained(model)
        policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        times = []

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - self.t0)

        args = DPOConfig(output_dir=str(out), loss_type=["sigmoid"], beta=0.1, learning_rate=1e-6,
                         lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                         per_device_train_batch_size=8, gradient_accumulation_steps=1, max_steps=steps,
                         bf16=precision == "bf16", gradient_checkpointing=False, precompute_ref_log_probs=True,
                         max_length=512, save_strategy="no", logging_steps=10 ** 6, report_to=[],
                         use_cpu=not cuda, seed=0, dataloader_num_workers=0, disable_tqdm=True)
        DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                   processing_class=tok, callbacks=[Clock()]).train()
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else float("nan")
    return {"times": times, "peak_mib": peak}


def speed(out: Path, shape: dict, device: str, steps: int) -> None:
    sys.path.insert(0, str(HERE))
    from bench_llm import data_shape, make_data
    from treemdp.llm.models import load_tokenizer
    data = make_data(out, n_pairs=8 * steps, shape="tldr")  # also writes out/tiny (its tokenizer)
    tok = load_tokenizer(str(out / "tiny"), quiet=True)
    model = build_neox(out / "neox", tok, shape, vocab=shape["vocab"])
    tok_step = 8 * data_shape(data, out / "tiny")["pair_tokens"]
    print(f"\nDAA speed, {device}, {steps} steps of 8 TL;DR-shaped pairs ({tok_step:.0f} tokens/step), "
          f"model {shape}:")
    print(f"{'variant':10s} {'precision':9s} {'steps/s':>8s} {'tokens/s':>9s} {'peak MiB':>9s}")
    for precision in ("bf16", "fp32"):
        for variant in ("ours", "trl"):
            run = out / f"{variant}-{precision}"
            proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--precision", precision,
                                   "--data", str(data), "--model", str(model), "--out", str(run),
                                   "--steps", str(steps), "--device", device],
                                  capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"{variant} {precision} failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(line[0][7:])
            t = r["times"]
            durations = [b - a for a, b in zip(t[2:], t[3:])] or [t[-1]]
            sps = 1.0 / statistics.median(durations)
            print(f"{variant:10s} {precision:9s} {sps:8.2f} {sps * tok_step:9.0f} {r['peak_mib']:9.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="toy-size model (a CPU dry run)")
    parser.add_argument("--out", default="/tmp/gpu_check")
    parser.add_argument("--steps", type=int, default=30, help="DAA steps per timed variant")
    parser.add_argument("--skip-lab", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from treemdp.llm.train import quiet_transformers
    quiet_transformers()
    if args.worker:
        r = worker(args.worker, args.precision, Path(args.data), Path(args.model), Path(args.out), args.steps,
                   args.device)
        print("RESULT " + json.dumps(r))
        return
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU (run with --device cpu --tiny for a dry run)")
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = SHAPES["tiny" if args.tiny else "pythia-160m"]
    t0 = time.perf_counter()
    if not args.skip_lab:
        lab_end_to_end(out, shape, args.device)
    speed(out, shape, args.device, args.steps)
    print(f"\ngpu_check done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
