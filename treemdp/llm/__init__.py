"""The LLM track: SFT then any direct alignment objective on causal LMs (Pythia / GPT-NeoX),
tested on CPU.

Modules (each imports ``transformers`` only inside functions, so importing this package is
cheap): ``data`` (JSONL, datasets and hub data, conversational rows, tokenisation, masking,
padding), ``logprobs`` (sequence log-probs, each pair's prompt computed once), ``models``
(loading, the offline tiny model), ``train`` (SFT and DAA loops calling
``treemdp.losses.preference_loss``), ``evaluate`` (implicit-reward accuracy, KL, eq. 6, win
rate), ``plots``, ``synthetic`` (the shipped TL;DR-like data and its gold scorer). The command
line is ``treemdp.cli.llm``.
"""


def __getattr__(name: str):
    """``LLMConfig`` and ``LLMRun`` from :mod:`treemdp.llm.train`, loaded on first use;
    the old names ``TrainConfig`` and ``RunResult`` still work for one release (deprecated)."""
    if name in ("LLMConfig", "LLMRun", "TrainConfig", "RunResult"):
        from . import train as _train
        return getattr(_train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
