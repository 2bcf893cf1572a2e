"""LLM lab costs on CPU: one checkpoint's evaluation, and what sharing the reference saves.

    python benchmarks/bench_llm_lab.py [--out /tmp/bench_llm_lab] [--runs 9]

1. A text study (synthetic TL;DR, the rule-based gold, the tiny GPT-NeoX of ``treemdp llm
   tiny-model``): the shared parts (SFT, pairs sampled from it and labelled, the reference's own
   samples, the proxy reward model) are timed once, then one checkpoint is evaluated as a run
   would be: 256 prompts x 4 samples of at most 48 tokens, their log-probs under the policy and
   the reference, the gold, the held-out pairs.
2. The tree language: a DAA run with the reference log-probs of its pairs computed (the first run
   of an N) and one that copies them (every other run).
The saving of computing the shared parts once is (runs - 1) x their time; both are printed.
Wall and CPU seconds are reported: on a loaded machine wall time measures the neighbours too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch


def clock():
    return time.perf_counter(), time.process_time()


def since(t) -> str:
    wall, cpu = time.perf_counter() - t[0], time.process_time() - t[1]
    return f"{wall:6.1f}s wall, {cpu:6.1f}s CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_llm_lab")
    parser.add_argument("--runs", type=int, default=9, help="runs of a grid sharing the parts (for the saving)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from treemdp.llm.lab.study import Run, StudyConfig, evaluate_checkpoint, load_reference, prepare, train_run
    from treemdp.llm.models import load_model, load_tokenizer
    from treemdp.llm.train import quiet_transformers
    quiet_transformers()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    print("1. text: synthetic TL;DR, gold tldr, tiny GPT-NeoX")
    cfg = StudyConfig(language="text", gold="tldr", pairs=(128,), heldout=32, sft_epochs=1.0, rm_epochs=1.0,
                      prompts=256, samples=4, max_new_tokens=48).checked()
    t = clock()
    shared = prepare(cfg, out / "text")
    shared_time = since(t)
    print(f"   shared parts (SFT, pairs, reference samples, proxy RM): {shared_time}")
    ref = load_reference(shared)
    print(f"   reference pool: {len(ref['answers'])} answers for {len(ref['prompts'])} prompts, "
          f"mean length {sum(map(len, ref['answers'])) / len(ref['answers']):.1f} tokens")
    model = load_model(str(shared.sft_model))
    tok = load_tokenizer(str(shared.sft_model), quiet=True)
    t = clock()
    row = evaluate_checkpoint(shared, ref, model, tok, beta=0.1, seed=0, step=1)
    print(f"   one checkpoint evaluated ({row['samples']} samples): {since(t)}")
    print(f"   if every one of {args.runs} runs redid the shared parts: {args.runs - 1} x the time above extra")

    print("2. tree language: reference log-probs of a run's pairs")
    cfg = StudyConfig(gold="additive", pairs=(512,), epochs=0.25, checkpoint_every=1.0, rm_epochs=1.0,
                      samples=256).checked()
    shared = prepare(cfg, out / "tree")
    first, second = Run("dpo", 0.1, 0, 512, 0.25, 5e-4, 32, 1.0), Run("dpo", 0.1, 1, 512, 0.25, 5e-4, 32, 1.0)
    t = clock()
    train_run(shared, first)
    print(f"   first run (computes and caches them): {since(t)}")
    t = clock()
    train_run(shared, second)
    print(f"   second run (copies them):            {since(t)}")


if __name__ == "__main__":
    main()
