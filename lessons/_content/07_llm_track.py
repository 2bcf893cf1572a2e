# %% [markdown]
# # Lesson 7 — The same loss on a language model
#
# **Goal.** Run the exact `treemdp.preference_loss` of lessons 3–6 on a (tiny) causal language
# model: compute a sequence log-probability as the sum of its token log-probabilities with the
# prompt masked out, take one DPO step by hand and check it against `treemdp llm daa`, then
# train a little and watch the question users ask most: *why do my chosen log-probs fall?*
#
# Everything runs on a CPU in about a minute: a random-init GPT-NeoX (Pythia's layout, hidden
# size 64, 2 layers) with a tokenizer trained on the shipped synthetic TL;DR-style data. Nothing
# is downloaded. You need the `llm` extra: `pip install 'treemdp[lessons,llm]'`.
#
# **Plan.** a tiny model → sequence log-probs, by hand → one DPO step, by hand and by the CLI →
# a short SFT + DPO run: chosen, rejected and the margin → summary → exercises → glossary.

# %%
# %matplotlib inline
import json
import tempfile
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from treemdp import preference_loss
from treemdp.cli import main as treemdp_cli
from treemdp.llm.data import PAIR_FIELDS, read_jsonl, tokenize_rows
from treemdp.llm.logprobs import sequence_log_probs
from treemdp.llm.models import load_model, load_tokenizer
from treemdp.llm.synthetic import shipped_data_dir
from treemdp.plots import live_plot

torch.set_num_threads(2)
work = Path(tempfile.mkdtemp(prefix="treemdp-lesson7-"))  # every file this lesson writes goes here
data = shipped_data_dir()
print("working in", work)

# %% [markdown]
# ## 1. A tiny GPT-NeoX
#
# `treemdp llm tiny-model` writes a randomly initialised `GPTNeoXForCausalLM` and a byte-level BPE
# tokenizer trained on the shipped data, in the `save_pretrained` layout every other command reads.
# The notebook calls the command line in-process: `treemdp_cli([...])` is `treemdp ...` in a shell.

# %%
assert treemdp_cli(["llm", "tiny-model", "--out", str(work / "tiny")]) == 0
tokenizer = load_tokenizer(str(work / "tiny"))
model = load_model(str(work / "tiny")).eval()
print(f"{sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(tokenizer)}")

# %% [markdown]
# ## 2. A sequence log-probability is a sum of token log-probabilities
#
# A preference row has a prompt x and two completions, chosen y_w and rejected y_l. The model
# gives log p(token | everything before it) at every position; log π(y | x) is the sum over the
# completion's tokens only (the prompt is given, not generated: it is masked out). Each
# completion ends with the end-of-text token, so "stop here" is part of the answer.

# %%
rows = read_jsonl(data / "tldr_prefs.jsonl", PAIR_FIELDS)
LIMITS = dict(max_length=128, max_prompt_length=96)  # the CLI's cpu preset, passed explicitly below too
examples, _ = tokenize_rows(rows[:8], tokenizer, kind="pairs", **LIMITS)
first = examples[0]
print(rows[0]["prompt"])
print("chosen:  ", repr(rows[0]["chosen"]))
print("rejected:", repr(rows[0]["rejected"]))


def token_table(prompt_ids, completion_ids, model):
    """Each completion token with log p(token | prompt and the tokens before it)."""
    ids = torch.tensor([prompt_ids + completion_ids])  # [1, T]
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # [1, T, V]; position t predicts token t + 1
    log_probs = torch.log_softmax(logits[0, :-1], dim=-1)  # [T - 1, V]
    targets = ids[0, 1:]  # [T - 1]
    per_token = log_probs.gather(1, targets[:, None])[:, 0]  # [T - 1]
    start = len(prompt_ids) - 1  # the position that predicts the first completion token
    return pd.DataFrame({"token": [tokenizer.decode([t]) for t in completion_ids],
                         "log p": per_token[start:].numpy()})


table = token_table(first.prompt_ids, first.completions[0], model)
print(table.to_string(index=False))
print(f"sum: log pi(chosen | x) = {table['log p'].sum():.4f}")

# %% [markdown]
# The library does the same for a whole batch in one forward pass:
# `treemdp.llm.logprobs.sequence_log_probs(model, batch)` takes right-padded `input_ids`, an
# `attention_mask` and a `completion_mask` (1 on completion tokens). Below the batch is built by
# hand — chosen rows first, then rejected — and the two computations are compared.

# %%
def pair_batch(examples, pad_id):
    """[2B, T]: the B chosen rows, then the B rejected rows, right-padded."""
    rows = [(e.prompt_ids, e.completions[k]) for k in (0, 1) for e in examples]
    width = max(len(p) + len(c) for p, c in rows)
    batch = {name: torch.zeros(len(rows), width, dtype=torch.long)
             for name in ("input_ids", "attention_mask", "completion_mask")}
    batch["input_ids"].fill_(pad_id)
    for i, (p, c) in enumerate(rows):
        batch["input_ids"][i, :len(p) + len(c)] = torch.tensor(p + c)
        batch["attention_mask"][i, :len(p) + len(c)] = 1
        batch["completion_mask"][i, len(p):len(p) + len(c)] = 1
    return batch


batch = pair_batch(examples, tokenizer.pad_token_id)
with torch.no_grad():
    logps, n_tokens = sequence_log_probs(model, batch)  # [2B], [2B]
print(f"library: {float(logps[0]):.4f}   by hand: {table['log p'].sum():.4f}")
assert abs(float(logps[0]) - table["log p"].sum()) < 1e-4

# %% [markdown]
# ## 3. One DPO step, by hand, then by `treemdp llm daa`
#
# The reference is the starting model, frozen: its log-probs are computed once, without a
# gradient. The policy's log-probs go through `preference_loss` — the same function the toy tree
# uses — and one optimiser step follows. Plain SGD makes the update exactly lr × gradient, so
# the by-hand step and the command's step can be compared weight by weight. (With Adam the first
# step is about lr × sign(gradient), and a gradient that is zero up to rounding could flip sign.)

# %%
BETA, LR = 0.1, 0.5
with torch.no_grad():
    ref_w, ref_l = sequence_log_probs(model, batch)[0].chunk(2)  # reference = the starting model

policy = load_model(str(work / "tiny")).train()
optimizer = torch.optim.SGD(policy.parameters(), lr=LR)
pi_w, pi_l = sequence_log_probs(policy, batch)[0].chunk(2)  # [B] each, with gradient
loss = preference_loss(pi_w, pi_l, ref_w, ref_l, beta=BETA, loss="dpo").mean()  # eq. 4, mean over pairs
loss.backward()
optimizer.step()
print(f"loss before the step {loss.item():.6f} (log 2 = 0.693147: policy = reference, so h = 0)")

pairs8 = work / "pairs8.jsonl"
pairs8.write_text("".join(json.dumps(row) + "\n" for row in rows[:8]))
assert treemdp_cli(["llm", "daa", "--model", str(work / "tiny"), "--data", str(pairs8), "--out", str(work / "one_step"),
                    "--loss", "dpo", "--beta", str(BETA), "--optimizer", "sgd", "--lr", str(LR), "--warmup-steps", "0",
                    "--batch-size", "8", "--grad-accum", "1", "--max-steps", "1", "--max-length", "128",
                    "--max-prompt-length", "96", "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
cli_loss = float(pd.read_csv(work / "one_step" / "metrics.csv")["loss"].iloc[0])
cli_model = load_model(str(work / "one_step" / "final"))
with torch.no_grad():  # comparing weights: no graph to build
    weight_gap = max(float((a - b).abs().max()) for a, b in zip(policy.parameters(), cli_model.parameters()))
    moved = max(float((a - b).abs().max()) for a, b in zip(policy.parameters(), model.parameters()))
print(f"loss: by hand {loss.item():.6f}, treemdp llm daa {cli_loss:.6f}")
print(f"largest weight change in the step {moved:.2e}; largest gap between the two updated models {weight_gap:.1e}")
assert abs(cli_loss - loss.item()) < 1e-5 and weight_gap < 1e-3 * moved

# %% [markdown]
# ## 4. A short run: chosen, rejected and the margin
#
# Now the real order of things: SFT on prompt/completion rows, then DPO from the SFT model with
# the SFT model as reference, both with the CLI's `cpu` preset (AdamW, a 2-step warm-up): 20 SFT
# steps, then 5 epochs of DPO over 64 pairs (8 per step, 40 steps). After every 10 DPO steps a
# checkpoint is saved; the cell after it computes, for each checkpoint, the mean log-prob of the
# chosen and of the rejected answers of the 64 training pairs and of 32 held-out pairs, and the mean margin h = (log π_w − log ref_w) − (log π_l − log ref_l). The numbers are
# whatever this run gives; the text after the plot reads them, it does not predict them.

# %%
SETTINGS = dict(sft_steps=20, dpo_pairs=64, dpo_epochs=5, beta=BETA, save_every=10)
train_pairs = work / "pairs64.jsonl"
train_pairs.write_text("".join(json.dumps(row) + "\n" for row in rows[:SETTINGS["dpo_pairs"]]))
assert treemdp_cli(["llm", "sft", "--model", str(work / "tiny"), "--data", str(data / "tldr_sft.jsonl"),
                    "--out", str(work / "sft"), "--max-steps", str(SETTINGS["sft_steps"]), "--device", "cpu",
                    "--precision", "fp32", "--no-progress"]) == 0
assert treemdp_cli(["llm", "daa", "--model", str(work / "sft" / "final"), "--data", str(train_pairs),
                    "--out", str(work / "dpo"), "--loss", "dpo", "--beta", str(BETA),
                    "--epochs", str(SETTINGS["dpo_epochs"]), "--save-every", str(SETTINGS["save_every"]),
                    "--max-length", "128", "--max-prompt-length", "96", "--device", "cpu", "--precision", "fp32",
                    "--no-progress"]) == 0
print(json.dumps({k: v for k, v in json.loads((work / "dpo" / "config.json").read_text()).items()
                  if k in ("loss", "beta", "optimizer", "lr", "warmup_steps", "batch_size", "total_steps")}))

# %%
held_out_rows = read_jsonl(data / "tldr_prefs_test.jsonl", PAIR_FIELDS)
pair_sets = {"training pairs": tokenize_rows(rows[:SETTINGS["dpo_pairs"]], tokenizer, kind="pairs", **LIMITS)[0],
             "held-out pairs": tokenize_rows(held_out_rows[:32], tokenizer, kind="pairs", **LIMITS)[0]}


def mean_log_probs(model_dir):
    """name -> (log pi(chosen) [n], log pi(rejected) [n]) for both pair sets under one checkpoint."""
    m = load_model(str(model_dir)).eval()
    out = {}
    with torch.no_grad():
        for name, exs in pair_sets.items():
            chunks = [sequence_log_probs(m, pair_batch(exs[i:i + 32], tokenizer.pad_token_id))[0].chunk(2)
                      for i in range(0, len(exs), 32)]
            out[name] = (torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]))
    return out


checkpoints = sorted((int(p.name.split("-")[1]), p) for p in (work / "dpo").glob("checkpoint-*"))
total = json.loads((work / "dpo" / "config.json").read_text())["total_steps"]
steps = [0] + [s for s, _ in checkpoints] + [total]
measured = [mean_log_probs(p) for p in [work / "sft" / "final"] + [p for _, p in checkpoints] + [work / "dpo" / "final"]]
changes, curves, per_pair = {}, {}, {}
for name, exs in pair_sets.items():
    ref_w, ref_l = measured[0][name]
    # [checkpoints, pairs]: each pair's log-prob minus its own value at the start of DPO
    d_w = torch.stack([m[name][0] - ref_w for m in measured]).numpy()
    d_l = torch.stack([m[name][1] - ref_l for m in measured]).numpy()
    changes[name] = (d_w, d_l)
    curves[name] = pd.DataFrame({"step": steps, "log pi(chosen)": [float(m[name][0].mean()) for m in measured],
                                 "log pi(rejected)": [float(m[name][1].mean()) for m in measured],
                                 "change chosen": d_w.mean(1), "change rejected": d_l.mean(1),
                                 "margin h": (d_w - d_l).mean(1)})
    per_pair[name] = pd.DataFrame({  # one row per pair: the per-pair view exercise 2 asks for
        "chosen tokens": [len(e.completions[0]) for e in exs], "rejected tokens": [len(e.completions[1]) for e in exs],
        "log pi(chosen) at start": ref_w.numpy(), "log pi(rejected) at start": ref_l.numpy(),
        "change chosen": d_w[-1], "change rejected": d_l[-1], "margin h": d_w[-1] - d_l[-1]})
curves["training pairs"]

# %% [markdown]
# **Why the rejected answers start so much lower.** At the start of DPO (the SFT model) the
# rejected answers already have a far lower log-probability than the chosen ones. Two things add
# up. log π(y|x) is a *sum* over the answer's tokens, and in this data the rejected answers are the
# longer ones, so they collect more negative terms; and their tokens are, on average, less likely.
# Per pair the gap splits exactly into the two: (chosen tokens − rejected tokens) × the chosen
# answer's log-prob per token (the length part), plus rejected tokens × (chosen per token −
# rejected per token) (the per-token part). The cell below prints both for this run:

# %%
for name, frame in per_pair.items():
    tokens_w, tokens_l = frame["chosen tokens"], frame["rejected tokens"]
    start_w, start_l = frame["log pi(chosen) at start"], frame["log pi(rejected) at start"]
    per_token_w, per_token_l = start_w / tokens_w, start_l / tokens_l
    length_part = ((tokens_w - tokens_l) * per_token_w).mean()
    token_part = (tokens_l * (per_token_w - per_token_l)).mean()
    print(f"{name}: chosen {tokens_w.min()}-{tokens_w.max()} tokens (mean {tokens_w.mean():.1f}), rejected "
          f"{tokens_l.min()}-{tokens_l.max()} (mean {tokens_l.mean():.1f}); log pi(chosen) {start_w.mean():.1f}, "
          f"log pi(rejected) {start_l.mean():.1f} at the start: a gap of {(start_w - start_l).mean():.1f} nats = "
          f"{length_part:.1f} from the extra tokens + {token_part:.1f} from less likely tokens "
          f"({per_token_w.mean():.2f} vs {per_token_l.mean():.2f} nats per token)")

# %% [markdown]
# Pick the pair set: the training pairs DPO saw, or held-out pairs it never saw. Every curve is a
# *change since the start of DPO*, so the chosen answers' move is not hidden beside the rejected
# answers' much larger one: each thin line is one pair, the thick line their mean, and each panel
# has its own y axis.

# %%
pair_set = widgets.Dropdown(options=list(curves), value="training pairs", description="pairs")


def setup_curves(fig):
    axes = fig.subplots(1, 3)
    n_pairs = max(len(frame) for frame in per_pair.values())
    state = {"axes": axes, "thin": [], "thick": []}
    for ax, color, label in zip(axes, ("tab:blue", "tab:red", "k"), ("chosen", "rejected", "margin h")):
        state["thin"].append([ax.plot([], [], color=color, lw=0.5, alpha=0.3)[0] for _ in range(n_pairs)])
        state["thick"].append(ax.plot([], [], "o-", color=color, lw=2.2, label=f"{label}: mean")[0])
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel("DPO step")
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("log pi(chosen) - its value at step 0")
    axes[1].set_ylabel("log pi(rejected) - its value at step 0")
    axes[2].set_ylabel("h = change chosen - change rejected")
    fig.suptitle(" ", fontsize=10)
    return state


def update_curves(state):
    d_w, d_l = changes[pair_set.value]
    for ax, thin, thick, values in zip(state["axes"], state["thin"], state["thick"], (d_w, d_l, d_w - d_l)):
        for k, line in enumerate(thin):  # one thin line per pair (unused lines stay empty)
            line.set_data(steps, values[:, k]) if k < values.shape[1] else line.set_data([], [])
        thick.set_data(steps, values.mean(1))
        pad = 0.05 * (values.max() - values.min()) + 1e-3
        ax.set_xlim(-1, steps[-1] + 1)
        ax.set_ylim(min(values.min(), 0.0) - pad, max(values.max(), 0.0) + pad)
    frame = curves[pair_set.value].iloc[-1]
    state["axes"][0].figure.suptitle(
        f"{pair_set.value}, DPO beta={BETA}: mean change chosen {frame['change chosen']:+.2f}, rejected "
        f"{frame['change rejected']:+.2f}, margin h {frame['margin h']:+.2f} nats", fontsize=10)


display(live_plot(update_curves, [pair_set], setup=setup_curves, figsize=(13, 3.8)))

# %% [markdown]
# What this run did, read from its numbers:

# %%
for name, frame in curves.items():
    start, end = frame.iloc[0], frame.iloc[-1]
    d_w, d_l = end["change chosen"], end["change rejected"]
    fell = int((per_pair[name]["change chosen"] < 0).sum())
    verdict = ("both fell: the margin grew because the rejected answers fell further" if d_w < 0 and d_l < 0 else
               "the chosen answers rose and the rejected fell" if d_w > 0 > d_l else
               "both rose" if d_w > 0 and d_l > 0 else "the chosen answers fell and the rejected rose")
    print(f"{name}: log pi(chosen) {start['log pi(chosen)']:.2f} -> {end['log pi(chosen)']:.2f} ({d_w:+.2f}), "
          f"log pi(rejected) {start['log pi(rejected)']:.2f} -> {end['log pi(rejected)']:.2f} ({d_l:+.2f}), "
          f"margin h {end['margin h']:+.2f}: {verdict}; the chosen answer fell in {fell} of {len(per_pair[name])} pairs")

# %% [markdown]
# One row per pair (the per-pair view for exercise 2): token counts, the log-probs at the start of
# DPO and each pair's change by the end. Left: the change of the chosen answer against its length;
# right: the same for the rejected answer.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
for ax, role, color in ((left, "chosen", "tab:blue"), (right, "rejected", "tab:red")):
    for name, marker in zip(per_pair, ("o", "x")):
        frame = per_pair[name]
        ax.scatter(frame[f"{role} tokens"], frame[f"change {role}"], marker=marker, color=color, s=18,
                   alpha=0.7, label=name)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set(xlabel=f"{role} answer length (tokens)", ylabel=f"change of log pi({role}) over DPO")
    ax.legend(fontsize=8)
per_pair["training pairs"].sort_values("rejected tokens").round(2).head(10)

# %% [markdown]
# If the chosen log-prob falls while the margin grows, nothing is broken: the loss only asks for
# the *difference* h to grow (lesson 4: one number per pair, a huge null space). Probability mass
# that leaves both answers goes somewhere — to sequences in no dataset, like the OOD trajectories
# of lessons 3–6. Here we cannot enumerate every sequence to see where it goes; **lesson 9**
# (exact likelihood displacement) measures it exactly on a model small enough to enumerate.
#
# ## Summary
#
# - A sequence log-prob is the sum of the completion's token log-probs; the prompt and padding
#   are masked out. `sequence_log_probs` does it for a padded batch in one forward pass.
# - DPO on a language model is the toy track's `preference_loss` on those sums, with the
#   reference's log-probs computed once and frozen; one step by hand equals `treemdp llm daa`'s.
# - Chosen and rejected log-probs can move together; the loss sees only their margin, so watch
#   both, and the margin, in every DPO run (the run above shows what this one did).
#
# ## Exercises
#
# 1. Redo section 3 with `loss="ipo"` and `loss="slic"` (and the same flags for the command).
#    Does the by-hand step still match?
# 2. Pass `--average-logps` to the command and divide by the token counts (`n_tokens`) by hand.
#    Which pairs change most, the long or the short ones? Compare the `per_pair` table and the
#    scatter of section 4 (one point per pair) before and after.
# 3. Lengthen the run (`dpo_epochs`) or raise β. Does the chosen log-prob on held-out pairs
#    behave like the one on training pairs?

# %%
# Your experiments here.

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | token log-prob | log p(token \| prompt and earlier tokens), from the model's logits |
# | sequence log-prob log π(y\|x) | the sum of a completion's token log-probs, prompt masked |
# | `completion_mask` | 1 on completion tokens, 0 on prompt and padding |
# | `sequence_log_probs(model, batch)` | log π(y\|x) for every row of a padded batch, one forward pass |
# | `treemdp llm tiny-model / sft / daa` | build the tiny model; supervised fine-tuning; DPO/IPO/SLiC |
# | reference log-probs | the starting (SFT) model's log π, computed once, no gradient |
# | margin h | (log π_w − log ref_w) − (log π_l − log ref_l), what the loss pushes up |
