"""Comparing a student's tensor with the library's, naming the likely mistake when they differ."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .core import Incorrect, call_student

ATOL = 1e-5
RTOL = 1e-4


def as_tensor(value, what: str) -> torch.Tensor:
    """The student's return value as a float64 tensor, or Incorrect naming what came back."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise Incorrect(f"{what} returns a complex tensor; it should be real")
        return value.detach().to(torch.float64)
    try:  # numbers, numpy arrays and numpy scalars are fine where the stub allows them
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
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
    return_where = f" at {where}" if where else f" on test case {first + 1}"
    raise Incorrect(f"{what} returns {value:.6g}{return_where}, expected {float(expected.reshape(-1)[first]):.6g} "
                    f"({int(bad.sum())} of {bad.numel()} values differ)")


def check_gradient(fn, inputs: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], *, what: str,
                   wrt: Sequence[int], names: Sequence[str], forbidden: tuple[str, ...] = (), why: str = "",
                   subgradient: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                   **kwargs) -> None:
    """Autograd through the student's ``fn`` must give the expected gradient of ``sum(fn(*inputs))``.

    Args:
        fn: the student's function, called as ``fn(*inputs, **kwargs)`` on fresh leaf copies.
        inputs: the input tensors.
        expected: the library's gradient for each input listed in ``wrt``.
        wrt: indices of the inputs the task says the output is differentiable in.
        names: how to call those inputs in messages.
        forbidden, why: as for :func:`~.core.call_student`.
        subgradient: ``(kink mask, low, high)`` for the first input in ``wrt``: where the mask is
            True any gradient in [low, high] is right (a hinge's kink: every subgradient is).

    Raises:
        Incorrect: no gradient reaches an input, or it differs from the expected one.
    """
    leaves = [t.detach().clone().requires_grad_(i in wrt) for i, t in enumerate(inputs)]
    out = call_student(fn, *leaves, forbidden=forbidden, why=why, **kwargs)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise Incorrect(f"{what} is not differentiable: no gradient flows back to "
                        f"{' or '.join(names)} (keep it in torch: no .item(), .detach(), numpy or Python floats)")
    try:
        grads = torch.autograd.grad(out.sum(), [leaves[i] for i in wrt], allow_unused=True)
    except RuntimeError as e:
        raise Incorrect(f"{what}: autograd could not differentiate it ({str(e).splitlines()[0][:160]})") from None
    for k, (i, name, grad, want) in enumerate(zip(wrt, names, grads, expected)):
        want = want.detach().double()
        if grad is None or (not grad.any() and want.abs().max() > 1e-8):
            raise Incorrect(f"{what}: no gradient reaches {name} (is it detached, or turned into a Python "
                            f"number?); training moves the policy only through that gradient")
        grad = grad.detach().double()
        ok = torch.isclose(grad, want, atol=1e-4, rtol=1e-3)
        if k == 0 and subgradient is not None:
            kink, low, high = subgradient
            ok = torch.where(kink, (grad >= low.double() - 1e-6) & (grad <= high.double() + 1e-6), ok)
        if not bool(ok.all()):
            first = int((~ok).reshape(-1).nonzero()[0])
            raise Incorrect(f"{what} gives the right values but the wrong gradient in {name}: "
                            f"{float(grad.reshape(-1)[first]):.4g} where {float(want.reshape(-1)[first]):.4g} "
                            f"was expected (at {name} = {float(inputs[i].reshape(-1)[first]):.4g})")
