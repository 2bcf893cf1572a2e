"""Library-level checks of training options and evaluation metrics (in process, tiny model)."""

import csv
import math

import numpy as np
import pytest
import torch

from treemdp.llm.evaluate import EvalConfig, evaluate_model, get_judge, gold_judge, r_squared
from treemdp.llm.synthetic import gold_score
from treemdp.llm.train import LLMConfig, train

from .conftest import DATA


def run(tmp_path, tiny, prefs_small, name, **kw):
    cfg = LLMConfig(phase="daa", model=str(tiny), data=str(prefs_small), out=str(tmp_path / name),
                      max_steps=2, batch_size=4, progress=False, threads=2, lr=3e-4, **kw)
    train(cfg)
    with open(tmp_path / name / "metrics.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_gradient_checkpointing_gives_the_same_numbers(tmp_path, tiny, prefs_small):
    plain = run(tmp_path, tiny, prefs_small, "plain")
    ckpt = run(tmp_path, tiny, prefs_small, "ckpt", gradient_checkpointing=True)
    assert plain == pytest.approx(ckpt, abs=1e-6)


def test_reference_cache_is_reused_and_keyed(tmp_path, tiny, prefs_small, capsys):
    run(tmp_path, tiny, prefs_small, "cache")
    assert "reference log-probs of 64 pairs computed" in capsys.readouterr().err
    run(tmp_path, tiny, prefs_small, "cache", resume=True)  # finished run: nothing to redo
    assert "already finished (2 steps)" in capsys.readouterr().err
    (tmp_path / "cache" / "final" / "trainer_state.pt").unlink()
    run(tmp_path, tiny, prefs_small, "cache", resume=True)  # no checkpoint: rerun, cache reused
    assert "computed" not in capsys.readouterr().err
    cache = torch.load(tmp_path / "cache" / "ref_logps.pt")
    assert cache["sums"].shape == (64, 2) and (cache["sums"] < 0).all()
    assert (cache["counts"] >= 1).all()


def test_policy_equal_to_reference_has_zero_kl(tiny, prefs_small):
    m = evaluate_model(str(tiny), EvalConfig(data=str(prefs_small), ref=str(tiny), beta=0.1,
                                             n_prompts=3, samples=3, max_new_tokens=10,
                                             device="cpu"))
    assert m["kl"] == 0 and m["kl_se"] == 0 and m["length_r2"] == 0
    assert m["reward_accuracy"] == 0  # every implicit reward is exactly 0: no strict win
    assert m["delta_logp_chosen"] == 0 and m["samples"] == 9
    assert 1 <= m["mean_length"] <= 10 and 0 <= m["win_rate"] <= 1


def test_r_squared_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 2 * x + rng.normal(size=50)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    expected = 1 - resid.var() / y.var()
    assert r_squared(x.tolist(), y.tolist()) == pytest.approx(expected, rel=1e-9)
    assert r_squared([1, 1, 1], [1, 2, 3]) == 0.0


def test_gold_judge_and_score():
    prompt = "SUBREDDIT: r/cats\nTITLE: my cat left and i am sad\nPOST: ...\nTL;DR:"
    assert gold_score(prompt, " my cat left and i am sad.") == 1.0
    assert gold_score(prompt, " my dog says it is fine.") < 0
    long = " my cat left and i am sad " + "so yeah " * 10
    assert gold_score(prompt, long) < 1.0
    assert gold_judge([prompt] * 3, [" cat left, sad", " dog", " cat left, sad"],
                      [" dog", " cat left, sad", " cat left, sad"]) == [1.0, 0.0, 0.5]


def test_shipped_pairs_follow_the_gold_score():
    import json
    rows = [json.loads(l) for l in (DATA / "tldr_prefs.jsonl").read_text().splitlines()]
    assert all(gold_score(r["prompt"], r["chosen"]) >= gold_score(r["prompt"], r["rejected"])
               for r in rows)


def test_reward_model_and_custom_judges(tiny, tmp_path):
    from transformers import AutoConfig, GPTNeoXForSequenceClassification
    config = AutoConfig.from_pretrained(tiny)
    config.num_labels = 1
    torch.manual_seed(0)
    GPTNeoXForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "rm" / f).write_bytes((tiny / f).read_bytes())
    judge = get_judge(f"rm:{tmp_path / 'rm'}")
    verdicts = judge(["p: ", "p: "], [" a b c", " same"], [" x y", " same"])
    assert verdicts[1] == 0.5 and verdicts[0] in (0.0, 1.0)
    assert get_judge("treemdp.llm.evaluate:gold_judge") is gold_judge
    assert get_judge("none") is None


@pytest.mark.parametrize("args, spec, first_loss", [
    (["--loss", "cdpo", "--epsilon", "0.2"], "cdpo(epsilon=0.2)", math.log(2)),
    # TRL's ipo normalises by the completion lengths (chosen_lengths / rejected_lengths): at h = 0
    # its loss is (1 / (2 beta))^2 = 25 for beta 0.1
    (["--loss", "trl(loss_type=ipo)"], "trl(loss_type=ipo)", 25.0),
    (["--loss", "treemdp.losses:exponential_g"], "treemdp.losses:exponential_g", 1.0),
])
def test_any_objective_through_the_cli(tiny, prefs_small, tmp_path, args, spec, first_loss):
    """`llm daa --loss` takes any objective of treemdp.losses, its parameters as flags; the
    canonical spec lands in config.json and metrics.csv; policy == reference at step 1."""
    import json

    from treemdp.cli import main
    out = tmp_path / "run"
    assert main(["llm", "daa", "--model", str(tiny), "--data", str(prefs_small), "--out", str(out),
                 "--no-progress", "--batch-size", "4", "--max-steps", "1", *args]) == 0
    assert json.loads((out / "config.json").read_text())["loss"] == spec
    with open(out / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["objective"] == spec and float(row["loss"]) == pytest.approx(first_loss, rel=1e-5)


def test_objective_flag_no_objective_has(capsys, tiny, prefs_small, tmp_path):
    from treemdp.cli import main
    code = main(["llm", "daa", "--model", str(tiny), "--data", str(prefs_small), "--out",
                 str(tmp_path / "o"), "--loss", "dpo", "--epsilon", "0.2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unrecognized argument --epsilon")
    assert not (tmp_path / "o").exists()
