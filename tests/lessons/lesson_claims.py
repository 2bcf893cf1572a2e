"""What each lesson's text says about its own runs, asserted in the lesson's kernel after it ran.

``test_notebooks.test_lesson_runs_and_its_widgets_redraw`` appends ``CLAIMS[stem]`` as the last
cell of that lesson, so every sentence that reads a number off a run (or picks a run for its
shape) is checked against the lesson's own runs, not against numbers copied into a test. The code
uses the lesson's variables; it must not depend on widget values (the widget probe moved them).
"""

CLAIMS = {
    # lesson 7: "the rejected answers are the longer ones ... their tokens are, on average, less
    # likely", and the gap splits exactly into a length part and a per-token part; the plot shows
    # changes since the start (per pair) on separate axes.
    "07_llm_track": """
for name, frame in per_pair.items():
    tokens_w, tokens_l = frame["chosen tokens"], frame["rejected tokens"]
    start_w, start_l = frame["log pi(chosen) at start"], frame["log pi(rejected) at start"]
    assert tokens_l.mean() > tokens_w.mean(), (name, frame.describe())
    assert (start_w / tokens_w).mean() > (start_l / tokens_l).mean(), name  # less likely tokens, on average
    length_part = ((tokens_w - tokens_l) * start_w / tokens_w).mean()
    token_part = (tokens_l * (start_w / tokens_w - start_l / tokens_l)).mean()
    assert abs(length_part + token_part - (start_w - start_l).mean()) < 1e-3, name  # the split is exact
    assert length_part > 0 and token_part > 0, (name, length_part, token_part)
    d_w, d_l = changes[name]
    assert (d_w[0] == 0).all() and (d_l[0] == 0).all()  # every curve starts at 0: changes since the start
    assert len(frame) == d_w.shape[1] == len(pair_sets[name])  # the per-pair view has a row per pair
print("CLAIMS OK")
""",
    # lesson 8: the default run has a clear hump; the frontier ends at sqrt(-log ref(y*)); the beta
    # claim by loss (IPO and SLiC: the smallest beta travels further than the largest at every N;
    # DPO: not at every N); the loss keeps falling after the win rate peaked.
    "08_overoptimization_lab": """
import math
s = run.summary
assert DEFAULT[0] == "dpo" and s["win_drop"] >= 0.2 and s["peak_win_step"] < len(run.curve) - 1, s
assert s["win_drop"] == max(runs[k].summary["win_drop"] for k in runs if k[0] == "dpo")
assert abs(front["sqrt_kl"].max() - math.sqrt(-math.log(float(ref[gold.argmax()])))) < 1e-9
assert further["ipo"] == further["slic"] == len(NS) and further["dpo"] < len(NS), further
peak = s["peak_win_step"]
assert run.curve["loss"].iloc[-1] < run.curve["loss"].iloc[peak], (peak, run.curve["loss"].iloc[[peak, -1]])
print("CLAIMS OK")
""",
    # lesson 9: the symptom shows (a deep dip on the default run); "in most runs that dip the mass
    # goes to OOD trajectories that share the chosen answer's first two tokens"; section 3 opens on
    # a pair that displaces.
    "09_chosen_logprobs_falling": """
assert dips[deepest] > 0.1, dips[deepest]
top = max(gainers, key=gainers.get)
assert top.startswith("OOD sharing 2") and gainers[top] > len(dipping) / 2, gainers
assert sum(gainers.values()) == len(dipping) > 0
change = pair_runs[displacing, displacing_beta][1] - pair_runs[displacing, displacing_beta][1][0]
assert change.min() < -0.05, change.min()
assert falls >= 1
print("CLAIMS OK")
""",
}
