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
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from ..losses import check_beta
from .data import PAIR_FIELDS, Example, read_jsonl, tokenize_rows

Judge = Callable[[list[str], list[str], list[str]], list[float]]


@dataclass
class EvalConfig:
    """Settings of one evaluation (see ``treemdp llm eval --help``)."""
    data: str = ""
    ref: str | None = None
    beta: float | str | None = None
    judge: str | Judge | None = "gold"
    n_prompts: int = 32
    samples: int = 2
    max_new_tokens: int = 48
    max_length: int = 512
    max_prompt_length: int = 384
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"


def gold_judge(prompts: list[str], completions: list[str], references: list[str]) -> list[float]:
    """Win probabilities by the synthetic gold score: 1 better, 0.5 tie, 0 worse."""
    from .synthetic import gold_score
    out = []
    for p, c, r in zip(prompts, completions, references):
        a, b = gold_score(p, c), gold_score(p, r)
        out.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return out


def reward_model_judge(path: str, device: str = "cpu") -> Judge:
    """A judge comparing the scalar scores of a sequence-classification reward model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from .models import check_model_path
    path = check_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        rm = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load reward model {path}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rm.config.pad_token_id = tok.pad_token_id

    @torch.no_grad()
    def score(texts: list[str]) -> list[float]:
        enc = tok(texts, return_tensors="pt", padding=True, truncation=True).to(device)
        return rm(**enc).logits[:, 0].float().tolist()

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
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import judge {spec!r}: {e}") from None


def r_squared(x: list[float], y: list[float]) -> float:
    """R^2 of the least-squares line y ~ a + b x (eq. 6); 0 when x or y is constant."""
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    if len(x) < 2 or xt.std() == 0 or yt.std() == 0:
        return 0.0
    r = torch.corrcoef(torch.stack([xt, yt]))[0, 1]
    return float(r * r)


@torch.no_grad()
def _logps(model, examples: list[Example], pad_id: int, device, batch_size: int, k: int):
    from .train import compute_logps
    return compute_logps(model, examples, pad_id, device, batch_size, pairs=k == 2)


@torch.no_grad()
def sample(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int, device,
           batch_size: int) -> list[list[int]]:
    """Answers drawn at temperature 1 from the full distribution, cut after the first EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    answers = []
    model.eval()
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start: start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(chunk):  # left padding: generation continues every row's end
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        for row in out[:, width:].tolist():
            answers.append(row[: row.index(eos) + 1] if eos in row else row)
    return [a if a else [eos] for a in answers]


def evaluate_model(model_path: str, cfg: EvalConfig, *, ref_model=None, ref_path=None,
                   tokenizer=None) -> dict:
    """Every metric of the module docstring for one policy folder; see :class:`EvalConfig`."""
    from .models import load_model, load_tokenizer, resolve_device
    from .train import _quiet_transformers, seed_everything
    _quiet_transformers()
    device = resolve_device(cfg.device)
    beta = cfg.beta
    run_cfg = _run_config(Path(model_path))
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
    from .models import check_causal
    for name in filter(None, (model_path, ref_path if ref_model is None else None)):
        check_causal(name)
    tokenizer = tokenizer or load_tokenizer(model_path)
    pad_id = tokenizer.pad_token_id
    rows = read_jsonl(cfg.data, PAIR_FIELDS)
    examples, stats = tokenize_rows(rows, tokenizer, kind="pairs", max_length=cfg.max_length,
                                    max_prompt_length=cfg.max_prompt_length, path=cfg.data)
    policy = load_model(model_path).to(device).eval()
    ref = ref_model if ref_model is not None else load_model(ref_path).to(device).eval()

    # held-out pairs
    pi, _ = _logps(policy, examples, pad_id, device, cfg.batch_size, 2)
    rf, _ = _logps(ref, examples, pad_id, device, cfg.batch_size, 2)
    r = beta * (pi - rf)  # [n, 2] implicit rewards of chosen, rejected
    result = {"model": str(model_path), "ref": str(ref_path), "beta": beta, "pairs": len(examples),
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
            picks.append(ex.index)
        if len(picks) == cfg.n_prompts:
            break
    kept_rows = _kept_rows(rows, examples, tokenizer, cfg)
    prompts = [examples[i].prompt_ids for i in picks for _ in range(cfg.samples)]
    seed_everything(cfg.seed)
    answers = sample(policy, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                     device=device, batch_size=cfg.batch_size)
    sampled = [Example(p, [a], index=i) for i, (p, a) in enumerate(zip(prompts, answers))]
    pi_s, n_tok = _logps(policy, sampled, pad_id, device, cfg.batch_size, 1)
    rf_s, _ = _logps(ref, sampled, pad_id, device, cfg.batch_size, 1)
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
        prompt_text = [kept_rows[i]["prompt"] for i in picks for _ in range(cfg.samples)]
        refs = [kept_rows[i]["chosen"] for i in picks for _ in range(cfg.samples)]
        verdicts = [float(v) for v in judge(prompt_text, texts, refs)]
        result["win_rate"] = sum(verdicts) / n
        result["win_rate_se"] = float(torch.tensor(verdicts).std() / math.sqrt(n)) if n > 1 else 0.0
    return result


def _kept_rows(rows, examples, tokenizer, cfg) -> list[dict]:
    """The raw rows aligned with the kept examples (tokenisation may drop rows)."""
    if len(rows) == len(examples):
        return rows
    kept = []
    for row in rows:
        try:
            tokenize_rows([row], tokenizer, kind="pairs", max_length=cfg.max_length,
                          max_prompt_length=cfg.max_prompt_length)
            kept.append(row)
        except UserError:
            pass
    return kept


def _run_config(model_dir: Path) -> dict:
    """The ``config.json`` of the run a checkpoint folder belongs to (empty if none)."""
    for candidate in (model_dir / "run_config.json", model_dir.parent / "config.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError:
                return {}
    return {}


def evaluate_run(run_dir: str, cfg: EvalConfig) -> list[dict]:
    """Evaluate every checkpoint of a run (and ``final``), write ``RUN/eval.csv``, return rows."""
    from .models import load_model, load_tokenizer, resolve_device
    from .train import _quiet_transformers, checkpoints
    _quiet_transformers()
    run = Path(run_dir)
    run_cfg = _run_config(run / "final")
    if not run_cfg:
        raise UserError(f"{run_dir} is not a run folder (no config.json)")
    folders = checkpoints(run) + ([run / "final"] if (run / "final").is_dir() else [])
    if not folders:
        raise UserError(f"{run_dir} has no checkpoints")
    ref_path = cfg.ref or run_cfg.get("ref") or run_cfg.get("model")
    device = resolve_device(cfg.device)
    ref = load_model(ref_path).to(device).eval()
    tokenizer = load_tokenizer(str(folders[0]), quiet=True)
    rows = []
    for folder in folders:
        state = torch.load(folder / "trainer_state.pt", weights_only=False)
        metrics = evaluate_model(str(folder), cfg, ref_model=ref, ref_path=ref_path,
                                 tokenizer=tokenizer)
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
