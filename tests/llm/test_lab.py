"""The LLM over-optimization lab: the tree language's exact enumeration, the estimators and their
standard errors, a small study end to end (sampled vs exact within 3 SE at every checkpoint),
resume, report, best-of-n, the proxy reward model, judges and golds validated, bad input."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from treemdp.cli import main
from treemdp.errors import UserError

from .test_cli_errors import assert_user_error, run


# ----- the tree language ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def language():
    from treemdp.llm.language import TreeLanguage
    return TreeLanguage("4x4")


@pytest.fixture(scope="module")
def tree_model(language, tmp_path_factory):
    from treemdp.llm.models import load_model, load_tokenizer
    path = language.build_model(tmp_path_factory.mktemp("tree") / "m", hidden_size=32, num_layers=1, seed=3)
    return load_model(str(path)).eval(), load_tokenizer(str(path))


def test_answers_are_every_sampler_outcome(language):
    # k actions + EOS for k = 0..4, and 5 actions cut without EOS: 1 + 4 + 16 + 64 + 256 + 1024
    assert language.n_answers == sum(4 ** k for k in range(5)) + 4 ** 5 == 1365
    assert len(language.index) == language.n_answers  # all distinct
    paths = language.mdp.trajectories()
    assert language.answers[37] == [a + 1 for a in paths[37].tolist()] + [0]  # trajectory order first
    assert language.answer_of_text(language.text(paths[200].tolist())) == 200
    assert language.answer_of_text("a1 a1") == language.index[(2, 2, 0)]
    assert language.answer_of_text("a0 a1 a2 a3 a0") == language.index[(1, 2, 3, 4, 1)]
    with pytest.raises(UserError, match="not written"):
        language.answer_of_text("a9")


def test_tokenizer_round_trip(language, tree_model):
    _, tok = tree_model
    assert tok(" a3 a0 a2")["input_ids"] == [4, 1, 3]
    assert tok.decode([2, 1, 0], skip_special_tokens=True).split() == ["a1", "a0"]
    assert tok.eos_token_id == tok.pad_token_id == tok.bos_token_id == 0


def test_enumeration_is_a_distribution_and_matches_the_trainers_log_probs(language, tree_model):
    from treemdp.llm.data import Example
    from treemdp.llm.logprobs import log_prob_table
    model, _ = tree_model
    logp = language.log_probs(model)
    assert logp.shape == (1365,)
    assert abs(float(logp.logsumexp(0))) < 1e-9  # every outcome of the sampler, once
    pick = [0, 5, 255, 256, 300, 1364]  # tree answers, a short one, a cut one
    examples = [Example([0], [language.answers[i]], index=k) for k, i in enumerate(pick)]
    sums, _ = log_prob_table(model, examples, 0, "cpu", 8, pairs=False)
    torch.testing.assert_close(sums[:, 0].double(), logp[pick], atol=1e-4, rtol=0)


def test_sampler_frequencies_match_the_enumeration(language, tree_model):
    from treemdp.llm.evaluate import sample
    model, _ = tree_model
    logp = language.log_probs(model)
    answers = sample(model, [[0]] * 4000, max_new_tokens=5, eos_id=0, pad_id=0, device="cpu", batch_size=4000,
                     generator=torch.Generator().manual_seed(0))
    # the malformed share (answers not in the tree) by sampling vs exactly
    p_bad = float(logp[language.n_tree:].exp().sum())
    seen = np.mean([language.answer_of(a) >= language.n_tree for a in answers])
    assert abs(seen - p_bad) < 3 * math.sqrt(p_bad * (1 - p_bad) / 4000) + 1e-9


# ----- estimators ------------------------------------------------------------------------------------------
def test_win_rate_closed_forms():
    from treemdp.llm.lab.measure import win_rate
    w, _ = win_rate([1.0, 2.0], [0.0, 2.0])  # phi = [[1, 0], [1, 1/2]] -> 5/8... per sample means 1/2, 3/4
    assert w == pytest.approx(0.625)
    pool = np.random.default_rng(0).normal(size=50).round(1)  # with ties
    assert win_rate(pool, pool)[0] == 0.5  # a pool against itself: exactly 1/2
    # prompts compared only within themselves
    w, _ = win_rate([5.0, 0.0], [0.0, 5.0], groups=[0, 1], groups_ref=[0, 1])
    assert w == 0.5  # 5 > 0 in prompt 0 (1), 0 < 5 in prompt 1 (0)


def test_win_rate_se_is_delong():
    from treemdp.llm.lab.measure import win_matrix, win_rate
    rng = np.random.default_rng(1)
    r, r_ref = rng.normal(0.3, 1, 40), rng.normal(0, 1, 30)
    phi = win_matrix(r, r_ref)
    s, t = phi.mean(1), phi.mean(0)
    w, se = win_rate(r, r_ref)
    assert w == pytest.approx(phi.mean())
    assert se == pytest.approx(math.sqrt(s.var(ddof=1) / 40 + t.var(ddof=1) / 30))


def test_bon_weights_equal_brute_force():
    from treemdp.llm.lab.report import bon_weights
    k, n = 7, 3
    counts = np.zeros(k)
    for subset in itertools.combinations(range(k), n):
        counts[max(subset)] += 1  # ranks ascending: the best is the largest index
    np.testing.assert_allclose(bon_weights(k, n), counts / counts.sum())
    assert bon_weights(5, 1) == pytest.approx(np.full(5, 0.2))


# ----- a small study end to end ----------------------------------------------------------------------------
SMALL = dict(language="tree", gold="additive", hidden=32, layers=1, demos=256, pairs=(128,), heldout=32,
             epochs=3.0, lr=2e-3, checkpoint_every=0.5, samples=1024, bon=(1, 2, 4), rm_epochs=1.0,
             losses=("dpo",), betas=(0.1,), seeds=(0,))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from treemdp.llm.lab.study import StudyConfig, run_study
    out = tmp_path_factory.mktemp("study") / "s"
    results = run_study(StudyConfig(**SMALL), out)
    return out, results


def test_study_layout_and_checkpoints(study):
    out, results = study
    assert list(results["step"]) == [0, 2, 4, 6, 8, 10, 12]  # every half epoch of 4 steps, then final
    assert list(results["checkpoint"])[-1] == "final"
    run = out / "runs" / "loss=dpo,beta=0.1,seed=0,pairs=128"
    assert json.loads((run / "config.json").read_text())["pairs"] == 128
    assert (run / "train" / "final" / "config.json").is_file()
    assert not list((run / "train").glob("checkpoint-*"))  # pruned after evaluation
    pairs = [json.loads(line) for line in (out / "shared" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 128 and all(p["chosen"] != p["rejected"] for p in pairs)


def test_step0_is_the_reference(study):
    _, results = study
    first = results.iloc[0]
    assert first["kl"] == 0 and first["exact_kl"] == pytest.approx(0, abs=1e-12)
    assert first["win_rate"] == 0.5 and first["exact_win_rate"] == pytest.approx(0.5)
    assert first["sqrt_kl"] == 0 and first["gold_gain"] == 0


def test_sampled_within_three_standard_errors_of_exact(study):
    _, results = study
    later = results[results["step"] > 0]
    assert later["exact_kl"].max() > 0.05  # the policy moved
    for sampled, exact, se in (("kl", "exact_kl", "kl_se"), ("gold", "exact_gold", "gold_se"),
                               ("win_rate", "exact_win_rate", "win_rate_se")):
        gap = (later[sampled] - later[exact]).abs()
        assert (gap <= 3 * later[se]).all(), later[[sampled, exact, se]]


def test_rerun_resumes_without_training(study):
    from treemdp.llm.lab.study import StudyConfig, run_study
    out, results = study
    stamp = (out / "runs" / "loss=dpo,beta=0.1,seed=0,pairs=128" / "summary.json").stat().st_mtime_ns
    again = run_study(StudyConfig(**SMALL), out)
    pd.testing.assert_frame_equal(again, results)
    assert (out / "runs" / "loss=dpo,beta=0.1,seed=0,pairs=128" / "summary.json").stat().st_mtime_ns == stamp


def test_other_shared_settings_refused(study):
    from treemdp.llm.lab.study import StudyConfig, run_study
    out, _ = study
    with pytest.raises(UserError, match="other shared settings"):
        run_study(StudyConfig(**{**SMALL, "demos": 100}), out)


def test_report_tables_and_best_of_n(study, tmp_path):
    from treemdp.lab.bestofn import kl_bound
    from treemdp.llm.lab.report import report
    out, _ = study
    paths = report(out, tmp_path, bootstrap=20)
    assert {p.name for p in paths} == {"results.csv", "summary.csv", "fits.csv", "bon.csv", "humps.png"}
    bon = pd.read_csv(tmp_path / "bon.csv")
    assert set(bon["proxy"]) == {"gold", "rm"}
    gold_bon = bon[bon["proxy"] == "gold"].set_index("n")
    np.testing.assert_allclose(gold_bon["kl_bound"], kl_bound([1, 2, 4]))
    assert gold_bon.loc[1, "win_rate"] == pytest.approx(0.5) and gold_bon.loc[1, "gold_gain"] == pytest.approx(0)
    assert (np.diff(gold_bon["gold"]) > 0).all()  # best of n by the gold itself only improves
    # exact best-of-n by the gold against its pooled estimate
    assert (gold_bon["exact_gold"] - gold_bon["gold"]).abs().max() < 0.15
    fits = pd.read_csv(tmp_path / "fits.csv")
    assert set(fits["form"]) == {"rl", "bon", "quad_kl"} and set(fits["metric"]) == {"win_rate", "gold"}


def test_proxy_reward_model_loads_as_rm_gold(study):
    from treemdp.llm.lab.gold import text_gold
    out, _ = study
    gold = text_gold(f"rm:{out / 'shared' / 'rm'}")  # has its trained head
    scores = gold(["", ""], [" a0 a0 a0 a0", " a1 a2 a3 a0"])
    assert scores.shape == (2,) and np.isfinite(scores).all()


# ----- golds and judges validated ----------------------------------------------------------------------------
def test_gold_validation():
    from treemdp.llm.lab.gold import Gold, text_gold
    with pytest.raises(UserError, match="returned 1 values for 2"):
        Gold("short", lambda p, c: [0.0])(["", ""], ["a", "b"])
    with pytest.raises(UserError, match="non-finite"):
        Gold("nan", lambda p, c: [0.0, math.nan])(["", ""], ["a", "b"])
    with pytest.raises(UserError, match="gold boom failed: ZeroDivisionError"):
        Gold("boom", lambda p, c: 1 / 0)([""], ["a"])
    with pytest.raises(UserError, match="not a function"):
        text_gold("math:pi")
    with pytest.raises(UserError, match="unknown gold"):
        text_gold("nonsense")
    assert text_gold("tldr")(["TITLE: my car broke and i am sad"], [" my car broke, i am sad"])[0] == 1.0


def test_scores_validation_per_kind():
    from treemdp.llm.evaluate import checked_scores
    assert checked_scores([1, 0.5], 2, "judge j", low=0.0, high=1.0) == [1.0, 0.5]
    with pytest.raises(UserError, match="judge j returned 3 values for 2"):
        checked_scores([1, 0, 1], 2, "judge j", low=0.0, high=1.0)
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        checked_scores([1.0, 2.0], 2, "judge j", low=0.0, high=1.0)
    with pytest.raises(UserError, match="non-finite"):
        checked_scores([1.0, math.inf], 2, "gold g")
    with pytest.raises(UserError, match="not 2 numbers"):
        checked_scores(None, 2, "gold g")
    assert checked_scores([-7.5, 1e6], 2, "gold g") == [-7.5, 1e6]  # a gold: any finite real


def test_reward_model_without_head_refused(tree_model, tmp_path):
    from treemdp.llm.lab.gold import text_gold
    model, tok = tree_model
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(UserError, match="no trained reward head"):
        text_gold(f"rm:{tmp_path / 'lm'}")


@pytest.mark.parametrize("flags, fragment", [
    (["--checkpoint-every", "0"], "in (0, 1]"),
    (["--checkpoint-every", "1.5"], "in (0, 1]"),
    (["--seeds", "3-1"], "no runs"),
    (["--gold", "nonsense"], "unknown gold reward"),
    (["--language", "text", "--gold", "nonsense"], "unknown gold"),
    (["--loss", "nope"], "nope"),
    (["--beta", "-1"], "beta"),
])
def test_lab_bad_input(capsys, tmp_path, flags, fragment):
    code, err = run(capsys, "llm", "lab", "run", "--out", tmp_path / "s", *flags)
    assert_user_error(code, err, fragment)


def test_lab_report_of_empty_folder(capsys, tmp_path):
    code, err = run(capsys, "llm", "lab", "report", tmp_path)
    assert_user_error(code, err, "no finished lab runs")


def test_help_lists_lab_and_rm(capsys):
    with pytest.raises(SystemExit):
        main(["llm", "--help"])
    out = capsys.readouterr().out
    assert "lab" in out and "rm" in out


def test_cli_rm_and_fit(study, capsys, tmp_path):
    from treemdp.llm.evaluate import reward_model_scorer
    out, _ = study
    code = main(["llm", "rm", "--model", str(out / "shared" / "sft" / "final"), "--data",
                 str(out / "shared" / "pairs.jsonl"), "--out", str(tmp_path / "rm"), "--epochs", "0.25"])
    assert code == 0
    assert len(reward_model_scorer(str(tmp_path / "rm"))([" a0 a1 a2 a3", " a3 a3 a3 a3"])) == 2
    capsys.readouterr()
    assert main(["llm", "lab", "fit", str(out), "--bootstrap", "10"]) == 0
    printed = capsys.readouterr().out
    assert "quad_kl" in printed and "win_rate" in printed
    assert len(pd.read_csv(out / "fits.csv")) == 2 * 3  # (win rate, gold) x 3 forms for the one group


@pytest.mark.slow
def test_cli_adds_runs_on_two_workers_sharing_the_reference(study, capsys):
    """More betas on the same study folder from the CLI, two worker processes: the shared SFT,
    pairs and reference are reused (not recomputed), the new runs appear beside the old one."""
    out, _ = study
    sft_stamp = (out / "shared" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns
    flags = ["--language", "tree", "--gold", "additive", "--hidden", "32", "--layers", "1", "--demos", "256",
             "--pairs", "128", "--heldout", "32", "--samples", "1024", "--bon", "1", "2", "4", "--rm-epochs", "1",
             "--loss", "dpo", "--beta", "0.05", "0.5", "--epochs", "0.5", "--checkpoint-every", "1",
             "--workers", "2", "--no-report"]
    code = main(["llm", "lab", "run", "--out", str(out), *flags])
    assert code == 0, capsys.readouterr().err
    assert (out / "shared" / "sft" / "final" / "model.safetensors").stat().st_mtime_ns == sft_stamp
    for beta in ("0.05", "0.5"):
        table = pd.read_csv(out / "runs" / f"loss=dpo,beta={beta},seed=0,pairs=128" / "eval.csv")
        assert list(table["step"]) == [0, 2] and table["exact_kl"].iloc[1] > 0
    assert (out / "shared" / "ref_logps-128.pt").is_file()


def test_text_study_with_the_rule_based_gold(tmp_path):
    """The text path end to end on a slice of the synthetic TL;DR: pairs sampled from the SFT model
    and labelled by the tldr gold, per-prompt win rates, the data's chosen answers as a second
    opponent (no exact columns: text answers are not enumerable)."""
    from treemdp.llm.lab.study import StudyConfig, run_study
    from treemdp.llm.synthetic import gold_score
    from .conftest import DATA, head
    sft, prefs = head(DATA / "tldr_sft.jsonl", tmp_path / "sft.jsonl", 32), head(DATA / "tldr_prefs.jsonl", tmp_path / "p.jsonl", 32)
    cfg = StudyConfig(language="text", sft_data=str(sft), prompt_data=str(prefs), hidden=32, layers=1,
                      sft_epochs=1.0, rm_epochs=0.5, pairs=(16,), heldout=8, prompts=8, samples=2,
                      max_new_tokens=8, epochs=1.0, checkpoint_every=1.0, bon=(1, 2), label_temperature=0.0)
    results = run_study(cfg, tmp_path / "s")
    assert list(results["step"]) == [0, 1] and "exact_kl" not in results
    assert results["win_rate"].iloc[0] == 0.5 and 0 <= results["win_rate_chosen"].iloc[1] <= 1
    pairs = [json.loads(line) for line in (tmp_path / "s" / "shared" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 16
    # temperature 0: the higher gold always wins (ties a coin), so the data are the gold's
    assert all(gold_score(p["prompt"], p["chosen"]) >= gold_score(p["prompt"], p["rejected"]) for p in pairs)
    assert json.loads((tmp_path / "s" / "study.json").read_text())["shared"]["gold"] == "tldr"
