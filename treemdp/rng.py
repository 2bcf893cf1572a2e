"""Named random streams: every random draw of a run comes from ``stream(seed, name)``.

A run has one integer seed; each use of randomness (the policy's initialisation, the lab's
demonstrations, its preference pairs, ...) draws from its own stream, derived from the seed and
the stream's name, so adding a draw to one stream never shifts another. The table
:data:`STREAMS` says how each name derives its generator; the derivations are the ones the
committed numbers were made with (``tests/test_rng.py`` pins the first draws of each)::

    stream(seed, "pairs")          # numpy Generator: default_rng([seed, 2])
    stream(seed, "policy_init")    # torch Generator seeded with the seed itself
    stream_seed(seed, "reward_model_init")   # an integer seed for a constructor that takes one

Streams are local generators (``numpy.random.Generator``, ``torch.Generator``): nothing here
touches numpy's or torch's global random state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch


@dataclass(frozen=True)
class Stream:
    """How one named stream derives its generator from a run's seed.

    Attributes:
        kind: ``numpy``: ``numpy.random.default_rng([seed, key])``; ``torch``: a CPU
            ``torch.Generator`` seeded with :meth:`seed_of`.
        key: ``numpy``: the second entry of the seed sequence. ``torch``: ``None`` (the seed
            itself), an offset added to the seed (``offset=True``), or the second entry of a
            ``numpy.random.SeedSequence([seed, key])`` whose first 32-bit word seeds the generator.
        offset: see ``key``.
        doc: what the stream draws.
    """

    kind: str
    key: int | None
    doc: str
    offset: bool = False

    def seed_of(self, seed: int) -> int:
        """The integer seed of this stream for a run's seed (torch streams)."""
        if self.key is None:
            return int(seed)
        if self.offset:
            return self.key + int(seed)
        return int(np.random.SeedSequence([int(seed), self.key]).generate_state(1)[0])


#: Every named stream. Keys are part of the pinned numbers: never change one; add a new name.
STREAMS: dict[str, Stream] = {
    "policy_init": Stream("torch", None, "a policy's initial weights (treemdp.policies)"),
    "demonstrations": Stream("numpy", 1, "the lab's SFT demonstrations from softmax(r*/T)"),
    "pairs": Stream("numpy", 2, "the lab's preference pairs and their Bradley-Terry labels"),
    "reward_model_init": Stream("torch", 3, "the lab's reward model initialisation"),
    "minibatches": Stream("torch", 4, "the order of the preference pairs in minibatch DAA (engine.PairSchedule)"),
    "gold": Stream("numpy", 7919, "the lab's random gold reward r*"),
    "synonym_noise": Stream("torch", 10_000, "the near-synonym head noise of the displacement experiment",
                            offset=True),
    "bootstrap": Stream("numpy", None, "bootstrap resamples of the lab's claims and fits"),
    "random_logits": Stream("torch", None, "the squeezing experiment's random logits"),
    "demonstration_picks": Stream("torch", None, "which trajectories the CHES experiment demonstrates"),
    "rollouts": Stream("numpy", None, "Monte-Carlo rollouts through the env (treemdp.env.rollout)"),
}
# Streams with key None use the seed itself, as they did before they had names; they draw from
# generators equal to policy_init's (torch) or bootstrap's (numpy) for the same seed.


def stream(seed: int, name: str) -> Union[np.random.Generator, torch.Generator]:
    """The generator of stream ``name`` for a run's ``seed`` (a new one, at its start).

    Raises:
        KeyError: an unknown name (listing the known ones).
    """
    spec = _spec(name)
    if spec.kind == "numpy":
        return np.random.default_rng(int(seed) if spec.key is None else [int(seed), spec.key])
    return torch.Generator().manual_seed(spec.seed_of(seed))


def stream_seed(seed: int, name: str) -> int:
    """The integer seed of torch stream ``name`` (for constructors that take a seed, not a generator)."""
    spec = _spec(name)
    if spec.kind != "torch":
        raise ValueError(f"stream {name!r} is a numpy stream; it has no integer seed")
    return spec.seed_of(seed)


def _spec(name: str) -> Stream:
    try:
        return STREAMS[name]
    except KeyError:
        raise KeyError(f"unknown random stream {name!r}; known: {', '.join(STREAMS)}") from None


__all__ = ["Stream", "STREAMS", "stream", "stream_seed"]
