"""The engine's flat-buffer parameter groups step exactly like torch.optim on the separate tensors."""

import pytest
import torch

from treemdp import engine
from treemdp.engine import OPTIMIZERS, make_optimizer


def make_params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(3, 4, 5, generator=g), "bias": torch.randn(3, 5, generator=g),
            "scale": torch.randn(3, 1, generator=g)}


def loss_of(p: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """A smooth non-quadratic loss mixing every parameter (so every update is non-trivial)."""
    out = torch.tanh(torch.einsum("rij,rj->ri", p["weight"], p["bias"]) * p["scale"])  # [3, 4]
    return ((out - target) ** 2).sum() + (p["bias"] ** 4).sum() * 0.01


def run(name: str, kernel: dict, steps: int = 25):
    """``steps`` updates of the same loss through a flat group and through the separate tensors."""
    target = torch.linspace(-1, 1, 12).reshape(3, 4)
    flat, leaves = engine._flat_group({n: p.clone() for n, p in make_params().items()})
    separate = {n: p.clone().requires_grad_(True) for n, p in make_params().items()}
    if kernel:
        flat_opt = OPTIMIZERS[name]([flat], lr=0.05, **kernel)
        ref_opt = OPTIMIZERS[name](list(separate.values()), lr=0.05, **kernel)
    else:  # the engine's own choice of kernel, for both
        flat_opt = make_optimizer(name, [{"params": [flat], "lr": 0.05}])
        ref_opt = make_optimizer(name, [{"params": list(separate.values()), "lr": 0.05}])
    for _ in range(steps):
        flat.grad.zero_()
        loss_of(leaves, target).backward()
        flat_opt.step()
        ref_opt.zero_grad()
        loss_of(separate, target).backward()
        ref_opt.step()
    return {n: leaf.detach() for n, leaf in leaves.items()}, {n: p.detach() for n, p in separate.items()}


@pytest.mark.parametrize("name,kernel", [("sgd", {}), ("sgd", {"foreach": False}), ("sgd", {"foreach": True}),
                                         ("rmsprop", {}), ("rmsprop", {"foreach": False}),
                                         ("rmsprop", {"foreach": True}), ("adam", {"foreach": False}),
                                         ("adam", {"foreach": True})])
def test_flat_group_steps_exactly_like_per_parameter_optim(name, kernel):
    flat, separate = run(name, kernel)
    for n in separate:
        assert torch.equal(flat[n], separate[n]), n


def test_fused_adam_on_a_flat_group_differs_by_rounding_only():
    """The engine's Adam is torch's fused CPU kernel, whose vectorised body and scalar tail round
    differently (fused multiply-add), so where a value falls in the buffer can change its last
    bit: one flat buffer and three separate tensors agree to float32 rounding, not bit for bit.
    Runs stay reproducible (the same layout every time); only the claim "per-parameter numbers"
    is to rounding for Adam."""
    flat, separate = run("adam", {})
    for n in separate:
        torch.testing.assert_close(flat[n], separate[n], rtol=2e-6, atol=1e-6)
    assert run("adam", {})[0]["weight"].equal(flat["weight"])  # the same layout, the same bits


def test_flat_group_leaves_are_views_of_one_buffer():
    params = make_params()
    flat, leaves = engine._flat_group(params)
    assert flat.numel() == sum(p.numel() for p in params.values())
    with torch.no_grad():
        flat.add_(1.0)
    for n, p in params.items():
        assert torch.equal(leaves[n].detach(), p + 1.0), n
        assert leaves[n].grad.data_ptr() >= flat.grad.data_ptr()
