"""A proxy reward model trained by Bradley-Terry on preference pairs (``treemdp llm rm``).

The model is the causal LM's backbone with a one-output head (``AutoModelForSequenceClassification``,
``num_labels=1``), trained on ``-log sigma(r(x, y_w) - r(x, y_l))`` (Bradley-Terry, as the toy
lab's reward models) and saved with its head, so ``rm:OUT`` loads it as a judge or a gold
(:func:`treemdp.llm.evaluate.reward_model_scorer`) and as the proxy of best-of-n. It reads
``prompt + answer`` exactly as that scorer does (the tokenizer on the joined text, right padding,
the score at the last real token).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import UserError


def train_reward_model(model: str, data, out, *, epochs: float = 4.0, lr: float = 1e-3, batch_size: int = 32,
                       seed: int = 0, device: str = "cpu", threads: int | None = None) -> dict:
    """Fit a reward model on prompt/chosen/rejected rows (``data``: a JSONL path or rows); returns
    ``{"out", "steps", "train_accuracy", "loss"}``. Same seed, same numbers on CPU."""
    from transformers import AutoModelForSequenceClassification
    from ..data import PAIR_FIELDS, load_rows
    from ..evaluate import row_text
    from ..models import check_causal, load_tokenizer, resolve_device
    from ..train import quiet_transformers
    quiet_transformers()
    if not (math.isfinite(lr) and lr > 0) or not (math.isfinite(epochs) and epochs > 0) or batch_size < 1:
        raise UserError("--lr and --epochs must be finite numbers > 0 and --batch-size >= 1")
    device = resolve_device(device)
    check_causal(model)
    rows, label = load_rows(data, PAIR_FIELDS)
    tok = load_tokenizer(model, quiet=True)
    torch.manual_seed(seed)
    try:
        rm = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1).to(device)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot build a reward model from {model}: {str(e).splitlines()[0]}") from None
    rm.config.pad_token_id = tok.pad_token_id
    chosen = [row_text(r["prompt"]) + row_text(r["chosen"]) for r in rows]
    rejected = [row_text(r["prompt"]) + row_text(r["rejected"]) for r in rows]
    optimizer = torch.optim.AdamW(rm.parameters(), lr=lr, weight_decay=0.0)
    steps = max(1, math.ceil(epochs * math.ceil(len(rows) / batch_size)))
    generator = torch.Generator().manual_seed(seed)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rm.train()
    order, pos, losses, correct = torch.randperm(len(rows), generator=generator), 0, [], []
    try:
        for _ in range(steps):
            if pos >= len(rows):
                order, pos = torch.randperm(len(rows), generator=generator), 0
            idx = order[pos: pos + batch_size].tolist()
            pos += batch_size
            enc = tok([chosen[i] for i in idx] + [rejected[i] for i in idx], return_tensors="pt", padding=True).to(device)
            r = rm(**enc).logits[:, 0].view(2, -1)  # [2, B]: chosen, rejected
            loss = -F.logsigmoid(r[0] - r[1]).mean()  # Bradley-Terry
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            correct.append(float((r[0] > r[1]).float().mean()))
    finally:
        torch.set_num_threads(old_threads)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        rm.save_pretrained(out)
        tok.save_pretrained(out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    tail = max(1, len(losses) // 4)
    result = {"out": str(out), "steps": steps, "rows": len(rows), "data": label,
              "loss": sum(losses[-tail:]) / tail, "train_accuracy": sum(correct[-tail:]) / tail}
    print(f"reward model: {steps} steps on {len(rows)} pairs, final loss {result['loss']:.4f}, "
          f"accuracy {result['train_accuracy']:.3f}; saved to {out}", file=sys.stderr)
    return result


__all__ = ["train_reward_model"]
