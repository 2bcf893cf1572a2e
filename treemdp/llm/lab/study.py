"""The LLM over-optimization lab: one study = shared parts computed once + a grid of DAA runs.

A study folder ``OUT`` holds (everything resumable: a finished part is never redone)::

    study.json             every setting (:class:`StudyConfig`); a rerun with other settings is refused
    shared/base/           the starting model (built from a config unless --model is given)
    shared/sft/            SFT on the demonstrations (tree) or the SFT rows (text): the reference
    shared/pairs.jsonl     pairs of answers sampled from the reference (or a dataset's pairs),
                           labelled by Bradley-Terry on the gold at --label-temperature; runs with
                           N pairs train on the first N (nested datasets)
    shared/heldout.jsonl   held-out pairs drawn the same way (implicit-reward accuracy)
    shared/reference.pt    the reference's own samples and their gold (the win rate's opponent;
                           step 0 of every run), its exact answer log-probs (tree language)
    shared/ref_logps-N.pt  the reference log-probs of the N-pair data, computed by the first run
                           of that N and copied into every other run's folder (the trainer's cache)
    runs/loss=…,beta=…,seed=…,pairs=…/   one DAA run (the trainer's folder: checkpoints, final/)
                           with eval.csv (step 0 and every checkpoint) and summary.json when done
    results.csv            one row per (run, checkpoint): the tidy table the report reads

The reference and its data are computed once per (model, data) and shared by every run of the
grid. Checkpoints are saved every ``--checkpoint-every`` of an epoch (0.25: four per epoch, the
paper's) and evaluated with :mod:`treemdp.llm.lab.measure` (sampled, with standard errors) and,
on the tree language, exactly by enumeration (``exact_*`` columns).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import UserError
from ...grid import Study, json_text, run_grid
from ...runs import atomic_file

LANGUAGES = ("tree", "text")
PAIR_SOURCES = ("reference", "data")


@dataclass
class StudyConfig:
    """Every setting of one LLM lab study (``treemdp llm lab run`` has one flag per field)."""

    language: str = "tree"
    """tree (the toy lab's tree written as tokens: every answer enumerable, exact values beside the sampled ones) or text (prompts and answers in words, e.g. the synthetic TL;DR)."""
    tree: str = "4x4"
    """Tree shape BRANCHINGxDEPTH of the tree language (4x4: 256 answers)."""
    gold: str = ""
    """Gold reward (empty: random on the tree, tldr on text): tree: random, additive, spurious(...), a file or module:function on the trajectories; text: tldr, rm:PATH or module:function(prompts, completions)."""
    gold_seed: int = 0
    """Seeds a random gold reward (tree)."""
    model: str = ""
    """Starting model folder; empty: a random-init tiny GPT-NeoX built here (tree: its own 5-token tokenizer; text: treemdp llm tiny-model's)."""
    hidden: int = 64
    """Hidden size of the model built here."""
    layers: int = 2
    """Layers of the model built here."""
    sft_data: str = ""
    """text: prompt/completion rows for SFT (default: the shipped synthetic TL;DR tldr_sft.jsonl)."""
    prompt_data: str = ""
    """text: prompt/chosen/rejected rows: their prompts are sampled for pairs and evaluation; with --pair-source data their pairs are relabelled (default: the shipped tldr_prefs.jsonl)."""
    demos: int = 512
    """tree: SFT demonstrations drawn from softmax(r*/demo_temperature) (the toy lab's data distribution)."""
    demo_temperature: float = 1.0
    """tree: temperature of the demonstrations' distribution; > 0."""
    sft_epochs: float = 4.0
    """SFT epochs."""
    sft_lr: float = 3e-3
    """SFT learning rate (AdamW)."""
    pair_source: str = "reference"
    """reference (two answers sampled from the SFT model per prompt) or data (--prompt-data's own pairs), labelled by the gold either way."""
    label_temperature: float = 1.0
    """Bradley-Terry label noise: P(y1 preferred) = sigmoid((r*(y1) - r*(y2)) / T); 0: the higher gold wins."""
    heldout: int = 128
    """Held-out pairs for the implicit-reward accuracy."""
    data_seed: int = 0
    """Seeds the demonstrations, pairs and labels (shared by every run)."""
    losses: tuple = ("dpo",)
    """DAA objectives (any of 'treemdp losses')."""
    betas: tuple = (0.1,)
    """DAA betas."""
    seeds: tuple = (0,)
    """Run seeds (data order and the evaluation's sampling)."""
    pairs: tuple = (512,)
    """Numbers of preference pairs N."""
    epochs: float = 6.0
    """DAA epochs over the N pairs."""
    lr: float = 5e-4
    """DAA learning rate (AdamW, 2 warm-up steps)."""
    batch_size: int = 32
    """Pairs per DAA step."""
    checkpoint_every: float = 0.25
    """Save and evaluate a checkpoint every this fraction of an epoch, in (0, 1] (0.25: the paper's four per epoch)."""
    prompts: int = 256
    """text: distinct prompts sampled at evaluation (tree: one prompt)."""
    samples: int = 0
    """Answers sampled per prompt and checkpoint, temperature 1 (0: 1024 for the tree language, 4 for text)."""
    max_new_tokens: int = 48
    """text: longest sampled answer (tree: depth + 1)."""
    bon: tuple = (1, 2, 4, 8, 16, 32, 64)
    """n of the best-of-n baseline (by the gold and by a proxy reward model trained on the pairs)."""
    rm_epochs: float = 4.0
    """Epochs of the proxy reward model (Bradley-Terry on all the pairs, learning rate --sft-lr) that best-of-n ranks by."""
    keep_checkpoints: bool = False
    """Keep every checkpoint's weights after evaluation (default: only final/ stays)."""
    device: str = "cpu"
    """cpu, cuda or auto."""
    threads: int = 1
    """torch CPU threads per run."""

    def checked(self) -> "StudyConfig":
        """Validated copy (UserError naming the first bad setting)."""
        from ...losses import check_beta, get_objective
        if self.language not in LANGUAGES:
            raise UserError(f"unknown language {self.language!r}; choose one of: {', '.join(LANGUAGES)}")
        if self.pair_source not in PAIR_SOURCES:
            raise UserError(f"unknown pair source {self.pair_source!r}; choose one of: {', '.join(PAIR_SOURCES)}")
        if self.language == "tree" and self.pair_source == "data":
            raise UserError("--pair-source data needs --language text (the tree language has no dataset)")
        if not (0 < self.checkpoint_every <= 1) or not math.isfinite(self.checkpoint_every):
            raise UserError(f"--checkpoint-every must be a fraction of an epoch in (0, 1], got {self.checkpoint_every}")
        if not (self.losses and self.betas and self.seeds and self.pairs):
            raise UserError("the grid has no runs: give at least one --loss, --beta, --seed and --pairs")
        try:
            losses = tuple(get_objective(loss).spec for loss in self.losses)
            betas = tuple(float(check_beta(b)) for b in self.betas)
        except ValueError as e:
            raise UserError(str(e)) from None
        for name in ("demos", "heldout", "batch_size", "prompts", "max_new_tokens", "hidden", "layers", "threads"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if any(int(n) < 2 for n in self.pairs) or any(int(n) < 1 for n in self.bon):
            raise UserError("--pairs must be >= 2 and --bon >= 1")
        for name in ("epochs", "sft_epochs", "rm_epochs", "lr", "sft_lr", "demo_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
        if not (math.isfinite(self.label_temperature) and self.label_temperature >= 0):
            raise UserError(f"--label-temperature must be a finite number >= 0, got {self.label_temperature}")
        samples = self.samples or (1024 if self.language == "tree" else 4)
        gold = self.gold or ("random" if self.language == "tree" else "tldr")
        return StudyConfig(**{**asdict(self), "gold": gold, "losses": losses, "betas": betas,
                              "seeds": tuple(int(s) for s in self.seeds),
                              "pairs": tuple(sorted({int(n) for n in self.pairs})),
                              "bon": tuple(sorted({int(n) for n in self.bon})), "samples": samples})

    def shared_dict(self) -> dict:
        """The settings the shared parts depend on (a change there invalidates them)."""
        grid = {"losses", "betas", "seeds", "pairs", "epochs", "lr", "batch_size", "checkpoint_every",
                "bon", "device", "threads", "keep_checkpoints"}
        d = {k: v for k, v in asdict(self).items() if k not in grid}
        d["max_pairs"] = max(self.pairs)
        return d


@dataclass(frozen=True)
class Run:
    """One DAA run of the grid."""

    loss: str
    beta: float
    seed: int
    pairs: int
    epochs: float = 6.0
    lr: float = 5e-4
    batch_size: int = 32
    checkpoint_every: float = 0.25

    @property
    def name(self) -> str:
        return f"loss={self.loss},beta={self.beta:g},seed={self.seed},pairs={self.pairs}"

    def to_dict(self) -> dict:
        return asdict(self)


def grid_runs(cfg: StudyConfig) -> list[Run]:
    """Every run of the grid, loss-major (the order results.csv lists them)."""
    return [Run(loss, beta, seed, n, cfg.epochs, cfg.lr, cfg.batch_size, cfg.checkpoint_every)
            for loss in cfg.losses for beta in cfg.betas for n in cfg.pairs for seed in cfg.seeds]


# ----- small helpers --------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _write_json(obj, path: Path) -> None:
    from ..train import json_ready
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n")


def _write_jsonl(rows: list[dict], path: Path) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_config(**values):
    """The trainer's :class:`~treemdp.llm.train.LLMConfig` from the study's values."""
    from ..train import LLMConfig
    names = {f.name for f in fields(LLMConfig)}
    return LLMConfig(**{k: v for k, v in values.items() if k in names})


def _train(**values):
    from ..train import train
    out = Path(values["out"])
    values["resume"] = (out / "config.json").is_file()
    return train(_train_config(**values))


# ----- the shared parts ---------------------------------------------------------------------------------
class Shared:
    """The parts of a study every run uses, built (or read back) by :func:`prepare`."""

    def __init__(self, cfg: StudyConfig, out: Path):
        from ..models import resolve_device
        self.cfg, self.out, self.dir = cfg, out, out / "shared"
        self.device = resolve_device(cfg.device)
        self.language = None
        if cfg.language == "tree":
            from ..language import TreeLanguage
            self.language = TreeLanguage(cfg.tree)
        self.gold = self._gold()

    def _gold(self):
        from .gold import text_gold, tree_gold
        if self.language is not None:
            return tree_gold(self.language, self.cfg.gold, self.cfg.gold_seed)
        return text_gold(self.cfg.gold, self.device)

    @property
    def sft_model(self) -> Path:
        return self.dir / "sft" / "final"

    @property
    def max_new_tokens(self) -> int:
        return self.language.max_new_tokens if self.language else self.cfg.max_new_tokens

    def score(self, prompts: list[str], answers: list[list[int]], texts: list[str]) -> np.ndarray:
        """r* of sampled answers (tree: looked up by token ids; text: the gold on the decoded text)."""
        if self.language is not None:
            return self.gold.values[[self.language.answer_of(a) for a in answers]].numpy()
        return self.gold(prompts, texts)


def _sample(model, tokenizer, prompt_ids: list[list[int]], shared: Shared, generator) -> tuple[list, list]:
    from ..evaluate import sample
    answers = sample(model, prompt_ids, max_new_tokens=shared.max_new_tokens, eos_id=tokenizer.eos_token_id,
                     pad_id=tokenizer.pad_token_id, device=shared.device, batch_size=256, generator=generator)
    return answers, tokenizer.batch_decode(answers, skip_special_tokens=True)


def _base_model(shared: Shared) -> Path:
    cfg, base = shared.cfg, shared.dir / "base"
    if cfg.model:
        from ..models import check_causal
        check_causal(cfg.model)
        return Path(cfg.model).expanduser().absolute() if Path(cfg.model).expanduser().exists() else cfg.model
    if not (base / "config.json").is_file():
        if shared.language is not None:
            shared.language.build_model(base, hidden_size=cfg.hidden, num_layers=cfg.layers, seed=cfg.data_seed)
        else:
            from ..models import build_tiny_model
            build_tiny_model(base, hidden_size=cfg.hidden, num_layers=cfg.layers, seed=cfg.data_seed)
    return base


def _sft_rows(shared: Shared) -> str:
    cfg = shared.cfg
    if shared.language is None:
        from ..synthetic import shipped_data_dir
        return cfg.sft_data or str(shipped_data_dir() / "tldr_sft.jsonl")
    from ...lab.data import sample_demonstrations
    from ...lab.gold import make_gold
    path = shared.dir / "demos.jsonl"
    if not path.is_file():
        gold_tree = make_gold(shared.language.mdp, cfg.gold, seed=cfg.gold_seed)
        rows = sample_demonstrations(shared.language.mdp, gold_tree, cfg.demos, temperature=cfg.demo_temperature,
                                     seed=cfg.data_seed)
        paths = shared.language.mdp.trajectories()
        _write_jsonl([{"prompt": "", "completion": shared.language.text(paths[i].tolist())} for i in rows.tolist()],
                     path)
    return str(path)


def _prompt_rows(shared: Shared) -> list[dict]:
    """The prompt/chosen/rejected rows whose prompts the study uses (text only)."""
    from ..data import PAIR_FIELDS, load_rows
    from ..synthetic import shipped_data_dir
    rows, _ = load_rows(shared.cfg.prompt_data or str(shipped_data_dir() / "tldr_prefs.jsonl"), PAIR_FIELDS)
    return rows


def _prompts(shared: Shared, count: int) -> list[str]:
    if shared.language is not None:
        return [""]
    from ..evaluate import row_text
    seen = list(dict.fromkeys(row_text(r["prompt"]) for r in _prompt_rows(shared)))
    return seen[:count]


def _label_pairs(shared: Shared, prompts, first, second, rng) -> list[dict]:
    """Rows labelled by Bradley-Terry on the gold (drops pairs of equal or empty answers)."""
    from .gold import bradley_terry_labels
    keep = [i for i, (a, b) in enumerate(zip(first, second)) if a.strip() and b.strip() and a != b]
    if shared.language is not None:  # malformed answers would not round-trip through the tokenizer
        ok = lambda t: len(t.split()) == shared.language.depth  # noqa: E731
        keep = [i for i in keep if ok(first[i]) and ok(second[i])]
    p = [prompts[i] for i in keep]
    a, b = [first[i] for i in keep], [second[i] for i in keep]
    r1, r2 = shared.gold(p, a), shared.gold(p, b)
    first_wins = bradley_terry_labels(r1, r2, shared.cfg.label_temperature, rng)
    return [{"prompt": x, "chosen": y1 if w else y2, "rejected": y2 if w else y1}
            for x, y1, y2, w in zip(p, a, b, first_wins)]


def _pairs(shared: Shared) -> None:
    """shared/pairs.jsonl (at least max N rows) and shared/heldout.jsonl."""
    cfg = shared.cfg
    need = max(cfg.pairs) + cfg.heldout
    rng = np.random.default_rng([cfg.data_seed, 2])
    if cfg.pair_source == "data":
        from ..evaluate import row_text
        source = _prompt_rows(shared)
        rows = _label_pairs(shared, [row_text(r["prompt"]) for r in source], [row_text(r["chosen"]) for r in source],
                            [row_text(r["rejected"]) for r in source], rng)
    else:
        from ..models import load_model, load_tokenizer
        model = load_model(str(shared.sft_model)).to(shared.device)
        tok = load_tokenizer(str(shared.sft_model), quiet=True)
        generator = torch.Generator(device=shared.device).manual_seed(cfg.data_seed)
        prompts = _prompts(shared, 10 ** 9)
        prompt_ids = [_prompt_ids(tok, p) for p in prompts]
        rows = []
        for _ in range(50):  # draw rounds until there are enough usable pairs
            per = max(1, math.ceil(1.2 * (need - len(rows)) / len(prompts)))
            order = [i for i in range(len(prompts)) for _ in range(per)]
            a, ta = _sample(model, tok, [prompt_ids[i] for i in order], shared, generator)
            b, tb = _sample(model, tok, [prompt_ids[i] for i in order], shared, generator)
            rows += _label_pairs(shared, [prompts[i] for i in order], ta, tb, rng)
            if len(rows) >= need:
                break
        rng.shuffle(rows)
    if len(rows) < need:
        raise UserError(f"only {len(rows)} usable pairs for {max(cfg.pairs)} training + {cfg.heldout} held-out; "
                        "lower --pairs or --heldout")
    _write_jsonl(rows[cfg.heldout: need], shared.dir / "pairs.jsonl")
    _write_jsonl(rows[: cfg.heldout], shared.dir / "heldout.jsonl")


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    from ..data import tokenize_row
    ids, _ = tokenize_row({"prompt": prompt, "completion": "x"}, ("completion",), tokenizer)
    return ids


def _reference(shared: Shared) -> None:
    """shared/reference.pt: the reference's samples (answers, gold, prompt ids) and exact log-probs."""
    from ..models import load_model, load_tokenizer
    cfg = shared.cfg
    model = load_model(str(shared.sft_model)).to(shared.device)
    tok = load_tokenizer(str(shared.sft_model), quiet=True)
    prompts = _prompts(shared, cfg.prompts)
    order = [i for i in range(len(prompts)) for _ in range(cfg.samples)]
    generator = torch.Generator(device=shared.device).manual_seed(10_000 + cfg.data_seed)
    answers, texts = _sample(model, tok, [_prompt_ids(tok, prompts[i]) for i in order], shared, generator)
    gold = shared.score([prompts[i] for i in order], answers, texts)
    ref = {"prompts": prompts, "group": order, "answers": answers, "texts": texts, "gold": gold.tolist()}
    if shared.language is not None:
        ref["exact_logp"] = shared.language.log_probs(model, shared.device)
    heldout = _read_jsonl(shared.dir / "heldout.jsonl")
    ref["heldout_logps"] = _pair_logps(model, tok, heldout, shared.device)
    with atomic_file(shared.dir / "reference.pt") as tmp:
        torch.save(ref, tmp)


def _pair_logps(model, tokenizer, rows: list[dict], device) -> torch.Tensor:
    """Summed log-probs of chosen and rejected of every row, [n, 2]."""
    from ..data import tokenize_rows
    from ..logprobs import log_prob_table
    examples, _ = tokenize_rows(rows, tokenizer, kind="pairs", max_length=512, max_prompt_length=384)
    sums, _ = log_prob_table(model, examples, tokenizer.pad_token_id, device, 64, pairs=True, shared=False)
    return sums


def prepare(cfg: StudyConfig, out: Path) -> Shared:
    """Build (or read back) the shared parts; refuse a study folder made with other shared settings."""
    out.mkdir(parents=True, exist_ok=True)
    saved_path = out / "study.json"
    mine = cfg.shared_dict()
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text()).get("shared", {})
        changed = [k for k in mine if json.loads(json.dumps(mine[k])) != saved.get(k)]
        if changed:
            raise UserError(f"{out} holds a study with other shared settings ({changed[0]}: {saved.get(changed[0])!r}, "
                            f"here {mine[changed[0]]!r}); use another --out")
    _write_json({"shared": mine, "grid": asdict(cfg)}, saved_path)
    shared = Shared(cfg, out)
    shared.dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    base = _base_model(shared)
    if not (shared.sft_model / "config.json").is_file():
        _say("lab: SFT of the reference")
        _train(phase="sft", model=str(base), data=_sft_rows(shared), out=str(shared.dir / "sft"),
               lr=cfg.sft_lr, epochs=cfg.sft_epochs, batch_size=32, warmup_steps=2, checkpoints_per_epoch=1,
               save_every=10 ** 9, seed=cfg.data_seed, device=cfg.device, threads=cfg.threads, progress=False,
               max_length=512, max_prompt_length=384)
    if not (shared.dir / "heldout.jsonl").is_file():
        _say("lab: sampling and labelling the preference pairs")
        _pairs(shared)
    if not (shared.dir / "reference.pt").is_file():
        _say("lab: sampling the reference")
        _reference(shared)
    if not (shared.dir / "rm" / "config.json").is_file():
        _say("lab: the proxy reward model (Bradley-Terry on the pairs, for best-of-n)")
        from .rm import train_reward_model
        train_reward_model(str(shared.sft_model), str(shared.dir / "pairs.jsonl"), shared.dir / "rm",
                           epochs=cfg.rm_epochs, lr=cfg.sft_lr, seed=cfg.data_seed, device=cfg.device,
                           threads=cfg.threads)
    shared.seconds = time.perf_counter() - t0
    return shared


def load_reference(shared: Shared) -> dict:
    return torch.load(shared.dir / "reference.pt", weights_only=False)


# ----- one run ------------------------------------------------------------------------------------------
def _run_data(shared: Shared, run: Run) -> Path:
    path = shared.dir / f"pairs-{run.pairs}.jsonl"
    if not path.is_file():
        _write_jsonl(_read_jsonl(shared.dir / "pairs.jsonl")[: run.pairs], path)
    return path


def train_run(shared: Shared, run: Run) -> Path:
    """Train one DAA run, saving checkpoints every ``checkpoint_every`` of an epoch; reuses the
    reference log-probs of its N pairs if another run computed them."""
    cfg = shared.cfg
    folder = shared.out / "train" / run.name
    folder.mkdir(parents=True, exist_ok=True)
    cache = shared.dir / f"ref_logps-{run.pairs}.pt"
    if cache.is_file() and not (folder / "ref_logps.pt").is_file():
        shutil.copyfile(cache, folder / "ref_logps.pt")
    steps_per_epoch = max(1, run.pairs // run.batch_size)
    save_every = max(1, round(run.checkpoint_every * steps_per_epoch))
    _train(phase="daa", model=str(shared.sft_model), data=str(_run_data(shared, run)), out=str(folder),
           loss=run.loss, beta=run.beta, lr=run.lr, epochs=run.epochs, batch_size=min(run.batch_size, run.pairs),
           warmup_steps=2, save_every=save_every, seed=run.seed, device=cfg.device, threads=cfg.threads,
           progress=False, max_length=512, max_prompt_length=384, optimizer="adamw")
    if not cache.is_file() and (folder / "ref_logps.pt").is_file():
        shutil.copyfile(folder / "ref_logps.pt", cache)
    return folder


def evaluate_checkpoint(shared: Shared, ref: dict, model, tokenizer, *, beta: float, seed: int, step: int,
                        chosen: Optional[dict] = None) -> dict:
    """Every measurement of one model (the policy at one checkpoint) against the reference."""
    from ..data import Example
    from ..logprobs import log_prob_table
    from ..models import load_model
    from .measure import exact_measures, sampled_measures
    if model is None:  # step 0: the reference itself, its own samples
        n = len(ref["gold"])
        out = sampled_measures(np.zeros(n), ref["gold"], ref["gold"], gold_chosen=chosen["gold"] if chosen else None,
                               groups=ref["group"], groups_ref=ref["group"],
                               groups_chosen=chosen["group"] if chosen else None,
                               lengths=[len(a) for a in ref["answers"]], beta=beta)
        out.update(kl_se=0.0, win_rate=0.5, win_rate_se=0.0, win_gain=0.0, length_r2=float("nan"),
                   reward_accuracy=0.5)
        if shared.language is not None:
            lp = ref["exact_logp"]
            out.update(exact_measures(lp, lp, shared.gold.values, chosen_probs=chosen["probs"] if chosen else None))
            out["exact_malformed_mass"] = float(lp[shared.language.n_tree:].exp().sum())
        return out
    prompts, group = ref["prompts"], ref["group"]
    prompt_ids = {i: _prompt_ids(tokenizer, p) for i, p in enumerate(prompts)}
    generator = torch.Generator(device=shared.device).manual_seed(seed * 1_000_003 + step)
    answers, texts = _sample(model, tokenizer, [prompt_ids[i] for i in group], shared, generator)
    sampled = [Example(prompt_ids[i], [a], index=k) for k, (i, a) in enumerate(zip(group, answers))]
    if not hasattr(shared, "ref_model"):
        shared.ref_model = load_model(str(shared.sft_model)).to(shared.device).eval()
    pad = tokenizer.pad_token_id
    pi, _ = log_prob_table(model, sampled, pad, shared.device, 256, pairs=False)
    rf, _ = log_prob_table(shared.ref_model, sampled, pad, shared.device, 256, pairs=False)
    gold = shared.score([prompts[i] for i in group], answers, texts)
    out = sampled_measures((pi - rf)[:, 0].numpy(), gold, ref["gold"], gold_chosen=chosen["gold"] if chosen else None,
                           groups=group, groups_ref=group, groups_chosen=chosen["group"] if chosen else None,
                           lengths=[len(a) for a in answers], beta=beta)
    heldout = _read_jsonl(shared.dir / "heldout.jsonl")
    h = beta * (_pair_logps(model, tokenizer, heldout, shared.device) - ref["heldout_logps"])  # [n, 2]
    out["reward_accuracy"] = float(((h[:, 0] > h[:, 1]).double() + 0.5 * (h[:, 0] == h[:, 1]).double()).mean())
    if shared.language is not None:
        lp = shared.language.log_probs(model, shared.device)
        out.update(exact_measures(lp, ref["exact_logp"], shared.gold.values,
                                  chosen_probs=chosen["probs"] if chosen else None))
        out["exact_malformed_mass"] = float(lp[shared.language.n_tree:].exp().sum())
    return out


def chosen_answers(shared: Shared, ref: dict, run: Run) -> dict:
    """The run's data's chosen answers as the second win rate's opponent: gold, prompt group, (tree) distribution."""
    rows = _read_jsonl(_run_data(shared, run))
    index = {p: i for i, p in enumerate(ref["prompts"])}
    rows = [r for r in rows if r["prompt"] in index]
    out = {"group": [index[r["prompt"]] for r in rows],
           "gold": shared.gold([r["prompt"] for r in rows], [r["chosen"] for r in rows])}
    if shared.language is not None:
        probs = torch.zeros(shared.language.n_answers, dtype=torch.float64)
        for r in rows:
            probs[shared.language.answer_of_text(r["chosen"])] += 1.0 / len(rows)
        out["probs"] = probs
    return out


def evaluate_run(shared: Shared, run: Run, folder: Path) -> pd.DataFrame:
    """eval.csv of one run: step 0 (the reference) and every checkpoint, oldest first."""
    from ..models import load_model, load_tokenizer
    from ..train import checkpoints
    ref = load_reference(shared)
    chosen = chosen_answers(shared, ref, run)
    tokenizer = load_tokenizer(str(shared.sft_model), quiet=True)
    config = json.loads((folder / "config.json").read_text())
    steps_per_epoch = config["steps_per_epoch"]
    rows = [{"checkpoint": "reference", "step": 0, **evaluate_checkpoint(shared, ref, None, tokenizer, beta=run.beta,
                                                                          seed=run.seed, step=0, chosen=chosen)}]
    for ckpt in checkpoints(folder) + [folder / "final"]:
        step = torch.load(ckpt / "trainer_state.pt", weights_only=False)["step"]
        model = load_model(str(ckpt)).to(shared.device)
        rows.append({"checkpoint": ckpt.name, "step": step,
                     **evaluate_checkpoint(shared, ref, model, tokenizer, beta=run.beta, seed=run.seed, step=step,
                                           chosen=chosen)})
    table = pd.DataFrame(rows)
    table.insert(2, "epoch", table["step"] / steps_per_epoch)
    for key, value in reversed(list(asdict(run).items())):
        table.insert(0, key, value)
    return table


def summarize(table: pd.DataFrame) -> dict:
    """The run's hump in numbers: reference, peak, final of the win rate and gold (sampled; exact too on trees)."""
    out = {}
    for col in ("win_rate", "gold", "exact_win_rate", "exact_gold"):
        if col in table:
            peak = int(table[col].idxmax())
            out.update({f"{col}_ref": float(table[col].iloc[0]), f"{col}_peak": float(table[col].iloc[peak]),
                        f"{col}_peak_step": int(table["step"].iloc[peak]), f"{col}_final": float(table[col].iloc[-1]),
                        f"{col}_hump": bool(table[col].iloc[peak] > table[col].iloc[0]
                                            and table[col].iloc[peak] > table[col].iloc[-1])})
    out["final_kl"] = float(table["kl"].iloc[-1])
    return out


class LLMLabStudy(Study):
    """The lab's runs as a grid study: one run per stack; the shared parts are prepared before.

    ``run_batch`` trains a run into ``OUT/train/NAME`` and evaluates step 0 and every checkpoint;
    ``write_run`` writes ``OUT/runs/NAME`` at once (config.json, eval.csv, summary.json, and the
    trainer's folder moved in as ``train/``, checkpoints removed unless ``keep_checkpoints``).
    """

    label = "llm lab"
    name_fields = ("loss", "beta", "seed", "pairs")
    max_batch = 1

    def __init__(self, cfg: StudyConfig, out):
        self.cfg, self.out = cfg, str(out)

    def shape(self, config):
        return config

    def cost(self, config) -> float:
        return float(config.pairs) * self.cfg.epochs

    def run_batch(self, configs, on_work=None) -> list:
        from ...engine import torch_threads
        shared = Shared(self.cfg, Path(self.out))
        results = []
        for run in configs:
            t0 = time.perf_counter()
            with torch_threads(self.cfg.threads):
                folder = train_run(shared, run)
                t1 = time.perf_counter()
                table = evaluate_run(shared, run, folder)
            summary = {**asdict(run), **summarize(table), "train_seconds": t1 - t0,
                       "eval_seconds": time.perf_counter() - t1}
            _say(f"lab: {run.name} done in {time.perf_counter() - t0:.1f}s (train {t1 - t0:.1f}s)")
            results.append({"table": table, "summary": summary, "train": str(folder)})
            if on_work is not None:
                on_work(self.cost(run))
        return results

    def write_run(self, folder: Path, config, result) -> dict:
        from ...runs import atomic_directory
        with atomic_directory(folder) as tmp:
            (tmp / "config.json").write_text(json_text(config.to_dict()))
            result["table"].to_csv(tmp / "eval.csv", index=False)
            _write_json(result["summary"], tmp / "summary.json")
            train = Path(result["train"])
            if not self.cfg.keep_checkpoints:
                from ..train import checkpoints
                for ckpt in checkpoints(train):
                    shutil.rmtree(ckpt)
            if train.is_dir():
                shutil.move(str(train), str(tmp / "train"))
        return result["summary"]


def run_study(cfg: StudyConfig, out, *, runs: Optional[Sequence[Run]] = None, executor=None,
              workers: int = 1, **executor_options) -> pd.DataFrame:
    """Prepare the shared parts, then train and evaluate every run not finished yet (on the grid's
    executors); write ``OUT/results.csv`` (one row per checkpoint)."""
    cfg = cfg.checked()
    out = Path(out).expanduser().absolute()
    shared = prepare(cfg, out)
    runs = list(runs if runs is not None else grid_runs(cfg))
    if not runs:
        raise UserError("the grid has no runs")
    study = LLMLabStudy(cfg, out)
    names = [run.name for run in runs]
    run_grid(study, runs, out / "runs", names=names, executor=executor, workers=workers, progress=False,
             **executor_options)
    del shared
    results = pd.concat([pd.read_csv(out / "runs" / name / "eval.csv") for name in names], ignore_index=True)
    with atomic_file(out / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    return results


__all__ = ["StudyConfig", "Run", "LLMLabStudy", "grid_runs", "prepare", "run_study", "evaluate_checkpoint", "summarize"]
