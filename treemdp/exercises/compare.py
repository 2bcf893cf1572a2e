"""Comparing a student's tensor with the library's, naming the likely mistake when they differ."""

from __future__ import annotations

from typing import Sequence

import torch

from .core import Incorrect

ATOL = 1e-5
RTOL = 1e-4


def as_tensor(value, what: str) -> torch.Tensor:
    """The student's return value as a float64 tensor, or Incorrect naming what came back."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise Incorrect(f"{what} should return a torch tensor, got {type(value).__name__}") from None


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b.to(a.dtype), atol=ATOL, rtol=RTOL, equal_nan=False))


def compare(got, expected: torch.Tensor, *, what: str, inputs: Sequence[tuple[str, torch.Tensor]],
            mistakes: Sequence[tuple[torch.Tensor, str]] = ()) -> float:
    """Check ``got`` against ``expected`` elementwise; return the max abs error when they agree.

    Args:
        got: the student's output.
        expected: the library's output on the same inputs.
        what: how to name the student's function in messages.
        inputs: (name, tensor) pairs of the inputs, to quote the first input where they differ.
        mistakes: (what a known mistake returns, the message naming it), tried in order when the
            answer is wrong; the first that matches becomes the reason.

    Raises:
        Incorrect: with the most specific reason found.
    """
    got_t = as_tensor(got, what)
    expected = expected.detach().to(torch.float64)
    if got_t.shape != expected.shape:
        raise Incorrect(f"{what} returned shape {list(got_t.shape)} but should return {list(expected.shape)}"
                        + (" (one value per example; do not take the mean)" if got_t.dim() == 0 else ""))
    if close(got_t, expected):
        return float((got_t - expected).abs().max()) if got_t.numel() else 0.0
    for alternative, message in mistakes:
        alternative = alternative.detach().to(torch.float64)
        if close(got_t, alternative):
            raise Incorrect(message)
    bad = ~torch.isclose(got_t, expected, atol=ATOL, rtol=RTOL)
    first = int(bad.reshape(-1).nonzero()[0])
    where = ", ".join(f"{name} = {float(t.reshape(-1)[first]):.4g}" for name, t in inputs
                      if t.numel() == got_t.numel())
    value = float(got_t.reshape(-1)[first])
    if not torch.isfinite(torch.tensor(value)):
        raise Incorrect(f"{what} returns {value} at {where}; stay in log space (logsigmoid, logsumexp) "
                        f"so large inputs do not overflow")
    return_where = f" at {where}" if where else f" at position {first}"
    raise Incorrect(f"{what} returns {value:.6g}{return_where}, expected {float(expected.reshape(-1)[first]):.6g} "
                    f"({int(bad.sum())} of {bad.numel()} values differ)")


def check_differentiable(fn, x: torch.Tensor, reference_fn, what: str) -> None:
    """Autograd through the student's ``fn`` at ``x`` must give the library's gradient."""
    x1 = x.detach().clone().requires_grad_(True)
    out = fn(x1)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise Incorrect(f"{what} is not differentiable: no gradient flows back to the input "
                        f"(keep it in torch: no .item(), numpy or Python floats)")
    (grad,) = torch.autograd.grad(out.sum(), x1, allow_unused=True)
    x2 = x.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference_fn(x2).sum(), x2)
    if grad is None or not torch.allclose(grad.double(), expected.double(), atol=1e-4, rtol=1e-3):
        raise Incorrect(f"{what} gives the right values but the wrong gradient")
