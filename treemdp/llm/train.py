"""SFT and DAA training loops for causal LMs (paper §3, App. B), single process or accelerate.

One :class:`LLMConfig` per run, presets for the paper / one GPU / CPU, then :func:`train`, which
is five parts: :func:`prepare_run` (model, data, optimizer, resume), :func:`reference_table`
(the frozen reference's log-probs), :func:`train_step` (one optimizer step), :class:`MetricsLog`
(``metrics.csv``, TensorBoard / W&B) and :func:`save_checkpoint`.

The DAA step is the toy track's: sequence log-probs of chosen and rejected (each pair's prompt
computed once, :mod:`treemdp.llm.logprobs`), reference log-probs precomputed once and cached in
``OUT/ref_logps.pt``, and ``treemdp.losses.preference_loss`` with any registered objective
(paper eq. 4 and the zoo). Runs write ``config.json``, ``metrics.csv``, ``checkpoint-STEP/``
folders (model or LoRA adapters, tokenizer, ``trainer_state.pt`` with optimizer, scheduler,
step and RNG) and ``final/``, each folder through :func:`treemdp.runs.atomic_directory`;
``resume=True`` continues from the newest checkpoint.

Dropout is switched off in the policy (TRL's ``disable_dropout=True``; ``keep_dropout`` keeps
it); the reference pass always runs without it. With ``ref_sync_steps`` the reference follows
the policy (TR-DPO, Gorbatovski et al. 2024): every tau steps ref <- alpha*pi + (1-alpha)*ref,
and its log-probs over the whole data set are recomputed (one extra forward pass over the data
per update).

Data order is a pure function of (seed, epoch): step s of epoch e always sees the same rows, so
a resumed run matches an uninterrupted one. Under ``accelerate launch`` every global batch is cut
into equal per-process slices and gradients are averaged (DDP, FSDP), so the update equals the
single process one on the same global batch.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import math
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingDiverged, UserError
from ..losses import check_beta, get_objective, loss_spec, preference_loss
from ..runs import atomic_directory, atomic_file, remove_partial_writes
from .data import (PAIR_FIELDS, SFT_FIELDS, TOKENIZATIONS, TRUNCATION_MODES, TokenStats,
                   check_lengths, check_tokenized, collate_sft, load_rows, rows_digest,
                   tokenize_rows)
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
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Learning-rate shapes after the linear warm-up (transformers' ``lr_scheduler_type`` names).
LR_SCHEDULERS = ("constant", "linear", "cosine")
#: Where metrics go besides ``metrics.csv`` (TRL's ``report_to``).
REPORT_TO = ("none", "tensorboard", "wandb")
#: DAA-only settings (``treemdp llm sft`` has no flags for them).
DAA_FIELDS = ("ref", "loss", "beta", "average_logps", "shared_prompt", "ref_sync_steps",
              "ref_mixup_alpha")
#: Settings a resumed run may change; any other must equal the checkpoint's.
RESUMABLE = ("resume", "stop_after", "max_steps", "epochs", "save_every", "checkpoints_per_epoch",
             "log_every", "progress", "threads", "device", "report_to", "save_total_limit")


@dataclass
class LLMConfig:
    """Every setting of one SFT or DAA run (``None`` fields come from the preset)."""

    phase: str = "daa"
    """sft (behaviour cloning on prompt/completion rows) or daa (a preference objective)."""
    model: str = ""
    """Policy to start from: a local folder (save_pretrained, with its tokenizer) or a hub name, e.g. EleutherAI/pythia-160m."""
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
    """DAA objective: dpo, ipo, slic or any name of 'treemdp losses', NAME(k=v, ...), package.module:function or path/to/file.py:function."""
    beta: float = 0.1
    """DAA inverse temperature beta; finite and > 0."""
    preset: str = "cpu"
    """Defaults for every setting left at None: paper (App. B), gpu (one GPU, Pythia 70m-1b), cpu (tiny model)."""
    optimizer: str | None = None
    """rmsprop, adamw or sgd (None: the preset's)."""
    lr: float | None = None
    """Peak learning rate (None: the preset's)."""
    warmup_steps: int | None = None
    """Linear warm-up steps (None: the preset's), then the --lr-scheduler shape."""
    lr_scheduler: str = "constant"
    """After warm-up: constant (App. B), linear (decay to 0 at the last step) or cosine (half a cosine to 0)."""
    weight_decay: float = 0.0
    """Decoupled weight decay for adamw, L2 for rmsprop and sgd (TRL/transformers default 0)."""
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
    save_total_limit: int | None = None
    """Keep only the newest N checkpoint-STEP folders (final/ always kept; None: keep all, which 'llm eval --run' curves need)."""
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
    ref_sync_steps: int | None = None
    """DAA: update the reference every N steps (TR-DPO; TRL's ref_model_sync_steps); None: frozen reference."""
    ref_mixup_alpha: float = 1.0
    """DAA: reference update ref <- alpha*policy + (1-alpha)*ref, alpha in (0, 1]; 1 = hard copy (TRL's ref_model_mixup_alpha)."""
    keep_dropout: bool = False
    """Keep the model's dropout on while training (default off, TRL's disable_dropout=True)."""
    lora_r: int | None = None
    """LoRA rank (needs the 'lora' extra, peft); None: full fine-tuning. The reference is then the base, adapters off."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha (adapters scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input, in [0, 1)."""
    lora_target_modules: str | None = None
    """Comma-separated module names for adapters (None: peft's default for the architecture, e.g. query_key_value)."""
    max_grad_norm: float | None = None
    """Clip gradients to this norm, > 0 (None: no clipping; the norm is logged either way)."""
    seed: int = 0
    """Seeds the data order and any random initialisation; same seed, same numbers on CPU."""
    device: str = "auto"
    """auto (a GPU when there is one), cpu or cuda."""
    precision: str = "auto"
    """auto (bf16 autocast on a GPU that supports it, else fp32), fp32, bf16 or fp16 (CUDA only, with a loss scaler)."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory (prompts are then scored twice per pair)."""
    resume: bool = False
    """Continue from the newest checkpoint in out (settings not given come from its config)."""
    log_every: int = 1
    """Optimizer steps per metrics.csv row."""
    report_to: str = "none"
    """Also log to: none (metrics.csv only), tensorboard (OUT/tensorboard) or wandb (TRL's report_to)."""
    progress: bool = True
    """Show a progress bar."""
    threads: int | None = None
    """torch CPU threads (None: torch's default)."""

    def resolved(self) -> "LLMConfig":
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
        cfg = type(self)(**values)
        for name, allowed in (("phase", ("sft", "daa")), ("optimizer", OPTIMIZERS),
                              ("device", DEVICES), ("precision", PRECISIONS),
                              ("truncation", TRUNCATION_MODES), ("tokenization", TOKENIZATIONS),
                              ("lr_scheduler", LR_SCHEDULERS), ("report_to", REPORT_TO)):
            if getattr(cfg, name) not in allowed:
                raise UserError(f"unknown {name.replace('_', '-')} {getattr(cfg, name)!r}; "
                                f"choose one of: {', '.join(allowed)}")
        if cfg.phase == "daa":
            try:
                cfg.loss = objective_spec(cfg.loss)
                cfg.beta = check_beta(cfg.beta)
            except ValueError as e:
                raise UserError(objective_hint(str(e), cfg.loss)) from None
        for name in ("batch_size", "grad_accum", "checkpoints_per_epoch", "log_every"):
            if getattr(cfg, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("max_steps", "stop_after", "save_every", "threads", "save_total_limit",
                     "ref_sync_steps", "lora_r"):
            if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
            raise UserError(f"--lr must be a finite number > 0, got {cfg.lr}")
        if cfg.warmup_steps < 0 or not cfg.epochs > 0:
            raise UserError("--warmup-steps must be >= 0 and --epochs > 0")
        if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
            raise UserError(f"--weight-decay must be a finite number >= 0, got {cfg.weight_decay}")
        if cfg.max_grad_norm is not None and not (cfg.max_grad_norm > 0
                                                  and math.isfinite(cfg.max_grad_norm)):
            raise UserError(f"--max-grad-norm must be a finite number > 0 (leave it out for no "
                            f"clipping), got {cfg.max_grad_norm}")
        if not 0 < cfg.ref_mixup_alpha <= 1:
            raise UserError(f"--ref-mixup-alpha must be in (0, 1] (1: copy the policy), got "
                            f"{cfg.ref_mixup_alpha}")
        if not 0 <= cfg.lora_dropout < 1 or not (cfg.lora_alpha > 0
                                                 and math.isfinite(cfg.lora_alpha)):
            raise UserError("--lora-dropout must be in [0, 1) and --lora-alpha a finite number > 0")
        if cfg.lora_r and cfg.ref_sync_steps and cfg.ref_mixup_alpha < 1:
            raise UserError("--ref-mixup-alpha < 1 with LoRA would need a second copy of the base "
                            "model; use --ref-mixup-alpha 1 (the reference becomes the policy) or "
                            "full fine-tuning")
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


def objective_source(loss) -> dict | None:
    """Where a user objective (``module:function`` or ``file.py:function``) was defined: the
    file's path and SHA-256, written into ``config.json`` so a rerun can find and check it."""
    spec = loss_spec(loss).split("(")[0]
    if spec.count(":") != 1 or spec.startswith("<"):
        return None
    module = spec.split(":")[0]
    if module.endswith(".py"):
        path = module
    else:
        import importlib.util
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        path = found.origin if found else None
    if not path or not Path(path).is_file():
        return None
    return {"path": str(Path(path).absolute()),
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def objective_hint(message: str, loss, source: dict | None = None) -> str:
    """An objective error with the way out when a ``module:function`` cannot be imported: the
    file it came from (``config.json``'s ``loss_source``) on ``PYTHONPATH``, or ``--loss FILE:fn``."""
    spec = loss_spec(loss) if not isinstance(loss, str) else loss
    if "cannot load loss" not in message or spec.count(":") != 1:
        return message
    module, fn = spec.split("(")[0].split(":")
    if source and source.get("path"):
        path = Path(source["path"])
        folder = path.parent
        for _ in range(module.count(".")):
            folder = folder.parent
        return (f"{message}; it came from {path}: run with PYTHONPATH={folder} or pass "
                f"--loss {path}:{fn}")
    return (f"{message}; put the folder holding {module.replace('.', '/')}.py on PYTHONPATH, or "
            f"pass --loss path/to/file.py:{fn}")


def absolute_if_local(name: str | None) -> str | None:
    """An existing local path made absolute (config.json must not depend on the working folder);
    hub names and None unchanged."""
    if not name:
        return name
    path = Path(name).expanduser()
    return str(path.absolute()) if path.exists() else name


# ---------------------------------------------------------------- small helpers

def quiet_transformers() -> None:
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


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0
                   ) -> torch.optim.Optimizer:
    """rmsprop, adamw or sgd over ``params`` (decoupled decay for adamw, L2 for the others)."""
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def lr_factor(step: int, warmup_steps: int, total_steps: int, shape: str = "constant") -> float:
    """The learning rate of optimizer step ``step`` (0-based) over the peak.

    Warm-up (App. B): (step + 1) / (warmup + 1) for step < warmup. After it, with
    p = (step - warmup) / (total - warmup): constant 1, linear 1 - p, cosine (1 + cos(pi p)) / 2.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if shape == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 1.0 - p if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))


def make_scheduler(optimizer, warmup_steps: int, total_steps: int = 1,
                   shape: str = "constant") -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` as a scheduler (``scheduler.get_last_lr()`` is the next step's rate)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, shape))


def warmup_schedule(optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the peak over ``warmup_steps``, then constant (App. B)."""
    return make_scheduler(optimizer, warmup_steps)


def disable_dropout(model) -> int:
    """Set every dropout of ``model`` to 0 (TRL's ``disable_dropout``): ``nn.Dropout`` modules and
    the float attention-dropout rates attention layers read in training mode. Returns how many."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p:
            module.p, n = 0.0, n + 1
        for name in ("attention_dropout", "attn_dropout", "dropout"):
            value = getattr(module, name, None)
            if isinstance(value, float) and value:
                setattr(module, name, 0.0)
                n += 1
    return n


def data_key(cfg: LLMConfig, rows: list[dict], tokenizer_name: str, ref_name: str) -> str:
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


def check_reporter(report_to: str):
    """What ``report_to`` writes with (TensorBoard's SummaryWriter, the wandb module), or a
    UserError saying how to install it; None for ``none``."""
    if report_to == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--report-to tensorboard needs the tensorboard package: pip "
                            "install 'treemdp[llm]' (or pip install tensorboard)") from None
        return SummaryWriter
    if report_to == "wandb":
        try:
            import wandb
        except ImportError:
            raise UserError("--report-to wandb needs the wandb package: pip install wandb "
                            "(then wandb login)") from None
        return wandb
    return None


class MetricsLog:
    """``metrics.csv`` (one row per logged step) plus TensorBoard or Weights & Biases
    (``report_to``). Rows past ``keep_until`` (a resumed run's checkpoint) are dropped."""

    def __init__(self, path: Path, keep_until: int | None, report_to: str = "none",
                 config: dict | None = None):
        self.path = path
        self.rows: list[dict] = []
        if keep_until is not None and path.is_file():  # resuming: drop rows past the checkpoint
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        self._rewrite()
        self.tb = self.wandb = None
        reporter = check_reporter(report_to)
        if report_to == "tensorboard":
            self.tb = reporter(str(path.parent / "tensorboard"))
        elif report_to == "wandb":
            self.wandb = reporter.init(dir=str(path.parent), config=config or {},
                                    name=path.parent.name, reinit=True)

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
        numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for key, value in numbers.items():
                self.tb.add_scalar(key, value, row["step"])
        if self.wandb is not None:
            self.wandb.log(numbers, step=row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# ---------------------------------------------------------------- the output folder

def check_out_folder(cfg: LLMConfig) -> None:
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


def check_resume_config(cfg: LLMConfig, saved: dict, where: Path) -> None:
    """Refuse to resume with settings that differ from the checkpoint's (other than RESUMABLE).
    Settings a checkpoint predates are taken at their defaults."""
    current = cfg.to_dict()
    for key, value in saved.items():
        if key in RESUMABLE or key not in current or current[key] == value:
            continue
        raise UserError(f"--resume: --{key.replace('_', '-')} is {current[key]!r} here but "
                        f"{value!r} in {where}; leave it out to keep the run's value, or start "
                        "a new run in another --out")


def config_for_resume(out: str | Path) -> dict:
    """The settings a run folder was started with (``config.json``), as LLMConfig fields."""
    saved = read_json(Path(out) / "config.json")
    names = {f.name for f in fields(LLMConfig)}
    return {k: v for k, v in saved.items() if k in names}


def config_for_rerun(path: str | Path) -> dict:
    """The settings in a run's ``config.json`` (``--config``), as LLMConfig fields; a user
    objective that cannot be imported gets the hint of :func:`objective_hint`."""
    from ..errors import read_json_file
    saved = read_json_file(path, "run config")
    if not isinstance(saved, dict) or saved.get("phase") not in ("sft", "daa"):
        raise UserError(f"{path} is not the config.json of a 'treemdp llm sft|daa' run")
    names = {f.name for f in fields(LLMConfig)}
    values = {k: v for k, v in saved.items() if k in names and k not in ("resume", "out")}
    if isinstance(values.get("data"), str) and values["data"].startswith("<in-memory"):
        raise UserError(f"{path}: the run was trained on in-memory data ({values['data']}); "
                        "give --data")
    values["_loss_source"] = saved.get("loss_source")
    return values


# ---------------------------------------------------------------- the run

@dataclass
class LLMRun:
    """What :func:`train` returns: where things went and the logged metrics."""
    out: Path
    steps: int
    total_steps: int
    finished: bool
    metrics: list[dict] = field(default_factory=list)


@dataclass
class RunState:
    """Everything :func:`prepare_run` builds and the training loop updates."""
    cfg: LLMConfig
    accelerator: Any
    out: Path
    tokenizer: Any
    examples: list
    rows: list[dict]
    label: str
    stats: TokenStats
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    save_every: int
    device: str
    precision: str
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    objective: Any = None
    shared: bool = False
    ref: torch.Tensor | None = None  # [n, 2] reference log-probs (means with average_logps)
    ref_weights: dict | None = None  # soft TR-DPO: the reference's own weights
    resume_from: Path | None = None
    resumed: dict | None = None  # the checkpoint's trainer_state
    step: int = 0

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def lora(self) -> bool:
        return bool(self.cfg.lora_r)


def _save(accelerator, model, tokenizer, path: Path, state: dict | None) -> None:
    """Write a model folder (every process gathers its shard of the weights; the main one writes)
    through :func:`treemdp.runs.atomic_directory`, so a kill leaves no half copy. A LoRA model
    writes its adapters (``adapter_model.safetensors``, ``adapter_config.json``)."""
    accelerator.wait_for_everyone()
    weights = accelerator.get_state_dict(model)  # collective under FSDP
    if accelerator.is_main_process:
        with atomic_directory(path) as tmp:
            unwrapped = accelerator.unwrap_model(model)
            if hasattr(unwrapped, "peft_config"):
                unwrapped.save_pretrained(tmp)
            else:
                unwrapped.save_pretrained(tmp, state_dict=weights)
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


def _precision(cfg: LLMConfig, device: str) -> str:
    """fp32, bf16 or fp16 for ``cfg.precision`` on ``device`` (auto: bf16 where supported)."""
    if cfg.precision == "fp16" and device != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU (its loss scaler is CUDA's); on "
                        f"{device} use --precision bf16 or fp32")
    if cfg.precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return cfg.precision


def _load_policy(cfg: LLMConfig, resume_from: Path | None):
    """The policy to train: the checkpoint's (or starting) weights, LoRA adapters attached or
    read back, dropout off unless ``keep_dropout``."""
    from .models import load_model
    if not cfg.lora_r:
        model = load_model(str(resume_from) if resume_from else cfg.model)
    else:
        from .models import require_peft
        peft = require_peft()
        model = load_model(cfg.model)
        if resume_from is not None:
            model = peft.PeftModel.from_pretrained(model, str(resume_from), is_trainable=True)
        else:
            targets = ([t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()]
                       if cfg.lora_target_modules else None)
            lora = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                   lora_dropout=cfg.lora_dropout, target_modules=targets,
                                   task_type="CAUSAL_LM")
            seed_everything(cfg.seed)  # the adapters' random A matrices
            try:
                model = peft.get_peft_model(model, lora)
            except ValueError as e:
                raise UserError(f"--lora-target-modules: {str(e).splitlines()[0]}") from None
    model.config.use_cache = False
    if not cfg.keep_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:  # transformers 5 renamed it activation_checkpointing_enable
        enable = getattr(model, "activation_checkpointing_enable", None) or \
            model.gradient_checkpointing_enable
        enable()
    return model


def prepare_run(cfg: LLMConfig) -> RunState | LLMRun:
    """Set a run up: check the settings and the output folder, load tokenizer, data and model,
    the reference log-probs (DAA), optimizer and scheduler, and the checkpoint to resume from.
    Returns an :class:`LLMRun` instead when a resumed run has nothing left to do."""
    cfg = cfg.resolved()
    from accelerate import Accelerator
    from .models import check_causal, check_same_vocabulary, load_tokenizer, resolve_device
    quiet_transformers()
    device = resolve_device(cfg.device)
    check_out_folder(cfg)
    check_reporter(cfg.report_to)
    policy_config = check_causal(cfg.model)
    if cfg.phase == "daa" and cfg.ref:
        check_same_vocabulary(policy_config, check_causal(cfg.ref), cfg.model, cfg.ref)
    if cfg.lora_r:
        from .models import require_peft
        require_peft()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    precision = _precision(cfg, device)
    accelerator = Accelerator(cpu=device == "cpu",
                              mixed_precision="no" if precision == "fp32" else precision)
    if cfg.ref_sync_steps and _fsdp(accelerator):
        raise UserError("--ref-sync-steps is not supported under FSDP (the reference would need "
                        "its own sharded copy); use DDP or one process")
    main, rank = accelerator.is_main_process, accelerator.process_index
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{rank}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write output folder {out}: {e.strerror or e}") from None
    if main:
        for leftover in remove_partial_writes(out):
            print(f"note: removed {leftover.name}, left by an interrupted write", file=sys.stderr)
    accelerator.wait_for_everyone()

    found = checkpoints(out) if cfg.resume else []
    resume_from = found[-1] if found else None
    resumed = None
    if resume_from is not None:
        resumed = torch.load(resume_from / "trainer_state.pt", weights_only=False)
        check_resume_config(cfg, resumed.get("config", {}), resume_from)
    elif cfg.resume and main:
        print(f"note: no checkpoint in {out}; starting from the beginning", file=sys.stderr)

    tokenizer = load_tokenizer(cfg.model, quiet=not main)
    kind = "sft" if cfg.phase == "sft" else "pairs"
    rows, label = load_rows(cfg.data, SFT_FIELDS if kind == "sft" else PAIR_FIELDS,
                            split=cfg.split, columns=cfg.columns)
    examples, stats = tokenize_rows(rows, tokenizer, kind=kind, max_length=cfg.max_length,
                                    max_prompt_length=cfg.max_prompt_length,
                                    truncation=cfg.truncation, tokenization=cfg.tokenization,
                                    path=label)
    check_tokenized(rows, examples, tokenizer, kind=kind, path=label, model=cfg.model)

    global_batch = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
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
            return LLMRun(out=out, steps=done, total_steps=total_steps, finished=True)

    run = RunState(cfg=cfg, accelerator=accelerator, out=out, tokenizer=tokenizer,
                   examples=examples, rows=rows, label=label, stats=stats,
                   global_batch=global_batch, steps_per_epoch=steps_per_epoch,
                   total_steps=total_steps, save_every=save_every, device=device,
                   precision=precision, resume_from=resume_from, resumed=resumed)
    run.model = _load_policy(cfg, resume_from).to(accelerator.device)
    if cfg.phase == "daa":
        run.objective = get_objective(cfg.loss)
        probe_rows = examples[: min(4, len(examples))]
        run.shared = cfg.shared_prompt and shared_prompt_works(
            run.model, probe_rows, run.pad_id, accelerator.device, name=cfg.model, quiet=not main)
        if resumed is not None and "ref_table" in resumed:  # a reference updated by TR-DPO
            run.ref, run.ref_weights = resumed["ref_table"], resumed.get("ref_weights")
        else:
            run.ref = reference_table(run)
            if cfg.ref_sync_steps and cfg.ref_mixup_alpha < 1:
                run.ref_weights = _initial_ref_weights(run)

    run.model.train()
    params = [p for p in run.model.parameters() if p.requires_grad]
    run.optimizer = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)
    run.scheduler = make_scheduler(run.optimizer, cfg.warmup_steps, total_steps, cfg.lr_scheduler)
    if resume_from is None:
        seed_everything(cfg.seed)
    run.model, run.optimizer = accelerator.prepare(run.model, run.optimizer)
    if resumed is not None:
        load_optimizer_state(accelerator, run.model, run.optimizer, resumed["optimizer"])
        run.scheduler.load_state_dict(resumed["scheduler"])
        if resumed.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(resumed["scaler"])
        set_rng_state(resumed["rng"])
        run.step = resumed["step"]
        if main:
            print(f"resumed from {resume_from} at step {run.step}", file=sys.stderr)
    return run


def _reference_model(run: RunState):
    """(model, its name, a context) for the reference pass: the policy itself where it still
    is the reference (a fresh run; LoRA: the base with adapters off), else the --ref model."""
    cfg = run.cfg
    ref_name = cfg.ref or cfg.model
    if ref_name == cfg.model and run.lora:
        return run.model, ref_name, run.model.disable_adapter()
    if ref_name == cfg.model and run.resume_from is None:
        return run.model, ref_name, contextlib.nullcontext()
    from .models import load_model
    model = load_model(ref_name).to(run.accelerator.device)
    return model, ref_name, contextlib.nullcontext()


def reference_table(run: RunState) -> torch.Tensor:
    """The reference log-probs of every pair, [n, 2] (chosen, rejected; per-token means with
    ``average_logps``), read from ``OUT/ref_logps.pt`` when it holds them for this data and
    model, else computed once (one forward pass over the data) and cached there."""
    cfg, accelerator = run.cfg, run.accelerator
    ref_model, ref_name, context = _reference_model(run)
    cache = run.out / "ref_logps.pt"
    key = data_key(cfg, run.rows, cfg.model, ref_name)
    cached = _load_reference_cache(cache, key, run.main)
    if cached is None:
        probe_rows = run.examples[: min(4, len(run.examples))]
        with context:
            shared = run.shared if ref_model is run.model else cfg.shared_prompt and \
                shared_prompt_works(ref_model, probe_rows, run.pad_id, accelerator.device,
                                    name=ref_name, quiet=not run.main)
            t0 = time.perf_counter()
            cached = log_prob_table(ref_model, run.examples, run.pad_id, accelerator.device,
                                    cfg.batch_size, pairs=True, shared=shared,
                                    accelerator=accelerator)
        if run.main:
            save_file_atomic({"key": key, "sums": cached[0], "counts": cached[1]}, cache)
            print(f"reference log-probs of {len(run.examples)} pairs computed in "
                  f"{time.perf_counter() - t0:.1f}s and cached in {cache}", file=sys.stderr)
    del ref_model
    sums, counts = cached
    return sums / counts.clamp(min=1) if cfg.average_logps else sums


def _initial_ref_weights(run: RunState) -> dict:
    """The reference's weights for soft TR-DPO updates (a copy held beside the policy)."""
    cfg = run.cfg
    if (cfg.ref or cfg.model) == cfg.model and run.resume_from is None:
        return {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    from .models import load_model
    return {k: v.to(run.accelerator.device) for k, v in load_model(cfg.ref or cfg.model)
            .state_dict().items()}


def update_reference(run: RunState) -> float:
    """TR-DPO (Gorbatovski et al. 2024): ref <- alpha * pi + (1 - alpha) * ref (alpha = 1: the
    policy itself), then the reference log-probs of the whole data set are recomputed (the cost:
    one forward pass over the data per update). Returns the seconds it took."""
    cfg, accelerator = run.cfg, run.accelerator
    t0 = time.perf_counter()
    policy = accelerator.unwrap_model(run.model)
    if run.ref_weights is None:  # hard update: the reference is the policy
        scorer = policy
    else:
        alpha = cfg.ref_mixup_alpha
        with torch.no_grad():
            for name, value in policy.state_dict().items():
                ref = run.ref_weights[name]
                if ref.is_floating_point():
                    ref.mul_(1 - alpha).add_(value.detach().to(ref.dtype), alpha=alpha)
        scorer = copy.deepcopy(policy)
        scorer.load_state_dict(run.ref_weights)
    sums, counts = log_prob_table(scorer, run.examples, run.pad_id, accelerator.device,
                                  cfg.batch_size, pairs=True, shared=run.shared,
                                  accelerator=accelerator)
    run.ref = sums / counts.clamp(min=1) if cfg.average_logps else sums
    return time.perf_counter() - t0


def batch_indices(run: RunState, step: int) -> list[int]:
    """This process's rows of optimizer step ``step`` (0-based): a pure function of (seed,
    epoch), cut into equal per-process slices."""
    cfg = run.cfg
    epoch, pos = divmod(step, run.steps_per_epoch)
    order = torch.randperm(len(run.examples), generator=torch.Generator().manual_seed(
        cfg.seed * 100003 + epoch))
    global_idx = order[pos * run.global_batch: (pos + 1) * run.global_batch]
    per_process = cfg.batch_size * cfg.grad_accum
    rank = run.accelerator.process_index
    return global_idx[rank * per_process: (rank + 1) * per_process].tolist()


def micro_batch_loss(run: RunState, micro: list, idx: list[int], stats: dict) -> torch.Tensor:
    """The loss of one micro-batch (SFT: mean token NLL; DAA: the objective's mean over pairs);
    adds its metrics to ``stats`` (TRL's names in docs/llm.md)."""
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    stats["tokens"] = stats.get("tokens", 0.0) + sum(
        len(e.prompt_ids) * len(e.completions) + sum(map(len, e.completions)) for e in micro)
    if cfg.phase == "sft":
        batch = {k: v.to(accelerator.device) for k, v in collate_sft(micro, run.pad_id).items()}
        with accelerator.autocast():
            logps, n_tok = sequence_log_probs(model, batch)
        return -logps.sum() / n_tok.sum().clamp(min=1)
    with accelerator.autocast():
        logps, n_tok = pair_log_probs(model, micro, run.pad_id, accelerator.device,
                                      shared=run.shared, average=cfg.average_logps)
    pi_w, pi_l = logps[:, 0], logps[:, 1]  # [B] each
    ref = run.ref[idx].to(accelerator.device)
    ref_w, ref_l = ref[:, 0], ref[:, 1]
    losses = preference_loss(pi_w, pi_l, ref_w, ref_l, beta=cfg.beta, loss=run.objective,
                             chosen_lengths=n_tok[:, 0], rejected_lengths=n_tok[:, 1])
    with torch.no_grad():
        r_w, r_l = cfg.beta * (pi_w - ref_w), cfg.beta * (pi_l - ref_l)  # implicit rewards
        for name, v in (("reward_chosen", r_w), ("reward_rejected", r_l),
                        ("reward_accuracy", (r_w > r_l).float()), ("reward_margin", r_w - r_l),
                        ("logp_chosen", pi_w), ("logp_rejected", pi_l)):
            stats[name] = stats.get(name, 0.0) + float(v.float().mean())
    return losses.mean()


def last_saved(out: Path) -> str:
    done = checkpoints(out)
    return f"the last checkpoint is {done[-1]}" if done else "no checkpoint was written"


def train_step(run: RunState) -> dict:
    """One optimizer step (``grad_accum`` micro-batches, gradients averaged over processes).

    Returns the step's metrics: loss (and DAA rewards, log-probs), ``lr`` (the rate this step
    used), ``grad_norm`` (before clipping), ``tokens``. Raises TrainingDiverged, before touching
    the weights, when the loss is NaN/inf.
    """
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    world = accelerator.num_processes
    local_idx = batch_indices(run, run.step)
    stats = {"loss": 0.0}
    for a in range(cfg.grad_accum):
        idx = local_idx[a * cfg.batch_size: (a + 1) * cfg.batch_size]
        last = a == cfg.grad_accum - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss = micro_batch_loss(run, [run.examples[i] for i in idx], idx, stats)
            accelerator.backward(loss / cfg.grad_accum)
        stats["loss"] += float(loss.detach())

    # average micro-batch means over accumulation, then over processes (before the update:
    # every process must see a NaN loss and stop together, with the weights untouched)
    keys = sorted(stats)
    vec = torch.tensor([stats[k] for k in keys], device=accelerator.device)
    if world > 1:
        vec = accelerator.reduce(vec, reduction="sum")
    values = {k: float(v) for k, v in zip(keys, vec)}
    if not math.isfinite(values["loss"]):
        raise TrainingDiverged(
            f"{cfg.phase} step {run.step + 1}: the loss became NaN/inf (learning rate too high?); "
            f"stopped before updating the weights; {last_saved(run.out)}")
    values["lr"] = run.scheduler.get_last_lr()[0]  # the rate of the step about to be taken
    # the norm before clipping (an infinite limit only measures it); under fp16 unscaled first
    norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
    values["grad_norm"] = float(norm) if norm is not None else float("nan")
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    for k in keys:
        if k != "tokens":
            values[k] /= cfg.grad_accum * world
    return values


def trainer_state(run: RunState) -> dict:
    """What a checkpoint needs to continue bit for bit (a collective under FSDP)."""
    accelerator = run.accelerator
    state = {"optimizer": optimizer_state(accelerator, run.model, run.optimizer),
             "scheduler": run.scheduler.state_dict(), "step": run.step, "rng": rng_state(),
             "config": run.cfg.to_dict(),
             "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None}
    if run.cfg.ref_sync_steps and run.ref is not None:
        state["ref_table"] = run.ref
        state["ref_weights"] = run.ref_weights
    return state


def save_checkpoint(run: RunState, path: Path) -> None:
    """Write ``path`` (a checkpoint or ``final/``) all at once. A write failure (full disk,
    quota, permissions) is one UserError: the partial folder is removed and the last good
    checkpoint stays as it was. Then, with ``save_total_limit``, the oldest checkpoints go."""
    state = trainer_state(run)
    try:
        _save(run.accelerator, run.model, run.tokenizer, path, state)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
        raise UserError(f"cannot write {path}: {reason}; {last_saved(run.out)} (intact); free "
                        f"space and continue with --resume --out {run.out}") from None
    limit = run.cfg.save_total_limit
    if limit and run.main:
        for old in checkpoints(run.out)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


def metrics_row(run: RunState, sums: dict, n_steps: int, tokens: float, seconds: float,
                t_start: float, cpu_start: float) -> dict:
    """One ``metrics.csv`` row: means of the last ``n_steps`` steps' metrics (tokens summed)."""
    row = {"step": run.step, "epoch": round(run.step / run.steps_per_epoch, 4)}
    row.update({k: (v if k == "tokens" else v / n_steps) for k, v in sums.items()})
    row["tokens_per_s"] = tokens / max(seconds, 1e-9)
    row["time_s"] = time.perf_counter() - t_start  # wall time in this invocation
    row["cpu_s"] = time.process_time() - cpu_start  # CPU time (all threads) of this process
    if run.cfg.phase == "daa":
        row["objective"] = loss_spec(run.cfg.loss)
    return row


def write_config(run: RunState) -> None:
    """``config.json``: every setting, what was derived (batches, steps, precision) and, for a
    user objective, the file it came from (path and SHA-256)."""
    cfg, accelerator = run.cfg, run.accelerator
    config = cfg.to_dict() | {
        "world_size": accelerator.num_processes, "global_batch": run.global_batch,
        "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps,
        "save_every": run.save_every, "rows": asdict(run.stats), "data_source": run.label,
        "shared_prompt_used": run.shared,
        "distributed": str(accelerator.distributed_type).split(".")[-1],
        "precision_used": run.precision, "device_used": run.device}
    if cfg.phase == "daa":
        config["loss_source"] = objective_source(cfg.loss)
    write_json(config, run.out / "config.json")


def train(cfg: LLMConfig) -> LLMRun:
    """Run SFT or DAA as ``cfg`` says; see the module docstring for what is written."""
    run = prepare_run(cfg)
    if isinstance(run, LLMRun):
        return run
    cfg, out, main = run.cfg, run.out, run.main
    if main:
        write_config(run)
    log = MetricsLog(out / "metrics.csv", keep_until=run.step if run.resume_from else None,
                     report_to=cfg.report_to, config=cfg.to_dict()) if main else None
    from tqdm.auto import tqdm
    bar = tqdm(total=run.total_steps, initial=run.step, disable=not (main and cfg.progress),
               desc=cfg.phase if cfg.phase == "sft" else f"{cfg.loss} beta={cfg.beta:g}",
               file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    stop_at = min(run.total_steps, run.step + cfg.stop_after) if cfg.stop_after \
        else run.total_steps
    t_start = t_last = time.perf_counter()
    cpu_start = time.process_time()
    sums: dict[str, float] = {}
    try:
        while run.step < stop_at:
            values = train_step(run)
            if cfg.phase == "daa" and cfg.ref_sync_steps and run.step % cfg.ref_sync_steps == 0:
                values["ref_update_s"] = update_reference(run)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == stop_at:
                now = time.perf_counter()
                n_logged = cfg.log_every if run.step % cfg.log_every == 0 \
                    else run.step % cfg.log_every
                row = metrics_row(run, sums, n_logged, sums.get("tokens", 0.0), now - t_last,
                                  t_start, cpu_start)
                sums, t_last = {}, now
                if main:
                    log.add(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}",
                                    tok_s=f"{row['tokens_per_s']:.0f}")
            if (run.step % run.save_every == 0 or run.step == stop_at) \
                    and run.step < run.total_steps:
                save_checkpoint(run, out / f"checkpoint-{run.step}")
        finished = run.step >= run.total_steps
        if finished:
            save_checkpoint(run, out / "final")
    finally:
        bar.close()
        if log is not None:
            log.close()
    return LLMRun(out=out, steps=run.step, total_steps=run.total_steps, finished=finished,
                  metrics=log.rows if log else [])


CONFIG_FIELDS = [f.name for f in fields(LLMConfig)]


def __getattr__(name: str):
    """The old names, kept for one release: ``TrainConfig`` is :class:`LLMConfig`, ``RunResult``
    :class:`LLMRun` (they clashed with the toy track's ``treemdp.training`` classes)."""
    new = {"TrainConfig": "LLMConfig", "RunResult": "LLMRun"}.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"treemdp.llm.train.{name} is deprecated; use {new}", DeprecationWarning,
                  stacklevel=2)
    return globals()[new]
