"""A small synthetic TL;DR-like summarisation data set and its gold scorer (offline stand-in).

The Reddit TL;DR preference data of the paper (Stiennon et al., 2020) is too big for tests and
needs the network. This module writes posts from templates: each post has a subject, an event and
a feeling, named in its ``TITLE`` line. A good summary restates those facts briefly; the bad ones
miss facts, add off-topic facts or ramble. :func:`gold_score` is the "true reward" that plays the
role of the paper's GPT-4 judge: it reads the facts back from the prompt and scores coverage, with
a penalty for words beyond a concise length (so length can be exploited only up to a point).

Everything is a pure function of a seed (``random.Random(seed)``), so the shipped files in
``treemdp/data`` are regenerated bit for bit by ``scripts/make_synthetic_tldr.py``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SUBREDDITS = ["relationships", "personalfinance", "cooking", "fitness", "cats", "jobs", "gaming"]
SUBJECTS = ["car", "laptop", "dog", "cat", "roommate", "boss", "sister", "landlord", "bike",
            "phone", "garden", "neighbor", "friend", "kitchen", "apartment", "team"]
EVENTS = ["broke", "left", "moved", "failed", "changed", "disappeared", "yelled", "won",
          "flooded", "crashed", "quit", "lied"]
FEELINGS = ["angry", "sad", "confused", "happy", "worried", "tired", "stressed", "relieved"]
QUESTIONS = ["talk to them", "move out", "ask for help", "let it go", "call someone",
             "wait a week", "say sorry", "start over"]
FILLER = ["anyway", "so yeah", "long story", "it is what it is", "honestly", "basically",
          "you know", "whatever"]
TITLE_RE = re.compile(r"TITLE: my (\w+) (\w+) and i am (\w+)")
STOP = {"my", "and", "i", "am", "the", "a"}
CONCISE_WORDS = 14


def make_prompt(rng: random.Random) -> tuple[str, dict]:
    """One post; returns the prompt text (ending in ``TL;DR:``) and its facts."""
    facts = {"sub": rng.choice(SUBREDDITS), "subject": rng.choice(SUBJECTS),
             "event": rng.choice(EVENTS), "feeling": rng.choice(FEELINGS),
             "question": rng.choice(QUESTIONS), "days": rng.randint(2, 30)}
    other = rng.choice([s for s in SUBJECTS if s != facts["subject"]])
    body = (f"{facts['days']} days ago my {facts['subject']} {facts['event']}. "
            f"my {other} says it is fine but i am {facts['feeling']}. "
            f"should i {facts['question']}?")
    prompt = (f"SUBREDDIT: r/{facts['sub']}\nTITLE: my {facts['subject']} {facts['event']} "
              f"and i am {facts['feeling']}\nPOST: {body}\nTL;DR:")
    facts["other"] = other
    return prompt, facts


def good_summary(facts: dict, rng: random.Random) -> str:
    """A concise summary naming subject, event and feeling."""
    forms = [f" my {facts['subject']} {facts['event']} and i am {facts['feeling']}.",
             f" {facts['subject']} {facts['event']}, i feel {facts['feeling']}. should i "
             f"{facts['question']}?",
             f" my {facts['subject']} {facts['event']}. i am {facts['feeling']}."]
    return rng.choice(forms)


def bad_summary(facts: dict, rng: random.Random) -> str:
    """A worse summary: misses a fact, swaps in the off-topic subject, or rambles."""
    kind = rng.randrange(3)
    if kind == 0:  # off-topic: talks about the other person/thing
        return f" my {facts['other']} says it is fine."
    if kind == 1:  # misses the event and feeling
        return f" should i {facts['question']}? {rng.choice(FILLER)}."
    filler = " ".join(rng.choice(FILLER) for _ in range(rng.randint(6, 10)))
    return f" {filler} my {facts['subject']} {filler}."


def gold_score(prompt: str, completion: str) -> float:
    """The synthetic task's true reward of ``completion`` for ``prompt``, higher is better.

    Coverage of the title's facts (subject, event, feeling) in [0, 1], minus 0.05 per word beyond
    ``CONCISE_WORDS``, minus 0.3 if the completion names a subject the title does not. Prompts
    without a synthetic ``TITLE`` line score coverage 0.
    """
    words = re.findall(r"[a-z]+", completion.lower())
    match = TITLE_RE.search(prompt)
    facts = set(match.groups()) if match else set()
    coverage = len(facts & set(words)) / 3.0 if facts else 0.0
    off_topic = any(w in SUBJECTS and w not in facts for w in words)
    return coverage - 0.05 * max(0, len(words) - CONCISE_WORDS) - 0.3 * off_topic


def make_rows(n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``n`` SFT rows (prompt/completion) and ``n`` preference rows (prompt/chosen/rejected)."""
    rng = random.Random(seed)
    sft, prefs = [], []
    for _ in range(n):
        prompt, facts = make_prompt(rng)
        sft.append({"prompt": prompt, "completion": good_summary(facts, rng)})
        prompt, facts = make_prompt(rng)
        a, b = good_summary(facts, rng), bad_summary(facts, rng)
        if rng.random() < 0.2:  # some pairs compare two good summaries, ranked by the gold score
            b = good_summary(facts, rng)
            if b == a:
                b = bad_summary(facts, rng)
        chosen, rejected = (a, b) if gold_score(prompt, a) >= gold_score(prompt, b) else (b, a)
        prefs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return sft, prefs


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    """Write one JSON object per line (UTF-8, stable key order)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_dataset(out_dir: str | Path, n_train: int = 300, n_test: int = 64,
                  seed: int = 0) -> list[Path]:
    """Write ``tldr_sft.jsonl``, ``tldr_prefs.jsonl`` and ``tldr_prefs_test.jsonl``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sft, prefs = make_rows(n_train, seed)
    _, test = make_rows(n_test, seed + 1)
    paths = [out / "tldr_sft.jsonl", out / "tldr_prefs.jsonl", out / "tldr_prefs_test.jsonl"]
    for rows, path in zip((sft, prefs, test), paths):
        write_jsonl(rows, path)
    return paths


def shipped_data_dir() -> Path:
    """The folder of the shipped synthetic files (inside the installed package)."""
    return Path(__file__).resolve().parent.parent / "data"
