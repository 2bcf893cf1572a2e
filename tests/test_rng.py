"""Named random streams: each name keeps the derivation the pinned numbers were made with."""

import numpy as np
import pytest
import torch

from treemdp.rng import STREAMS, stream, stream_seed

SEED = 5


def first_draws(generator) -> list[float]:
    if isinstance(generator, np.random.Generator):
        return generator.random(3).tolist()
    return torch.rand(3, generator=generator, dtype=torch.float64).tolist()


#: name -> the generator as it was written before the streams had names (an independent derivation)
LEGACY = {
    "policy_init": lambda seed: torch.Generator().manual_seed(seed),
    "demonstrations": lambda seed: np.random.default_rng([seed, 1]),
    "pairs": lambda seed: np.random.default_rng([seed, 2]),
    "reward_model_init": lambda seed: torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, 3]).generate_state(1)[0])),
    "minibatches": lambda seed: torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 4]).generate_state(1)[0])),
    "gold": lambda seed: np.random.default_rng([seed, 7919]),
    "synonym_noise": lambda seed: torch.Generator().manual_seed(10_000 + seed),
    "bootstrap": lambda seed: np.random.default_rng(seed),
    "random_logits": lambda seed: torch.Generator().manual_seed(seed),
    "demonstration_picks": lambda seed: torch.Generator().manual_seed(seed),
    "rollouts": lambda seed: np.random.default_rng(seed),
}

#: The first three uniform draws of each stream at seed 5 (float64), pinned.
PINNED = {
    "policy_init": [0.6420150066280941, 0.2597579151763153, 0.36082761942715424],
    "demonstrations": [0.7742041803738812, 0.47072268318809307, 0.6958803443421149],
    "pairs": [0.23772096442823154, 0.42782131249807576, 0.5914133521906731],
    "synonym_noise": [0.007628672758995703, 0.19001003011374484, 0.7150873634592959],
}


def test_every_stream_is_covered():
    assert set(LEGACY) == set(STREAMS)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_each_stream_equals_its_old_derivation(name):
    for seed in (0, SEED, 123456):
        assert first_draws(stream(seed, name)) == first_draws(LEGACY[name](seed)), (name, seed)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_first_draws_are_pinned(name):
    assert first_draws(stream(SEED, name)) == PINNED[name]


def test_integer_seeds_of_torch_streams():
    assert stream_seed(SEED, "reward_model_init") == 727168946
    assert stream_seed(SEED, "minibatches") == 278233753
    assert stream_seed(SEED, "policy_init") == SEED
    with pytest.raises(ValueError, match="numpy stream"):
        stream_seed(SEED, "pairs")


def test_streams_are_independent_and_fresh():
    a, b = stream(SEED, "demonstrations"), stream(SEED, "pairs")
    assert first_draws(a) != first_draws(b)
    assert first_draws(stream(SEED, "pairs")) == first_draws(stream(SEED, "pairs"))  # a new generator each time


def test_unknown_stream_is_named():
    with pytest.raises(KeyError, match="unknown random stream 'noise'; known: policy_init"):
        stream(0, "noise")


def test_streams_leave_global_state_alone():
    torch.manual_seed(1)
    np.random.seed(1)
    expected_torch, expected_numpy = torch.rand(2), np.random.rand(2)
    torch.manual_seed(1)
    np.random.seed(1)
    for name in STREAMS:
        first_draws(stream(SEED, name))
    assert torch.equal(torch.rand(2), expected_torch) and np.array_equal(np.random.rand(2), expected_numpy)
