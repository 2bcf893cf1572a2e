"""Evaluation of a policy against its reference on held-out pairs and prompts (paper §3).

Metrics (all in one flat dict):

- ``reward_accuracy``: share of held-out pairs whose implicit reward
  r = beta * log(pi/ref) ranks chosen above rejected.
- ``logp_chosen`` / ``logp_rejected`` and ``delta_logp_chosen`` / ``delta_logp_rejected``
  (policy minus reference): the §3.5 trend, both typically fall during DAA training.
- ``reward_chosen``: mean implicit reward of the chosen answers (about minus the forward KL).
- ``kl`` and ``kl_se``: KL(pi || ref) estimated from answers sampled from pi at temperature 1,
  mean of log pi(y|x) - log ref(y|x), with its standard error.
- ``length_r2``: eq. 6, R^2 of a linear regression of beta * log(pi/ref) of the samples on their
  length in tokens; ``mean_length``: mean sample length in tokens.
- ``win_rate``: mean judge verdict of samples against the data set's chosen answers.

A judge is any callable ``judge(prompts, completions, references) -> list[float]`` of win
probabilities in [0, 1] (1: the completion is better, 0.5: tie). Shipped: ``gold`` (the synthetic
data's :func:`treemdp.llm.synthetic.gold_score`) and ``rm:PATH`` (a sequence-classification
reward model). ``module:function`` imports one.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from ..losses import check_beta
from .data import PAIR_FIELDS, Example, load_rows, tokenize_rows
from .logprobs import cache_arguments, log_prob_table, new_cache, shared_prompt_works

Judge = Callable[[list[str], list[str], list[str]], list[float]]


@dataclass
class EvalConfig:
    """Settings of one evaluation (``treemdp llm eval`` has one flag per field)."""

    data: str = ""
    """Held-out preference pairs: JSONL file, datasets folder or hub dataset name (Python: also a datasets.Dataset)."""
    split: str = "test"
    """Split of a hub dataset or DatasetDict folder."""
    columns: str | None = None
    """Column mapping FIELD=COLUMN,... for prompt, chosen, rejected."""
    ref: str | None = None
    """Reference model (default: the run's reference, else its starting model)."""
    beta: float | None = None
    """Beta of the implicit reward (default: the run's, else 0.1)."""
    judge: str | None = "gold"
    """Win-rate judge: gold, none, rm:PATH (a sequence-classification reward model) or module:function."""
    n_prompts: int = 32
    """Distinct prompts to sample answers for."""
    samples: int = 2
    """Answers sampled per prompt (temperature 1, full distribution)."""
    max_new_tokens: int = 48
    """Longest sampled answer in tokens."""
    max_length: int = 512
    """Max prompt + completion tokens of the held-out pairs."""
    max_prompt_length: int = 384
    """Prompt tokens kept when truncating, >= 1."""
    tokenization: str | None = None
    """default or trl (default: the run's)."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seed: int = 0
    """Seeds the sampler (a local generator)."""
    device: str = "auto"
    """auto, cpu or cuda."""


def gold_judge(prompts: list[str], completions: list[str], references: list[str]) -> list[float]:
    """Win probabilities by the synthetic gold score: 1 better, 0.5 tie, 0 worse."""
    from .synthetic import gold_score
    out = []
    for p, c, r in zip(prompts, completions, references):
        a, b = gold_score(p, c), gold_score(p, r)
        out.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return out


def reward_model_scorer(path: str, device: str = "cpu") -> Callable[[list[str]], list[float]]:
    """``score(texts) -> list[float]``: the scalar outputs of a sequence-classification reward model.

    Refuses a checkpoint without trained reward-head weights (a causal LM, say): transformers
    would fill the head with random numbers and the scores would be noise.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from .models import check_model_path
    path = check_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        rm, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load reward model {path}: {str(e).splitlines()[0]}") from None
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        first = missing[0] if isinstance(missing[0], str) else missing[0][0]
        raise UserError(f"rm:{path} has no trained reward head ({first} is not in the checkpoint, "
                        "so it would be random); give a sequence-classification reward model")
    rm = rm.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rm.config.pad_token_id = tok.pad_token_id

    @torch.no_grad()
    def score(texts: list[str], batch_size: int = 64) -> list[float]:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start: start + batch_size], return_tensors="pt", padding=True,
                      truncation=True).to(device)
            out += rm(**enc).logits[:, 0].float().tolist()
        return out
    return score


def reward_model_judge(path: str, device: str = "cpu") -> Judge:
    """A judge comparing the scores of :func:`reward_model_scorer` (1 better, 0.5 tie, 0 worse)."""
    score = reward_model_scorer(path, device)

    def judge(prompts, completions, references):
        a = score([p + c for p, c in zip(prompts, completions)])
        b = score([p + r for p, r in zip(prompts, references)])
        return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]
    return judge


def get_judge(spec, device: str = "cpu") -> Judge | None:
    """``gold`` | ``none`` | ``rm:PATH`` | ``module:function`` | a callable -> a judge (or None)."""
    if spec is None or callable(spec):
        return spec
    if spec == "none":
        return None
    if spec == "gold":
        return gold_judge
    if spec.startswith("rm:"):
        return reward_model_judge(spec[3:], device)
    module, _, name = spec.partition(":")
    if not name:
        raise UserError(f"unknown judge {spec!r}; use gold, none, rm:PATH or module:function")
    try:
        judge = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import judge {spec!r}: {e}") from None
    if not callable(judge):
        raise UserError(f"judge {spec!r} is a {type(judge).__name__}, not a function "
                        "judge(prompts, completions, references) -> list[float]")
    return judge


def checked_scores(values, n: int, name: str, *, low: float = -math.inf, high: float = math.inf
                   ) -> list[float]:
    """``values`` as n finite floats in [low, high], or a one-line UserError naming ``name``.

    Ranges per kind: a judge's verdicts are win probabilities in [0, 1]; a gold reward
    (:mod:`treemdp.llm.lab.gold`) is any finite real number.
    """
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise UserError(f"{name} returned {type(values).__name__}, not {n} numbers ({e})") from None
    if len(out) != n:
        raise UserError(f"{name} returned {len(out)} values for {n} samples (one per sample needed)")
    bad = next((i for i, v in enumerate(out) if not math.isfinite(v)), None)
    if bad is not None:
        raise UserError(f"{name} returned a non-finite value ({out[bad]}) for sample {bad}")
    bad = next((i for i, v in enumerate(out) if not low <= v <= high), None)
    if bad is not None:
        raise UserError(f"{name} returned {out[bad]} for sample {bad}, outside [{low:g}, {high:g}]")
    return out


def r_squared(x: list[float], y: list[float]) -> float:
    """R^2 of the least-squares line y ~ a + b x (eq. 6); 0 when x or y is constant."""
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    if len(x) < 2 or xt.std() == 0 or yt.std() == 0:
        return 0.0
    r = torch.corrcoef(torch.stack([xt, yt]))[0, 1]
    return float(r * r)


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], *, max_new_tokens: int, eos_id: int, pad_id: int,
           device, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Answers drawn token by token at temperature 1 from the model's full distribution, each
    cut after its first EOS (or at ``max_new_tokens``).

    Written out rather than ``model.generate``: ``generate`` merges the model folder's
    ``generation_config.json`` (a ``repetition_penalty``, ``top_k``, ...) into any settings it is
    given, which would bias the KL estimate. Here nothing but the logits decides a token.
    """
    answers = []
    model.eval()
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters \
        else {}
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start: start + batch_size]
        n, width = len(chunk), max(map(len, chunk))
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(chunk):  # left padding: every row continues at the last column
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = new_cache(model)  # filled in place by every pass below
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    **cache_arguments(model, cache), **keep)
        next_position = positions[:, -1:] + 1  # [n, 1]
        done = torch.zeros(n, dtype=torch.bool, device=device)
        drawn = []
        for t in range(max_new_tokens):
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1)  # [n, V]
            token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            token = torch.where(done, torch.full_like(token, pad_id), token)
            drawn.append(token)
            done |= token == eos_id
            if done.all() or t == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                        **cache_arguments(model, cache))
            next_position = next_position + 1
        for row in torch.stack(drawn, dim=1).tolist():
            answers.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return answers


def evaluate_model(model_path: str, cfg: EvalConfig, *, ref_model=None, ref_path=None,
                   tokenizer=None, shared: bool | None = None) -> dict:
    """Every metric of the module docstring for one policy folder; see :class:`EvalConfig`.

    ``shared`` (None: checked on this model) says whether pairs are scored with each prompt
    computed once (:func:`treemdp.llm.logprobs.shared_prompt_works`).
    """
    from .models import (check_causal, check_finite_weights, check_same_vocabulary, load_model,
                         load_tokenizer, resolve_device)
    from .train import quiet_transformers
    quiet_transformers()
    device = resolve_device(cfg.device)
    for name in ("n_prompts", "samples", "max_new_tokens", "batch_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    run_cfg = _run_config(Path(model_path))
    beta = cfg.beta
    if beta is None:
        beta = run_cfg.get("beta", 0.1) if run_cfg.get("phase") == "daa" else 0.1
    try:
        beta = check_beta(beta)
    except ValueError as e:
        raise UserError(str(e)) from None
    judge = get_judge(cfg.judge, device)
    ref_path = ref_path or cfg.ref or run_cfg.get("ref") or run_cfg.get("model")
    if ref_model is None and not ref_path:
        raise UserError(f"no reference model: pass --ref (no config.json beside {model_path})")
    policy_config = check_causal(model_path)
    check_same_vocabulary(policy_config, ref_model.config if ref_model is not None
                          else check_causal(ref_path), model_path, ref_path)
    tokenizer = tokenizer or load_tokenizer(model_path)
    pad_id = tokenizer.pad_token_id
    rows, label = load_rows(cfg.data, PAIR_FIELDS, split=cfg.split, columns=cfg.columns)
    examples, _ = tokenize_rows(rows, tokenizer, kind="pairs", max_length=cfg.max_length,
                                max_prompt_length=cfg.max_prompt_length,
                                tokenization=cfg.tokenization or run_cfg.get("tokenization")
                                or "default", path=label)
    policy = load_model(model_path).to(device).eval()
    check_finite_weights(policy, model_path)
    ref = ref_model if ref_model is not None else load_model(ref_path).to(device).eval()
    if shared is None:
        shared = shared_prompt_works(policy, examples[:4], pad_id, device, name=model_path)

    # held-out pairs
    pi, _ = log_prob_table(policy, examples, pad_id, device, cfg.batch_size, pairs=True,
                           shared=shared)
    rf, _ = log_prob_table(ref, examples, pad_id, device, cfg.batch_size, pairs=True,
                           shared=shared)
    r = beta * (pi - rf)  # [n, 2] implicit rewards of chosen, rejected
    result = {"model": str(model_path), "ref": str(ref_path), "beta": beta, "pairs": len(examples),
              "shared_prompt": shared,
              "reward_accuracy": float((r[:, 0] > r[:, 1]).float().mean()),
              "reward_chosen": float(r[:, 0].mean()), "reward_rejected": float(r[:, 1].mean()),
              "logp_chosen": float(pi[:, 0].mean()), "logp_rejected": float(pi[:, 1].mean()),
              "delta_logp_chosen": float((pi[:, 0] - rf[:, 0]).mean()),
              "delta_logp_rejected": float((pi[:, 1] - rf[:, 1]).mean())}

    # samples at temperature 1 on the first n distinct prompts
    seen, picks = set(), []
    for ex in examples:
        key = tuple(ex.prompt_ids)
        if key not in seen:
            seen.add(key)
            picks.append(ex)
        if len(picks) == cfg.n_prompts:
            break
    prompts = [ex.prompt_ids for ex in picks for _ in range(cfg.samples)]
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    answers = sample(policy, prompts, max_new_tokens=cfg.max_new_tokens,
                     eos_id=tokenizer.eos_token_id, pad_id=pad_id, device=device,
                     batch_size=cfg.batch_size, generator=generator)
    sampled = [Example(p, [a], index=i) for i, (p, a) in enumerate(zip(prompts, answers))]
    pi_s, _ = log_prob_table(policy, sampled, pad_id, device, cfg.batch_size, pairs=False)
    rf_s, _ = log_prob_table(ref, sampled, pad_id, device, cfg.batch_size, pairs=False)
    log_ratio = (pi_s - rf_s)[:, 0].double()  # [n] log pi(y|x) - log ref(y|x), y ~ pi
    lengths = [float(len(a)) for a in answers]
    n = len(answers)
    result.update({
        "samples": n,
        "kl": float(log_ratio.mean()),
        "kl_se": float(log_ratio.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "length_r2": r_squared(lengths, (beta * log_ratio).tolist()),
        "mean_length": sum(lengths) / n,
    })
    if judge is not None:
        texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
        prompt_text = [row_text(rows[ex.row]["prompt"]) for ex in picks for _ in range(cfg.samples)]
        refs = [row_text(rows[ex.row]["chosen"]) for ex in picks for _ in range(cfg.samples)]
        verdicts = run_judge(judge, cfg.judge, prompt_text, texts, refs)
        result["win_rate"] = sum(verdicts) / n
        result["win_rate_se"] = float(torch.tensor(verdicts).std() / math.sqrt(n)) if n > 1 else 0.0
    return result


def run_judge(judge, spec, prompts: list[str], completions: list[str], references: list[str]
              ) -> list[float]:
    """The judge's verdicts as floats, one per completion; a judge that raises or answers with
    anything else is one UserError naming it."""
    name = spec if isinstance(spec, str) else getattr(spec, "__name__", type(spec).__name__)
    try:
        verdicts = [float(v) for v in judge(prompts, completions, references)]
    except Exception as e:  # noqa: BLE001 - a user's judge fails in any way; one line naming it
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"judge {name} failed: {type(e).__name__}: {first} (a judge is "
                        "judge(prompts, completions, references) -> list of numbers)") from None
    if len(verdicts) != len(completions):
        raise UserError(f"judge {name} returned {len(verdicts)} verdicts for {len(completions)} "
                        "completions; it must return one number per completion")
    # A verdict is a win probability: finite and in [0, 1] (a gold reward belongs to --gold).
    return checked_scores(verdicts, len(completions), f"judge {name}", low=0.0, high=1.0)


def row_text(value) -> str:
    """A row field as text for a judge (messages joined by their contents)."""
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


def _run_config(model_dir: Path) -> dict:
    """The ``config.json`` of the run a checkpoint folder belongs to (empty if none)."""
    from .train import read_json
    for candidate in (model_dir / "run_config.json", model_dir.parent / "config.json"):
        if candidate.is_file():
            return read_json(candidate)
    return {}


def evaluate_run(run_dir: str, cfg: EvalConfig) -> list[dict]:
    """Evaluate every checkpoint of a run (and ``final``), write ``RUN/eval.csv``, return rows."""
    from .models import load_model, load_tokenizer, resolve_device
    from .train import quiet_transformers, checkpoints
    quiet_transformers()
    run = Path(run_dir)
    run_cfg = _run_config(run / "final")
    if not run_cfg:
        raise UserError(f"{run_dir} is not a run folder (no config.json)")
    final = run / "final"
    if final.is_dir() and not (final / "trainer_state.pt").is_file():
        raise UserError(f"{final} has no trainer_state.pt: an incomplete or foreign folder; "
                        "move it away or evaluate it with --model")
    folders = checkpoints(run) + ([final] if final.is_dir() else [])
    if not folders:
        raise UserError(f"{run_dir} has no checkpoints")
    ref_path = cfg.ref or run_cfg.get("ref") or run_cfg.get("model")
    device = resolve_device(cfg.device)
    ref = load_model(ref_path).to(device).eval()
    tokenizer = load_tokenizer(str(folders[0]), quiet=True)
    rows, shared = [], None
    for folder in folders:
        state = torch.load(folder / "trainer_state.pt", weights_only=False)
        metrics = evaluate_model(str(folder), cfg, ref_model=ref, ref_path=ref_path,
                                 tokenizer=tokenizer, shared=shared)
        shared = metrics["shared_prompt"]  # same architecture for every checkpoint: check once
        rows.append({"checkpoint": folder.name, "step": state["step"],
                     "phase": run_cfg.get("phase"), "loss_name": run_cfg.get("loss"),
                     "run_beta": run_cfg.get("beta"), **metrics})
    try:
        with open(run / "eval.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    except OSError as e:
        raise UserError(f"cannot write {run}/eval.csv: {e.strerror or e}") from None
    return rows
