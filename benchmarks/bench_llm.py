"""Benchmark: our DAA (DPO) step against TRL's DPOTrainer on the same tiny GPT-NeoX, on CPU.

    .venv/bin/python benchmarks/bench_llm.py [--shape tldr|short] [--steps 40] [--repeats 2]
        [--variants ours ours-unshared ours-lora trl-precompute trl-ref]

Same random-init GPT-NeoX (hidden 64, 2 layers, 4 heads, vocab 512), same pairs, 8 pairs per
step, AdamW lr 1e-4 constant, fp32, 2 torch threads, no gradient checkpointing, no checkpoints
written during the timed steps. Shapes: ``tldr`` (default; the paper's TL;DR setting: prompts of
200-380 tokens, completions of 20-60) and ``short`` (synthetic prompts of ~60 tokens,
completions of 32-64). Variants: ``ours`` (``treemdp.llm.train``: reference log-probs
precomputed once, each pair's prompt computed once), ``ours-unshared`` (the same with the prompt
computed per completion, ``shared_prompt=False``), ``ours-lora`` (``ours`` with LoRA adapters
of rank 8 on every attention and MLP projection, the base frozen), ``trl-precompute`` (DPOTrainer, loss_type
sigmoid, precompute_ref_log_probs=True) and ``trl-ref`` (the reference model run every step).
Each run is a fresh subprocess (so peak RSS is its own), and the variants alternate A B C A B C
in one invocation. Steps/s is 1 / the median step time over the steps after the first
``--warmup`` ones (the mean is printed too; setup, reference precomputation and the first steps
are excluded for everyone); tokens/s counts the real (unpadded) tokens of the sequences each
trainer scores, a pair's prompt once per completion (2 P + |y_w| + |y_l|), the same number for
every variant. Steps per CPU-second (process time, all threads) is printed too: it is the
figure least moved by other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("ours", "ours-unshared", "ours-lora", "trl-precompute", "trl-ref")
DEFAULT_VARIANTS = ("ours", "ours-unshared", "ours-lora", "trl-precompute")
#: (prompt tokens, completion tokens) ranges per shape; None: the synthetic prompt as it comes.
SHAPES = {"tldr": ((200, 380), (20, 60)), "short": (None, (32, 63))}
WORDS = ("my car broke and i am sad so i called my friend who said it was fine but the landlord "
         "yelled at the team while the cat slept in the kitchen and the phone crashed again").split()


def make_data(workdir: Path, n_pairs: int, shape: str = "tldr", seed: int = 0) -> Path:
    """Pairs whose prompts and completions have the shape's token counts (tiny tokenizer; +1 EOS
    on each completion)."""
    from treemdp.llm.models import build_tiny_model, load_tokenizer
    from treemdp.llm.synthetic import make_prompt
    model_dir = build_tiny_model(workdir / "tiny", hidden_size=64, num_layers=2, num_heads=4,
                                 vocab_size=512, max_positions=512, seed=seed)
    tok = load_tokenizer(str(model_dir), quiet=True)
    rng = random.Random(seed)

    prompt_range, completion_range = SHAPES[shape]

    def extend(text: str, low: int, high: int) -> str:
        """``text`` plus random words, cut to a token count drawn from [low, high]."""
        target = rng.randint(low, high)
        while len(tok(text, add_special_tokens=False)["input_ids"]) < target:
            text += " " + rng.choice(WORDS)
        return tok.decode(tok(text, add_special_tokens=False)["input_ids"][:target])

    def completion() -> str:
        return extend("", *completion_range)

    rows = []
    for _ in range(n_pairs):
        prompt, _ = make_prompt(rng)
        if prompt_range:  # a long post, still ending in the TL;DR cue
            prompt = extend(prompt.removesuffix("\nTL;DR:"), prompt_range[0] - 4,
                            prompt_range[1] - 4) + "\nTL;DR:"
        chosen, rejected = completion(), completion()
        while rejected == chosen:
            rejected = completion()
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    path = workdir / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def data_shape(data: Path, model_dir: Path) -> dict:
    """Mean prompt and completion token counts, and the tokens a pair counts for (2 P + Cw + Cl)."""
    from treemdp.llm.data import PAIR_FIELDS, read_jsonl, tokenize_rows
    from treemdp.llm.models import load_tokenizer
    tok = load_tokenizer(str(model_dir), quiet=True)
    ex, stats = tokenize_rows(read_jsonl(data, PAIR_FIELDS), tok, kind="pairs", max_length=512,
                              max_prompt_length=384)
    assert stats.truncated == stats.dropped == 0
    prompts = [len(e.prompt_ids) for e in ex]
    completions = [len(c) for e in ex for c in e.completions]
    return {"prompt": (statistics.mean(prompts), min(prompts), max(prompts)),
            "completion": (statistics.mean(completions), min(completions), max(completions)),
            "pair_tokens": statistics.mean(2 * len(e.prompt_ids) + sum(map(len, e.completions))
                                           for e in ex)}


def worker_ours(data: Path, model_dir: Path, out: Path, steps: int, warmup: int,
                shared: bool = True, lora: bool = False) -> dict:
    import csv
    from treemdp.llm.train import LLMConfig, train
    adapters = dict(lora_r=8, lora_alpha=16.0,
                    lora_target_modules="query_key_value,dense,dense_h_to_4h,dense_4h_to_h") \
        if lora else {}
    train(LLMConfig(phase="daa", model=str(model_dir), data=str(data), out=str(out),
                    loss="dpo", beta=0.1, optimizer="adamw", lr=1e-4, warmup_steps=0,
                    batch_size=8, grad_accum=1, max_steps=steps, save_every=10 ** 9,
                    max_length=512, max_prompt_length=384, device="cpu", precision="fp32",
                    progress=False, threads=int(os.environ["OMP_NUM_THREADS"]),
                    shared_prompt=shared, **adapters))
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"step_times": [float(r["time_s"]) for r in rows],
            "cpu_times": [float(r["cpu_s"]) for r in rows]}


def worker_trl(data: Path, model_dir: Path, out: Path, steps: int, warmup: int,
               precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.utils import logging
    from trl import DPOConfig, DPOTrainer
    logging.set_verbosity_error()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = [json.loads(l) for l in data.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    times: list[float] = []
    cpu_times: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            cpu_times.append(time.process_time() - self.c0)

    args = DPOConfig(output_dir=str(out), loss_type=["sigmoid"], beta=0.1, learning_rate=1e-4,
                     lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                     per_device_train_batch_size=8, gradient_accumulation_steps=1,
                     max_steps=steps, bf16=False, fp16=False, gradient_checkpointing=False,
                     precompute_ref_log_probs=precompute, max_length=512, save_strategy="no",
                     logging_steps=10 ** 6, report_to=[], use_cpu=True, seed=0,
                     dataloader_num_workers=0, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Clock()])
    trainer.train()
    return {"step_times": times, "cpu_times": cpu_times}


def run_worker(args) -> None:
    data, model_dir, out = Path(args.data), Path(args.model), Path(args.out)
    if args.worker.startswith("ours"):
        result = worker_ours(data, model_dir, out, args.steps, args.warmup,
                             shared=args.worker != "ours-unshared",
                             lora=args.worker == "ours-lora")
    else:
        result = worker_trl(data, model_dir, out, args.steps, args.warmup,
                            precompute=args.worker == "trl-precompute")
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tldr",
                        help="tldr: prompts of 200-380 tokens, completions 20-60 (default); "
                             "short: ~60-token prompts, completions 32-64")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all variants")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS))
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per run (1 makes CPU time the work alone: no "
                             "threads spinning while they wait for a busy core)")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = make_data(work, n_pairs=8 * args.steps, shape=args.shape)
        model_dir = work / "tiny"
        shape = data_shape(data, model_dir)
        tok_step = 8 * shape["pair_tokens"]
        print(f"{args.shape} pairs: prompts {shape['prompt'][0]:.0f} tokens "
              f"({shape['prompt'][1]}-{shape['prompt'][2]}), completions "
              f"{shape['completion'][0]:.0f} ({shape['completion'][1]}-{shape['completion'][2]}, "
              f"EOS included)", flush=True)
        results: dict[str, list[dict]] = {v: [] for v in args.variants}
        for rep in range(args.repeats):
            for variant in args.variants:
                out = work / f"{variant}-{rep}"
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", variant, "--data", str(data),
                     "--model", str(model_dir), "--out", str(out), "--steps", str(args.steps),
                     "--warmup", str(args.warmup)], env=env, capture_output=True, text=True)
                line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(line[0][7:])
                t = r["step_times"]
                # median step time: robust to bursts of other load on a shared machine
                durations = [b - a for a, b in zip(t[args.warmup - 1:], t[args.warmup:])]
                r["steps_per_s"] = 1.0 / statistics.median(durations)
                r["steps_per_s_mean"] = len(durations) / sum(durations)
                c = r["cpu_times"]  # CPU seconds per step: the work, whatever else the machine runs
                r["steps_per_cpu_s"] = (len(c) - args.warmup) / (c[-1] - c[args.warmup - 1])
                r["tokens_per_s"] = r["steps_per_s"] * tok_step
                results[variant].append(r)
                print(f"round {rep + 1} {variant:15s} {r['steps_per_s']:7.2f} steps/s "
                      f"(mean {r['steps_per_s_mean']:6.2f}, per CPU-s {r['steps_per_cpu_s']:6.2f}) "
                      f"{r['tokens_per_s']:9.0f} tokens/s  peak RSS {r['peak_rss_mib']:6.0f} MiB",
                      flush=True)
        print(f"\nmedian over {args.repeats} rounds, {args.steps} steps of 8 pairs "
              f"({tok_step:.0f} tokens/step), {args.threads} thread(s), first {args.warmup} steps "
              "excluded:")
        print(f"{'variant':15s} {'steps/s':>8s} {'tokens/s':>9s} {'peak RSS MiB':>13s} "
              f"{'steps/CPU-s':>14s}")
        med = {}
        for variant, rs in results.items():
            med[variant] = {k: statistics.median(r[k] for r in rs) for k in
                            ("steps_per_s", "tokens_per_s", "peak_rss_mib", "steps_per_cpu_s")}
            m = med[variant]
            print(f"{variant:15s} {m['steps_per_s']:8.2f} {m['tokens_per_s']:9.0f} "
                  f"{m['peak_rss_mib']:13.0f} {m['steps_per_cpu_s']:14.2f}")
        if "trl-precompute" in med:
            base = med["trl-precompute"]
            print()
            for variant in (v for v in med if v.startswith("ours")):
                m = med[variant]
                print(f"{variant} / trl-precompute: {m['steps_per_s'] / base['steps_per_s']:.2f}x "
                      f"steps/s ({m['steps_per_cpu_s'] / base['steps_per_cpu_s']:.2f}x per CPU-s); "
                      f"peak RSS {m['peak_rss_mib']:.0f} vs {base['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
