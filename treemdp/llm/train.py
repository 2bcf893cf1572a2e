"""SFT and DAA training loops for causal LMs (paper §3, App. B), single process or accelerate.

One :class:`TrainConfig` per run, presets for the paper / one GPU / CPU, then :func:`train`.
The DAA step is the toy track's: sequence log-probs of chosen and rejected (each pair's prompt
computed once, :mod:`treemdp.llm.logprobs`), reference log-probs precomputed once and cached in
``OUT/ref_logps.pt``, and ``treemdp.losses.preference_loss`` with any registered objective
(paper eq. 4 and the zoo). Runs write ``config.json``, ``metrics.csv``, ``checkpoint-STEP/``
folders (model, tokenizer, ``trainer_state.pt`` with optimizer, scheduler, step and RNG) and
``final/``, each folder through :func:`treemdp.runs.atomic_directory`; ``resume=True`` continues
from the newest checkpoint.

Data order is a pure function of (seed, epoch): step s of epoch e always sees the same rows, so
a resumed run matches an uninterrupted one. Under ``accelerate launch`` every global batch is cut
into equal per-process slices and gradients are averaged (DDP, FSDP), so the update equals the
single process one on the same global batch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingDiverged, UserError
from ..losses import check_beta, get_objective, preference_loss
from ..objectives import loss_spec
from ..runs import atomic_directory, atomic_file
from .data import (PAIR_FIELDS, SFT_FIELDS, TOKENIZATIONS, TRUNCATION_MODES, check_lengths,
                   collate_sft, load_rows, rows_digest, tokenize_rows)
from .logprobs import log_prob_table, pair_log_probs, sequence_log_probs, shared_prompt_works

#: Presets: App. B of the paper, a scaled-down single-GPU one, and a CPU one for the tiny model.
PRESETS: dict[str, dict] = {
    "paper": dict(optimizer="rmsprop", lr=0.5e-6, sft_lr=0.5e-6, warmup_steps=150, batch_size=16,
                  grad_accum=8, epochs=1.0, checkpoints_per_epoch=4, max_length=512,
                  max_prompt_length=384),
    "gpu": dict(optimizer="rmsprop", lr=1e-6, sft_lr=1e-5, warmup_steps=30, batch_size=8,
                grad_accum=4, epochs=1.0, checkpoints_per_epoch=4, max_length=512,
                max_prompt_length=384),
    "cpu": dict(optimizer="adamw", lr=1e-3, sft_lr=3e-3, warmup_steps=2, batch_size=8,
                grad_accum=1, epochs=1.0, checkpoints_per_epoch=4, max_length=128,
                max_prompt_length=96),
}
OPTIMIZERS = ("rmsprop", "adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
#: DAA-only settings (``treemdp llm sft`` has no flags for them).
DAA_FIELDS = ("ref", "loss", "beta", "average_logps", "shared_prompt")
#: Settings a resumed run may change; any other must equal the checkpoint's.
RESUMABLE = ("resume", "stop_after", "max_steps", "epochs", "save_every", "checkpoints_per_epoch",
             "log_every", "progress", "threads", "device")


@dataclass
class TrainConfig:
    """Every setting of one SFT or DAA run (``None`` fields come from the preset)."""

    phase: str = "daa"
    """sft (behaviour cloning on prompt/completion rows) or daa (a preference objective)."""
    model: str = ""
    """Policy to start from: a local folder (save_pretrained) or a hub name, e.g. EleutherAI/pythia-160m."""
    ref: str | None = None
    """Reference model; default: the starting policy (the SFT model)."""
    data: str = ""
    """JSONL file, datasets folder (save_to_disk) or hub dataset name; in Python also a datasets.Dataset or a list of dicts."""
    split: str = "train"
    """Split of a hub dataset or DatasetDict folder."""
    columns: str | None = None
    """Column mapping FIELD=COLUMN,... for prompt, completion, chosen, rejected (e.g. prompt=question,chosen=good)."""
    out: str = ""
    """Output folder: config.json, metrics.csv, checkpoint-STEP/, final/."""
    loss: str = "dpo"
    """DAA objective: dpo, ipo, slic or any name of 'treemdp losses', NAME(k=v, ...), or package.module:function."""
    beta: float = 0.1
    """DAA inverse temperature beta; finite and > 0."""
    preset: str = "cpu"
    """Defaults for every setting left at None: paper (App. B), gpu (one GPU, Pythia 70m-1b), cpu (tiny model)."""
    optimizer: str | None = None
    """rmsprop, adamw or sgd (None: the preset's)."""
    lr: float | None = None
    """Peak learning rate (None: the preset's)."""
    warmup_steps: int | None = None
    """Linear warm-up steps, then constant (None: the preset's)."""
    batch_size: int | None = None
    """Rows (pairs) per micro-batch per process (None: the preset's)."""
    grad_accum: int | None = None
    """Micro-batches per optimizer step (None: the preset's)."""
    epochs: float | None = None
    """Passes over the data, fractions allowed (None: the preset's)."""
    max_steps: int | None = None
    """Cap on optimizer steps."""
    stop_after: int | None = None
    """Checkpoint and stop after this many steps of this invocation (continue with --resume)."""
    checkpoints_per_epoch: int | None = None
    """Intermediate checkpoints per epoch (None: the preset's)."""
    save_every: int | None = None
    """Checkpoint every N steps (overrides checkpoints per epoch)."""
    max_length: int | None = None
    """Max prompt + completion tokens (None: the preset's)."""
    max_prompt_length: int | None = None
    """Prompt tokens kept when truncating, >= 1 (None: the preset's)."""
    truncation: str = "truncate"
    """Rows over max length: truncate (keep the prompt's end, cut the completion), drop, or keep_start (TRL)."""
    tokenization: str = "default"
    """default (BOS/EOS as the tokenizer defines them, no double EOS) or trl (TRL 1.16's joint-text split)."""
    average_logps: bool = False
    """DAA: per-token mean log-probs instead of sums (TRL's ipo convention)."""
    shared_prompt: bool = True
    """DAA: compute each pair's prompt once for both answers (falls back where a model cannot)."""
    max_grad_norm: float | None = None
    """Clip gradients to this norm, > 0 (None: no clipping)."""
    seed: int = 0
    """Seeds the data order and any random initialisation; same seed, same numbers on CPU."""
    device: str = "auto"
    """auto (a GPU when there is one), cpu or cuda."""
    precision: str = "auto"
    """auto (bf16 autocast on a GPU that supports it, else fp32), fp32 or bf16."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory (prompts are then scored twice per pair)."""
    resume: bool = False
    """Continue from the newest checkpoint in out (settings not given come from its config)."""
    log_every: int = 1
    """Optimizer steps per metrics.csv row."""
    progress: bool = True
    """Show a progress bar."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""

    def resolved(self) -> "TrainConfig":
        """A copy with preset values filled in, the objective's canonical spec, local paths made
        absolute, and every field validated (UserError naming the first bad one)."""
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        preset = dict(PRESETS[self.preset])
        sft_lr = preset.pop("sft_lr")
        if self.phase == "sft":
            preset["lr"] = sft_lr
        for key, value in preset.items():
            if values[key] is None:
                values[key] = value
        cfg = TrainConfig(**values)
        for name, allowed in (("phase", ("sft", "daa")), ("optimizer", OPTIMIZERS),
                              ("device", DEVICES), ("precision", PRECISIONS),
                              ("truncation", TRUNCATION_MODES), ("tokenization", TOKENIZATIONS)):
            if getattr(cfg, name) not in allowed:
                raise UserError(f"unknown {name} {getattr(cfg, name)!r}; choose one of: "
                                f"{', '.join(allowed)}")
        if cfg.phase == "daa":
            try:
                cfg.loss = objective_spec(cfg.loss)
                cfg.beta = check_beta(cfg.beta)
            except ValueError as e:
                raise UserError(str(e)) from None
        for name in ("batch_size", "grad_accum", "checkpoints_per_epoch", "log_every"):
            if getattr(cfg, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("max_steps", "stop_after", "save_every", "threads"):
            if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
            raise UserError(f"--lr must be a finite number > 0, got {cfg.lr}")
        if cfg.warmup_steps < 0 or not cfg.epochs > 0:
            raise UserError("--warmup-steps must be >= 0 and --epochs > 0")
        if cfg.max_grad_norm is not None and not (cfg.max_grad_norm > 0
                                                  and math.isfinite(cfg.max_grad_norm)):
            raise UserError(f"--max-grad-norm must be a finite number > 0 (leave it out for no "
                            f"clipping), got {cfg.max_grad_norm}")
        check_lengths(cfg.max_length, cfg.max_prompt_length, cfg.truncation, cfg.tokenization)
        if not cfg.out:
            raise UserError("no output folder (--out)")
        if not cfg.model:
            raise UserError("no model given (--model PATH or hub name)")
        cfg.out = str(Path(cfg.out).expanduser().absolute())
        cfg.model, cfg.ref = absolute_if_local(cfg.model), absolute_if_local(cfg.ref)
        if isinstance(cfg.data, (str, Path)):
            cfg.data = absolute_if_local(str(cfg.data))
        return cfg

    def to_dict(self) -> dict:
        """JSON-ready settings (``config.json``): the loss as its spec, in-memory data described."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["loss"] = loss_spec(self.loss)
        if not isinstance(self.data, (str, Path)):
            out["data"] = f"<in-memory {type(self.data).__name__}>"
        else:
            out["data"] = str(self.data)
        return out


def objective_spec(loss) -> Any:
    """The canonical spec of a named objective (``"cdpo(epsilon=0.2)"``); objects are kept."""
    objective = get_objective(loss)
    return objective.spec if isinstance(loss, str) else loss


def absolute_if_local(name: str | None) -> str | None:
    """An existing local path made absolute (config.json must not depend on the working folder);
    hub names and None unchanged."""
    if not name:
        return name
    path = Path(name).expanduser()
    return str(path.absolute()) if path.exists() else name


# ---------------------------------------------------------------- small helpers

def _quiet_transformers() -> None:
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def seed_everything(seed: int) -> None:
    """The one place global RNGs are seeded (torch CPU and CUDA)."""
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(out: str | Path) -> list[Path]:
    """The run's ``checkpoint-STEP`` folders, oldest first."""
    found = [p for p in Path(out).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return torch.optim.SGD(params, lr=lr)


def warmup_schedule(optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the peak over ``warmup_steps``, then constant (App. B)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warmup_steps + 1)) if warmup_steps else 1.0)


def data_key(cfg: TrainConfig, rows: list[dict], tokenizer_name: str, ref_name: str) -> str:
    """Hash of everything the cached reference log-probs depend on."""
    digest = hashlib.sha256(rows_digest(rows).encode())
    for part in (ref_name, tokenizer_name, cfg.max_length, cfg.max_prompt_length, cfg.truncation,
                 cfg.tokenization):
        digest.update(repr(part).encode())
    return digest.hexdigest()


def save_file_atomic(obj, path: Path) -> None:
    """``torch.save`` through :func:`treemdp.runs.atomic_file`: a kill never leaves a truncated file."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} if it is missing or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json(obj, path: Path) -> None:
    """Standard JSON (NaN and inf written as null), written atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n")


def json_ready(obj):
    """``obj`` with every non-finite float replaced by None (standard JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


class MetricsLog:
    """``metrics.csv`` (one row per logged step) plus TensorBoard when it is installed."""

    def __init__(self, path: Path, keep_until: int | None):
        self.path = path
        self.rows: list[dict] = []
        if keep_until is not None and path.is_file():  # resuming: drop rows past the checkpoint
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        self._rewrite()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # tensorboard not installed: CSV only
            self.tb = None

    def _rewrite(self) -> None:
        if not self.rows:
            self.path.write_text("")
            return
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)

    def add(self, row: dict) -> None:
        new_file = not self.rows
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, row["step"])


# ---------------------------------------------------------------- the output folder

def check_out_folder(cfg: TrainConfig) -> None:
    """Refuse an ``out`` whose files a run would damage: the model or reference folder itself,
    a model folder, a run of the other phase, or (without ``resume``) an earlier run."""
    out = Path(cfg.out)
    for what, name in (("--model", cfg.model), ("--ref", cfg.ref)):
        if name and Path(name).exists() and Path(name).resolve() == out.resolve():
            raise UserError(f"--out {cfg.out} is the {what} folder; writing the run there would "
                            "overwrite the model's files; choose another --out")
    config_file = out / "config.json"
    if not config_file.is_file():
        return
    saved = read_json(config_file)
    phase = saved.get("phase")
    if phase not in ("sft", "daa") or "preset" not in saved:
        raise UserError(f"--out {cfg.out} holds a config.json that is not a treemdp llm run "
                        "(a model folder?); choose another --out")
    if phase != cfg.phase:
        raise UserError(f"--out {cfg.out} holds an {phase} run; a {cfg.phase} run there would "
                        "replace its checkpoints and final/; choose another --out")
    if not cfg.resume:
        raise UserError(f"--out {cfg.out} already holds a {phase} run; pass --resume to continue "
                        "it, or choose another --out")


def check_resume_config(cfg: TrainConfig, saved: dict, where: Path) -> None:
    """Refuse to resume with settings that differ from the checkpoint's (other than RESUMABLE)."""
    current = cfg.to_dict()
    for key, value in saved.items():
        if key in RESUMABLE or key not in current or current[key] == value:
            continue
        raise UserError(f"--resume: --{key.replace('_', '-')} is {current[key]!r} here but "
                        f"{value!r} in {where}; leave it out to keep the run's value, or start "
                        "a new run in another --out")


def config_for_resume(out: str | Path) -> dict:
    """The settings a run folder was started with (``config.json``), as TrainConfig fields."""
    saved = read_json(Path(out) / "config.json")
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in saved.items() if k in names}


# ---------------------------------------------------------------- the run

@dataclass
class RunResult:
    """What :func:`train` returns: where things went and the logged metrics."""
    out: Path
    steps: int
    total_steps: int
    finished: bool
    metrics: list[dict] = field(default_factory=list)


def _save(accelerator, model, tokenizer, path: Path, state: dict | None) -> None:
    """Write a model folder (every process gathers its shard of the weights; the main one writes)
    through :func:`treemdp.runs.atomic_directory`, so a kill leaves no half copy."""
    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(model)  # collective under FSDP
    if accelerator.is_main_process:
        with atomic_directory(path) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=weights)
            tokenizer.save_pretrained(tmp)
            if state is not None:
                torch.save(state, tmp / "trainer_state.pt")
    accelerator.wait_for_everyone()


def _fsdp(accelerator) -> bool:
    return str(accelerator.distributed_type).endswith("FSDP")


def optimizer_state(accelerator, model, optimizer) -> dict:
    """The optimizer's state as one file can hold it. Under FSDP each process holds a shard:
    the full state is gathered (a collective: every process calls this) onto the main one."""
    if not _fsdp(accelerator):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer),
                                    options=StateDictOptions(full_state_dict=True,
                                                             cpu_offload=True))


def load_optimizer_state(accelerator, model, optimizer, state: dict) -> None:
    """Inverse of :func:`optimizer_state`, after ``accelerator.prepare`` (every process reads
    the full state and keeps its shard under FSDP)."""
    if not _fsdp(accelerator):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), state,
                             options=StateDictOptions(full_state_dict=True))


def _load_reference_cache(path: Path, key: str, main: bool):
    """The cached reference tables if ``path`` holds them for ``key``; None otherwise (an
    unreadable file, e.g. cut short by a kill before atomic writes, is recomputed)."""
    if not path.is_file():
        return None
    try:
        cached = torch.load(path)
    except Exception:  # noqa: BLE001 - truncated or foreign file: recompute it
        if main:
            print(f"note: {path} is unreadable; recomputing the reference log-probs",
                  file=sys.stderr)
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None
    return cached["sums"], cached["counts"]


def train(cfg: TrainConfig) -> RunResult:
    """Run SFT or DAA as ``cfg`` says; see the module docstring for what is written."""
    cfg = cfg.resolved()
    from accelerate import Accelerator
    from .models import check_causal, check_same_vocabulary, load_model, load_tokenizer, \
        resolve_device
    _quiet_transformers()
    device = resolve_device(cfg.device)
    check_out_folder(cfg)
    policy_config = check_causal(cfg.model)
    if cfg.phase == "daa" and cfg.ref:
        check_same_vocabulary(policy_config, check_causal(cfg.ref), cfg.model, cfg.ref)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device == "cuda"
                                       and torch.cuda.is_bf16_supported())
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="bf16" if bf16 else "no")
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{rank}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write output folder {out}: {e.strerror or e}") from None

    found = checkpoints(out) if cfg.resume else []
    resume_from = found[-1] if found else None
    if resume_from is not None:
        state = torch.load(resume_from / "trainer_state.pt", weights_only=False)
        check_resume_config(cfg, state.get("config", {}), resume_from)
    elif cfg.resume and main:
        print(f"note: no checkpoint in {out}; starting from the beginning", file=sys.stderr)

    tokenizer = load_tokenizer(cfg.model, quiet=not main)
    pad_id = tokenizer.pad_token_id
    kind = "sft" if cfg.phase == "sft" else "pairs"
    rows, label = load_rows(cfg.data, SFT_FIELDS if kind == "sft" else PAIR_FIELDS,
                            split=cfg.split, columns=cfg.columns)
    examples, stats = tokenize_rows(rows, tokenizer, kind=kind, max_length=cfg.max_length,
                                    max_prompt_length=cfg.max_prompt_length,
                                    truncation=cfg.truncation, tokenization=cfg.tokenization,
                                    path=label)

    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = len(examples) // global_batch
    if steps_per_epoch == 0:
        raise UserError(f"{label}: {len(examples)} usable rows, fewer than one global batch "
                        f"of {global_batch} (batch size x grad accum x processes)")
    if main:
        print(stats.line(label), file=sys.stderr)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    save_every = cfg.save_every or max(1, steps_per_epoch // cfg.checkpoints_per_epoch)
    final_state = out / "final" / "trainer_state.pt"
    if cfg.resume and final_state.is_file():
        done = torch.load(final_state, weights_only=False)["step"]
        if done >= total_steps:
            if main:
                print(f"note: {out} already finished ({done} steps); nothing to resume",
                      file=sys.stderr)
            return RunResult(out=out, steps=done, total_steps=total_steps, finished=True)

    dtype = torch.float32
    model = load_model(str(resume_from) if resume_from else cfg.model, dtype=dtype)
    model.config.use_cache = False
    model.to(accelerator.device)
    if cfg.gradient_checkpointing:  # transformers 5 renamed it activation_checkpointing_enable
        enable = getattr(model, "activation_checkpointing_enable", None) or \
            model.gradient_checkpointing_enable
        enable()

    ref_sums = None
    shared = False
    if cfg.phase == "daa":
        objective = get_objective(cfg.loss)
        probe_rows = examples[: min(4, len(examples))]
        shared = cfg.shared_prompt and shared_prompt_works(
            model, probe_rows, pad_id, accelerator.device, name=cfg.model, quiet=not main)
        ref_name = cfg.ref or cfg.model
        cache = out / "ref_logps.pt"
        key = data_key(cfg, rows, cfg.model, ref_name)
        cached = _load_reference_cache(cache, key, main)
        if cached is not None:
            ref_sums, ref_counts = cached
        else:
            ref_model = model if (ref_name == cfg.model and resume_from is None) else \
                load_model(ref_name, dtype=dtype).to(accelerator.device)
            ref_shared = shared if ref_model is model else cfg.shared_prompt and \
                shared_prompt_works(ref_model, probe_rows, pad_id, accelerator.device,
                                    name=ref_name, quiet=not main)
            t0 = time.perf_counter()
            ref_sums, ref_counts = log_prob_table(ref_model, examples, pad_id, accelerator.device,
                                                  cfg.batch_size, pairs=True, shared=ref_shared,
                                                  accelerator=accelerator)
            if ref_model is not model:
                del ref_model
            if main:
                save_file_atomic({"key": key, "sums": ref_sums, "counts": ref_counts}, cache)
                print(f"reference log-probs of {len(examples)} pairs computed in "
                      f"{time.perf_counter() - t0:.1f}s and cached in {cache}", file=sys.stderr)
        if cfg.average_logps:
            ref_sums = ref_sums / ref_counts.clamp(min=1)

    model.train()
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    scheduler = warmup_schedule(optimizer, cfg.warmup_steps)
    step = 0
    if resume_from is None:
        seed_everything(cfg.seed)
    model, optimizer = accelerator.prepare(model, optimizer)
    if resume_from is not None:
        load_optimizer_state(accelerator, model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = state["step"]
        if main:
            print(f"resumed from {resume_from} at step {step}", file=sys.stderr)

    if main:
        config = cfg.to_dict() | {
            "world_size": world, "global_batch": global_batch, "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "save_every": save_every, "rows": asdict(stats),
            "data_source": label, "shared_prompt_used": shared,
            "distributed": str(accelerator.distributed_type).split(".")[-1],
            "precision_used": "bf16" if bf16 else "fp32", "device_used": device}
        write_json(config, out / "config.json")
    log = MetricsLog(out / "metrics.csv", keep_until=step if resume_from else None) if main else None

    def state_dict(step_done: int) -> dict:
        return {"optimizer": optimizer_state(accelerator, model, optimizer),
                "scheduler": scheduler.state_dict(),
                "step": step_done, "rng": rng_state(), "config": cfg.to_dict()}

    def last_saved() -> str:
        done = checkpoints(out)
        return f"the last checkpoint is {done[-1]}" if done else "no checkpoint was written"

    from tqdm.auto import tqdm
    bar = tqdm(total=total_steps, initial=step, disable=not (main and cfg.progress),
               desc=cfg.phase if cfg.phase == "sft" else f"{cfg.loss} beta={cfg.beta:g}",
               file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    per_process = cfg.batch_size * cfg.grad_accum
    stop_at = min(total_steps, step + cfg.stop_after) if cfg.stop_after else total_steps
    t_start = t_last = time.perf_counter()
    cpu_start = time.process_time()
    tok_since = 0
    sums: dict[str, float] = {}
    while step < stop_at:
        epoch, pos = divmod(step, steps_per_epoch)
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(
            cfg.seed * 100003 + epoch))
        global_idx = order[pos * global_batch: (pos + 1) * global_batch]
        local_idx = global_idx[rank * per_process: (rank + 1) * per_process].tolist()
        stats_step = {"loss": 0.0, "tokens": 0.0}
        for a in range(cfg.grad_accum):
            idx = local_idx[a * cfg.batch_size: (a + 1) * cfg.batch_size]
            micro = [examples[i] for i in idx]
            last = a == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
            # tokens of the sequences scored, each prompt counted once per completion
            stats_step["tokens"] += sum(len(e.prompt_ids) * len(e.completions)
                                        + sum(map(len, e.completions)) for e in micro)
            with sync:
                if cfg.phase == "sft":
                    batch = {k: v.to(accelerator.device) for k, v in
                             collate_sft(micro, pad_id).items()}
                    with accelerator.autocast():
                        logps, n_tok = sequence_log_probs(model, batch)
                    loss = -logps.sum() / n_tok.sum().clamp(min=1)  # mean token NLL
                else:
                    with accelerator.autocast():
                        logps, n_tok = pair_log_probs(model, micro, pad_id, accelerator.device,
                                                      shared=shared, average=cfg.average_logps)
                    pi_w, pi_l = logps[:, 0], logps[:, 1]  # [B] each
                    ref = ref_sums[idx].to(accelerator.device)
                    ref_w, ref_l = ref[:, 0], ref[:, 1]
                    losses = preference_loss(pi_w, pi_l, ref_w, ref_l, beta=cfg.beta,
                                             loss=objective, chosen_lengths=n_tok[:, 0],
                                             rejected_lengths=n_tok[:, 1])
                    loss = losses.mean()
                    with torch.no_grad():
                        r_w = cfg.beta * (pi_w - ref_w)
                        r_l = cfg.beta * (pi_l - ref_l)
                        for name, v in (("reward_chosen", r_w), ("reward_rejected", r_l),
                                        ("reward_accuracy", (r_w > r_l).float()),
                                        ("logp_chosen", pi_w), ("logp_rejected", pi_l)):
                            stats_step[name] = stats_step.get(name, 0.0) + float(v.mean())
                accelerator.backward(loss / cfg.grad_accum)
            stats_step["loss"] += float(loss.detach())

        # average micro-batch means over accumulation, then over processes (before the update:
        # every process must see a NaN loss and stop together, with the weights untouched)
        keys = sorted(stats_step)
        vec = torch.tensor([stats_step[k] for k in keys], device=accelerator.device)
        if world > 1:
            vec = accelerator.reduce(vec, reduction="sum")
        values = {k: float(v) for k, v in zip(keys, vec)}
        if not math.isfinite(values["loss"]):
            bar.close()
            raise TrainingDiverged(
                f"{cfg.phase} step {step + 1}: the loss became NaN/inf (learning rate too high?); "
                f"stopped before updating the weights; {last_saved()}")
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        for k in keys:
            if k != "tokens":
                values[k] /= cfg.grad_accum * world
        tok_since += values["tokens"]
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        if main:
            bar.update(1)
        if step % cfg.log_every == 0 or step == stop_at:
            now = time.perf_counter()
            n_logged = cfg.log_every if step % cfg.log_every == 0 else (step % cfg.log_every)
            row = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                   "lr": scheduler.get_last_lr()[0]}
            row.update({k: (v if k == "tokens" else v / n_logged) for k, v in sums.items()})
            row["tokens_per_s"] = tok_since / max(now - t_last, 1e-9)
            row["time_s"] = now - t_start  # wall time in this invocation
            row["cpu_s"] = time.process_time() - cpu_start  # CPU time (all threads) of this process
            if cfg.phase == "daa":
                row["objective"] = loss_spec(cfg.loss)
            sums, tok_since, t_last = {}, 0, now
            if main:
                log.add(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
        if step % save_every == 0 or step == stop_at:
            if step < total_steps:
                _save(accelerator, model, tokenizer, out / f"checkpoint-{step}", state_dict(step))
    bar.close()
    finished = step >= total_steps
    if finished:
        _save(accelerator, model, tokenizer, out / "final", state_dict(step))
    metrics = log.rows if log else []
    return RunResult(out=out, steps=step, total_steps=total_steps, finished=finished,
                     metrics=metrics)


CONFIG_FIELDS = [f.name for f in fields(TrainConfig)]
