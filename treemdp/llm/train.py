"""SFT and DAA training loops for causal LMs (paper §3, App. B), single process or accelerate.

One :class:`TrainConfig` per run, presets for the paper / one GPU / CPU, then :func:`train`.
The DAA step is the toy track's: sequence log-probs of chosen and rejected (one concatenated
forward pass), reference log-probs precomputed once and cached in ``OUT/ref_logps.pt``, and
``treemdp.losses.preference_loss`` (paper eq. 4). Runs write ``config.json``, ``metrics.csv``,
``checkpoint-STEP/`` folders (model, tokenizer, ``trainer_state.pt`` with optimizer, scheduler,
step and RNG) and ``final/``; ``resume=True`` continues from the newest checkpoint.

Data order is a pure function of (seed, epoch): step s of epoch e always sees the same rows, so
a resumed run matches an uninterrupted one. Under ``accelerate launch`` every global batch is cut
into equal per-process slices and gradients are averaged (DDP), so the update equals the single
process one on the same global batch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..errors import UserError
from ..losses import check_beta, get_g, preference_loss
from .data import (PAIR_FIELDS, SFT_FIELDS, collate_pairs, collate_sft, read_jsonl,
                   tokenize_rows)
from .logprobs import sequence_log_probs

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


@dataclass
class TrainConfig:
    """Every setting of one SFT or DAA run (``None`` fields come from the preset)."""
    phase: str = "daa"                 #: "sft" (behaviour cloning) or "daa" (preference loss)
    model: str = ""                    #: policy to start from: hub name or local folder
    ref: str | None = None             #: reference model (DAA); default: the starting policy
    data: str = ""                     #: JSONL file (SFT: prompt/completion; DAA: prompt/chosen/rejected)
    out: str = ""                      #: output folder
    loss: str = "dpo"                  #: DAA loss: dpo | ipo | slic
    beta: float = 0.1                  #: DAA inverse temperature (> 0)
    preset: str = "cpu"                #: paper | gpu | cpu
    optimizer: str | None = None       #: rmsprop | adamw | sgd
    lr: float | None = None            #: peak learning rate
    warmup_steps: int | None = None    #: linear warm-up steps, then constant
    batch_size: int | None = None      #: rows (pairs) per micro-batch per process
    grad_accum: int | None = None      #: micro-batches per optimizer step
    epochs: float | None = None        #: passes over the data (fractions allowed)
    max_steps: int | None = None       #: cap on optimizer steps
    stop_after: int | None = None      #: save and stop once this many steps are done (resume later)
    checkpoints_per_epoch: int | None = None  #: intermediate checkpoints per epoch
    save_every: int | None = None      #: checkpoint every N steps (overrides the above)
    max_length: int | None = None      #: max prompt + completion tokens
    max_prompt_length: int | None = None  #: prompt tokens kept when truncating
    truncation: str = "truncate"       #: truncate | drop rows over max_length
    average_logps: bool = False        #: per-token mean log-probs instead of sums
    max_grad_norm: float | None = None  #: gradient clipping (None: off)
    seed: int = 0                      #: seeds model init noise and the data order
    device: str = "auto"               #: auto | cpu | cuda
    precision: str = "auto"            #: auto (bf16 on a bf16 GPU) | fp32 | bf16
    gradient_checkpointing: bool = False  #: trade compute for activation memory
    resume: bool = False               #: continue from the newest checkpoint in out
    log_every: int = 1                 #: steps between metric rows
    progress: bool = True              #: tqdm progress bar
    threads: int | None = None         #: torch CPU threads (None: torch default)

    def resolved(self) -> "TrainConfig":
        """A copy with preset values filled in and every field validated (UserError if bad)."""
        if self.preset not in PRESETS:
            raise UserError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        values = asdict(self)
        preset = dict(PRESETS[self.preset])
        sft_lr = preset.pop("sft_lr")
        if self.phase == "sft":
            preset["lr"] = sft_lr
        for key, value in preset.items():
            if values[key] is None:
                values[key] = value
        cfg = TrainConfig(**values)
        if cfg.phase not in ("sft", "daa"):
            raise UserError(f"unknown phase {cfg.phase!r}")
        if cfg.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose one of: "
                            f"{', '.join(OPTIMIZERS)}")
        if cfg.phase == "daa":
            try:
                get_g(cfg.loss)
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
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"unknown precision {cfg.precision!r}; choose auto, fp32 or bf16")
        if not cfg.out:
            raise UserError("no output folder (--out)")
        return cfg


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


def data_key(cfg: TrainConfig, tokenizer_name: str, ref_name: str) -> str:
    """Hash of everything the cached reference log-probs depend on."""
    digest = hashlib.sha256(Path(cfg.data).read_bytes())
    for part in (ref_name, tokenizer_name, cfg.max_length, cfg.max_prompt_length, cfg.truncation):
        digest.update(repr(part).encode())
    return digest.hexdigest()


@torch.no_grad()
def compute_logps(model, examples, pad_id: int, device, batch_size: int, *, pairs: bool,
                  accelerator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts for every example, [n, k] each (k = 2 for pairs).

    With an ``accelerator`` of several processes each computes a strided share and the results
    are gathered, so every process ends with the full tables.
    """
    world = accelerator.num_processes if accelerator else 1
    rank = accelerator.process_index if accelerator else 0
    n, k = len(examples), 2 if pairs else 1
    padded = math.ceil(n / world) * world
    mine = list(range(rank, padded, world))
    sums = torch.zeros(len(mine), k, dtype=torch.float32, device=device)
    counts = torch.zeros(len(mine), k, dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    autocast = accelerator.autocast() if accelerator else contextlib.nullcontext()
    with autocast:
        for start in range(0, len(mine), batch_size):
            rows = mine[start: start + batch_size]
            batch_ex = [examples[i % n] for i in rows]
            batch = (collate_pairs if pairs else collate_sft)(batch_ex, pad_id)
            batch = {key: v.to(device) for key, v in batch.items()}
            logps, n_tok = sequence_log_probs(model, batch)
            sums[start: start + len(rows)] = logps.float().view(k, -1).T
            counts[start: start + len(rows)] = n_tok.float().view(k, -1).T
    model.train(was_training)
    if world > 1:
        sums, counts = accelerator.gather(sums), accelerator.gather(counts)
        # gathered rows are [rank0 share, rank1 share, ...]; share r holds r, r + world, ...
        order = torch.arange(padded, device=sums.device).view(-1, world).T.flatten()
        full_s = torch.empty_like(sums)
        full_c = torch.empty_like(counts)
        full_s[order], full_c[order] = sums, counts
        sums, counts = full_s, full_c
    return sums[:n].cpu(), counts[:n].cpu()


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
    """Write a model folder atomically (temp folder, then rename) so a kill leaves no half copy."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = path.with_name("." + path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            torch.save(state, tmp / "trainer_state.pt")
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()


def train(cfg: TrainConfig) -> RunResult:
    """Run SFT or DAA as ``cfg`` says; see the module docstring for what is written."""
    cfg = cfg.resolved()
    from accelerate import Accelerator
    from .models import check_causal, load_model, load_tokenizer, resolve_device
    _quiet_transformers()
    device = resolve_device(cfg.device)
    for name in filter(None, (cfg.model, cfg.ref)):
        check_causal(name)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device == "cuda"
                                       and torch.cuda.is_bf16_supported())
    if bf16 and device == "cpu" and cfg.precision == "bf16":
        pass  # allowed (slow) for experiments
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

    resume_from = checkpoints(out)[-1] if cfg.resume and checkpoints(out) else None
    if cfg.resume and resume_from is None and main:
        print(f"note: no checkpoint in {out}; starting from the beginning", file=sys.stderr)

    tokenizer = load_tokenizer(cfg.model, quiet=not main)
    pad_id = tokenizer.pad_token_id
    kind = "sft" if cfg.phase == "sft" else "pairs"
    rows = read_jsonl(cfg.data, SFT_FIELDS if kind == "sft" else PAIR_FIELDS)
    examples, stats = tokenize_rows(rows, tokenizer, kind=kind, max_length=cfg.max_length,
                                    max_prompt_length=cfg.max_prompt_length,
                                    truncation=cfg.truncation, path=cfg.data)

    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = len(examples) // global_batch
    if steps_per_epoch == 0:
        raise UserError(f"{cfg.data}: {len(examples)} usable rows, fewer than one global batch "
                        f"of {global_batch} (batch size x grad accum x processes)")
    if main:
        print(stats.line(cfg.data), file=sys.stderr)
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

    ref_sums = None
    if cfg.phase == "daa":
        ref_name = cfg.ref or cfg.model
        cache = out / "ref_logps.pt"
        key = data_key(cfg, cfg.model, ref_name)
        cached = torch.load(cache) if cache.is_file() else None
        if cached is not None and cached.get("key") == key:
            ref_sums, ref_counts = cached["sums"], cached["counts"]
        else:
            ref_model = model if (ref_name == cfg.model and resume_from is None) else \
                load_model(ref_name, dtype=dtype).to(accelerator.device)
            t0 = time.perf_counter()
            ref_sums, ref_counts = compute_logps(ref_model, examples, pad_id, accelerator.device,
                                                 2 * cfg.batch_size, pairs=True,
                                                 accelerator=accelerator)
            if ref_model is not model:
                del ref_model
            if main:
                torch.save({"key": key, "sums": ref_sums, "counts": ref_counts}, cache)
                print(f"reference log-probs of {len(examples)} pairs computed in "
                      f"{time.perf_counter() - t0:.1f}s and cached in {cache}", file=sys.stderr)
        if cfg.average_logps:
            ref_sums = ref_sums / ref_counts.clamp(min=1)

    if cfg.gradient_checkpointing:  # transformers 5 renamed it activation_checkpointing_enable
        enable = getattr(model, "activation_checkpointing_enable", None) or \
            model.gradient_checkpointing_enable
        enable()
    model.train()
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    scheduler = warmup_schedule(optimizer, cfg.warmup_steps)
    step = 0
    if resume_from is not None:
        state = torch.load(resume_from / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = state["step"]
        if main:
            print(f"resumed from {resume_from} at step {step}", file=sys.stderr)
    else:
        seed_everything(cfg.seed)
    model, optimizer = accelerator.prepare(model, optimizer)

    if main:
        config = asdict(cfg) | {"world_size": world, "global_batch": global_batch,
                                "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                                "save_every": save_every, "rows": asdict(stats),
                                "precision_used": "bf16" if bf16 else "fp32", "device_used": device}
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    log = MetricsLog(out / "metrics.csv", keep_until=step if resume_from else None) if main else None

    def state_dict(step_done: int) -> dict:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step_done, "rng": rng_state(), "config": asdict(cfg)}

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
            with sync:
                if cfg.phase == "sft":
                    batch = {k: v.to(accelerator.device) for k, v in
                             collate_sft(micro, pad_id).items()}
                    with accelerator.autocast():
                        logps, n_tok = sequence_log_probs(model, batch)
                    loss = -logps.sum() / n_tok.sum().clamp(min=1)  # mean token NLL
                    stats_step["tokens"] += float(batch["attention_mask"].sum())
                else:
                    batch = {k: v.to(accelerator.device) for k, v in
                             collate_pairs(micro, pad_id).items()}
                    with accelerator.autocast():
                        logps, n_tok = sequence_log_probs(model, batch,
                                                          average=cfg.average_logps)
                    pi_w, pi_l = logps.chunk(2)  # [B] each
                    ref = ref_sums[idx].to(accelerator.device)
                    ref_w, ref_l = ref[:, 0], ref[:, 1]
                    losses = preference_loss(pi_w, pi_l, ref_w, ref_l, beta=cfg.beta,
                                             loss=cfg.loss)
                    loss = losses.mean()
                    with torch.no_grad():
                        r_w = cfg.beta * (pi_w - ref_w)
                        r_l = cfg.beta * (pi_l - ref_l)
                        for name, v in (("reward_chosen", r_w), ("reward_rejected", r_l),
                                        ("reward_accuracy", (r_w > r_l).float()),
                                        ("logp_chosen", pi_w), ("logp_rejected", pi_l)):
                            stats_step[name] = stats_step.get(name, 0.0) + float(v.mean())
                    stats_step["tokens"] += float(batch["attention_mask"].sum())
                accelerator.backward(loss / cfg.grad_accum)
            stats_step["loss"] += float(loss.detach())
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        # average micro-batch means over accumulation, then over processes
        keys = sorted(stats_step)
        vec = torch.tensor([stats_step[k] for k in keys], device=accelerator.device)
        if world > 1:
            vec = accelerator.reduce(vec, reduction="sum")
        values = {k: float(v) for k, v in zip(keys, vec)}
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
