"""`sepcli train`: train any registered separator on MUSDB with remixing, EMA and exact resume.

The loop is plain AdamW with warm-up + cosine (or constant) learning rate, gradient clipping and
accumulation, an exponential moving average of the weights, and AMP on CUDA. Every `valid_every`
steps the EMA weights separate the whole validation tracks through the real engine and are scored
with global SDR; `best.safetensors` and `last.safetensors` hold EMA weights with provenance.
`state.pt` holds everything `--resume` needs to continue bit for bit: model, optimizer, schedule,
EMA, RNG states and step. Under `torchrun` the same command trains with DDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from eval.metrics import global_sdr
from models.base import Separator, typed_fields
from sepcli import checkpoints
from sepcli.allocator import keep_freed_memory
from sepcli.data import RemixDataset
from sepcli.datasets import (
    ATOMS,
    TARGET_ATOMS,
    DataError,
    DataSpec,
    Track,
    describe,
    load_tracks,
    target_groups,
)
from sepcli.engine import (
    Demixer,
    autocast_for,
    resolve_device,
    resolve_precision,
    use_fast_cuda_kernels,
)
from sepcli.files import atomic_write, not_a_regular_file
from sepcli.messages import one_line
from sepcli.losses import framewise_sdr_loss, grouped

LOSSES = ("model", "sdr")
# Far above any real run; a typo past them would allocate terabytes before the first step.
TRAIN_CEILINGS = {"segment": 60.0, "batch_size": 4096, "accumulate": 4096, "steps": 10**9,
                  "valid_every": 10**9}  # fmt: skip


@dataclasses.dataclass
class TrainSettings:
    """Training hyper-parameters; a preset's `training:` section and CLI flags fill them in."""

    steps: int = 2000
    batch_size: int = 8
    segment: float = 3.0  # seconds
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: int = 100
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float = 5.0
    ema: float = 0.999
    accumulate: int = 1
    valid_every: int = 250
    silence_threshold: float | None = None
    coherent: float = 0.0  # fraction of real (unremixed) mixes; see RemixDataset
    speed: float = 0.0  # largest relative speed (tempo and pitch) change; see RemixDataset
    mixup: float = 0.0  # chance a stem is the sum of two tracks' segments; see RemixDataset
    # For a final model: the valid tracks join the training data. Validation still scores
    # them, so it reads high and only tracks progress; judge the result on the test split.
    train_on_valid: bool = False
    seed: int = 0
    precision: str = "auto"
    threads: int | None = None
    loss: str = "model"  # model (the separator's own objective) | sdr (framewise SDR)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss '{self.loss}' (have: {', '.join(LOSSES)})")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule '{self.schedule}' (use cosine or constant)")
        for name in ("steps", "batch_size", "accumulate", "valid_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("segment", "lr", "grad_clip"):
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name, high in TRAIN_CEILINGS.items():
            if getattr(self, name) > high:
                raise ValueError(f"{name} must be at most {high}, got {getattr(self, name)}")
        if self.warmup < 0 or self.weight_decay < 0:
            raise ValueError("warmup and weight_decay cannot be negative")
        if not 0 <= self.coherent <= 1:
            raise ValueError(f"coherent must be in [0, 1], got {self.coherent}")
        if not 0 <= self.speed < 1:
            raise ValueError(f"speed must be in [0, 1), got {self.speed}")
        if not 0 <= self.mixup <= 1:
            raise ValueError(f"mixup must be in [0, 1], got {self.mixup}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainSettings":
        return cls(**typed_fields(cls, values, "training key"))


def load_preset(architecture: str, preset: str | Path | None) -> dict[str, Any]:
    """A preset by name (`small`, `medium`, ...) or YAML path: `{"model": ..., "training": ...}`.

    A community RoFormer YAML (with `audio`/`inference` sections, like the `kj`, `msst` and
    `viperx` presets) works too: its model section and stems become the model config, and the training
    keys sepcli shares with it (batch size, lr, accumulation, clipping, EMA) the settings.
    """
    checkpoints.check_architecture(architecture)
    if preset is None:
        preset = "small"
    path = checkpoints.preset_path(preset, architecture, f"preset '{preset}' for {architecture}")
    data = checkpoints.read_yaml(path)
    if "audio" in data or "inference" in data:
        return _community_preset(path, data, architecture)
    return {"model": dict(data.get("model") or {}), "training": dict(data.get("training") or {}),
            "data": data_specs(data.get("data"))}  # fmt: skip


def data_specs(entries: Any) -> list[DataSpec]:
    """A YAML `data:` list: entries `{kind, root, weight, valid, exclude}` or `KIND:ROOT[:W]`."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise DataError("the YAML 'data' section must be a list of datasets")
    return [DataSpec.from_dict(entry) for entry in entries]


COMMUNITY_TRAINING_KEYS = {
    "batch_size": "batch_size",
    "lr": "lr",
    "gradient_accumulation_steps": "accumulate",
    "grad_clip": "grad_clip",
    "ema_momentum": "ema",
}


def _community_preset(path: Path, data: dict[str, Any], architecture: str) -> dict[str, Any]:
    family, config, _ = checkpoints.community_config(path)
    if family != architecture:
        raise checkpoints.CheckpointError(
            f"{path} is a {family} config; train it with 'sepcli train {family}'"
        )
    section = data.get("training") or {}
    training = {ours: section[theirs] for theirs, ours in COMMUNITY_TRAINING_KEYS.items()
                if section.get(theirs)}  # fmt: skip
    chunk = (data.get("audio") or {}).get("chunk_size")
    if chunk:
        training["segment"] = float(chunk) / config.sample_rate
    return {"model": config.to_dict(), "training": training, "data": []}


RUN_FILES = ("state.pt", "best.safetensors", "last.safetensors", "metrics.jsonl")


def _refuse_to_overwrite_a_run(out: Path) -> None:
    """A fresh run in another run's folder would replace its best checkpoint at the first
    validation (its best score starts again from nothing) and mix the two metric logs."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise ValueError(
            f"{out} already holds a training run ({', '.join(found)}); continue it with "
            "--resume, or give a new --out"
        )


def _refuse_a_file_in_the_way(out: Path) -> None:
    """A file at --out, or at a folder above it, would only fail at the first cache write."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"--out {out}: {path} is a file, not a folder")
            return


def lr_factor(step: int, settings: TrainSettings) -> float:
    if settings.warmup and step < settings.warmup:
        return (step + 1) / settings.warmup
    if settings.schedule == "constant":
        return 1.0
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def track_scores(demixer: Demixer, tracks: list[Track | np.ndarray]) -> list[dict[str, float]]:
    """Global SDR of `demixer` on each whole track, per target group (see `group_scores`).
    A track is a `Track`, or stems [4, C, T] (vocals, drums, bass, other)."""
    return [group_scores(demixer, _as_track(t)) for t in tracks]


def _as_track(track: Track | np.ndarray) -> Track:
    if isinstance(track, Track):
        return track
    targets = {atom: track[i] for i, atom in enumerate(ATOMS)}
    return Track("track", "musdb", targets, {a: TARGET_ATOMS[a] for a in ATOMS}, 22050.0)


def group_scores(demixer: Demixer, track: Track) -> dict[str, float]:
    """Separate the sum of a track's targets; the global SDR of each group of targets that the
    model's sources cover, named after its source (`accompaniment` for drums + bass + other)."""
    channels = demixer.model.audio_channels
    names = list(track.targets)
    parts = [_channels(np.asarray(track.targets[n], np.float32), channels) for n in names]
    mix = np.sum(parts, axis=0)
    estimate = demixer.separate(mix)
    scores = {}
    for target_ids, source_ids in target_groups([track.atoms[n] for n in names], demixer.sources):
        reference = np.sum([parts[t] for t in target_ids], axis=0)
        scores[group_name(demixer.sources, source_ids)] = global_sdr(
            reference, np.sum([estimate[s] for s in source_ids], axis=0)
        )
    return scores


def group_name(sources: tuple[str, ...], ids: list[int]) -> str:
    if len(ids) == 1:
        return sources[ids[0]]
    atoms = frozenset().union(*(TARGET_ATOMS.get(sources[i], frozenset()) for i in ids))
    return (
        "accompaniment"
        if atoms == TARGET_ATOMS["accompaniment"]
        else "+".join(sources[i] for i in ids)
    )


def _channels(audio: np.ndarray, channels: int) -> np.ndarray:
    if audio.shape[0] == channels:
        return audio
    return (
        np.repeat(audio, channels, axis=0) if audio.shape[0] == 1 else audio.mean(0, keepdims=True)
    )


def mean_scores(per_track: list[dict[str, float]]) -> dict[str, float]:
    """Mean per group name over the tracks that have it."""
    names = list(dict.fromkeys(name for scores in per_track for name in scores))
    return {n: float(np.mean([s[n] for s in per_track if n in s])) for n in names}


def score_tracks(demixer: Demixer, tracks: list[Track | np.ndarray]) -> dict[str, float]:
    """Mean global SDR per group of `demixer` over whole tracks (see `track_scores`)."""
    return mean_scores(track_scores(demixer, tracks))


class EMA:
    """Exponential moving average of a model's floating-point state."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Warm-up as in TensorFlow's EMA (num_updates): with a fixed 0.995 the average is still
        # 37 % random init at step 200, so early validation (and `best`) would judge the init.
        decay = min(self.decay, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                self.state[key].lerp_(value.detach(), 1 - decay)
            else:
                self.state[key].copy_(value)


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def train(
    architecture: str,
    data_specs: list[DataSpec] | Path,
    out: Path,
    model_config: dict[str, Any],
    settings: TrainSettings,
    is_wav: bool = False,
    device_name: str = "auto",
    resume: bool = False,
    init: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    stop_after: int | None = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Train and return the final summary (steps, best validation SDR, paths).

    `data_specs` are the datasets (a bare path is a MUSDB root, with `is_wav`). `stop_after`
    ends the run early at that step, as an interruption would (state is saved and `--resume`
    continues); Ctrl-C does the same. `cache` holds the decoded datasets (default OUT/cache);
    runs that share one decode each dataset once.
    """
    if not isinstance(data_specs, list):
        data_specs = [DataSpec("musdb", Path(data_specs), is_wav=is_wav)]
    out = Path(out)
    _refuse_a_file_in_the_way(out)
    if not resume:
        _refuse_to_overwrite_a_run(out)
    # A state that cannot be resumed is refused before minutes of data loading.
    saved = read_state(out / "state.pt", architecture) if resume else None
    proc = _Process.start(device_name, settings)
    model = _build_model(architecture, model_config, init, settings, proc.device)
    segment = int(round(settings.segment * model.sample_rate))
    # The run folder is made once the data has loaded, so a wrong --musdb leaves nothing behind.
    data, valid_tracks, data_note = _training_data(data_specs, cache or out / "cache", model,
                                                   segment, settings)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(model, architecture, settings, proc, out)
    if saved is not None:
        run.restore(saved)
        log(f"resumed from step {run.step}")
    provenance = {"data": data_note, "seed": settings.seed, "world_size": proc.world,
                  "training": dataclasses.asdict(settings)}  # fmt: skip
    end = min(settings.steps, stop_after or settings.steps)
    batches = _Prefetcher(data, run.rng, settings, proc.device)
    bar = _progress_bar(progress and proc.main, settings.steps, run.step)
    metrics = _MetricsLog(out / "metrics.jsonl") if proc.main else None
    start_step, last_valid = run.step, ""
    try:
        while run.step < end:
            record = run.optimizer_step(batches)
            if run.step % settings.valid_every == 0 or run.step == settings.steps:
                scores = run.validate(valid_tracks)
                record.update(
                    valid_sdr=scores, valid_sdr_mean=float(np.mean(list(scores.values())))
                )
                run.save(provenance, scores)
                last_valid = " ".join(f"{k[:3]} {v:.2f}" for k, v in scores.items())
            if metrics is not None:
                metrics.append(record)
            if bar is not None:
                bar.update(run.step, record, last_valid)
    finally:
        batches.close()
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
        # Also on Ctrl-C, so --resume continues from the last finished step; nothing when no step
        # finished (a fresh run that failed at once is no run to resume).
        if run.step > start_step:
            run.save_state()
    if proc.main and (out / "metrics.jsonl").exists():
        plot_curves(out / "metrics.jsonl", out / "curves.png")
    proc.finish(run)
    return {"steps": run.step, "best_valid_sdr": run.best, "out": str(out)}


@dataclasses.dataclass
class _Process:
    """This process's place in the run: its device, and its rank when under torchrun (DDP)."""

    device: torch.device
    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def start(cls, device_name: str, settings: TrainSettings) -> "_Process":
        device = resolve_device(device_name)
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        owns_group = distributed and not dist.is_initialized()
        if owns_group:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(device)
        if device.type == "cpu":
            keep_freed_memory()
        if settings.threads:
            torch.set_num_threads(settings.threads)
        use_fast_cuda_kernels(device, settings.precision)
        if dist.is_initialized():
            return cls(device, dist.get_rank(), dist.get_world_size(), owns_group)
        return cls(device)

    def finish(self, run: "_Run") -> None:
        if self.owns_group:
            # Gloo's threads may still hold the DDP reducer's work; left to interpreter shutdown
            # it aborts the process now and then ("terminate called without an active
            # exception", torch 2.13) after a finished run. Free it while Python is still whole.
            dist.barrier()
            run.compute_loss = None
            gc.collect()
            dist.destroy_process_group()


def _build_model(
    architecture: str,
    config: dict[str, Any],
    init: Path | None,
    settings: TrainSettings,
    device: torch.device,
) -> Separator:
    torch.manual_seed(settings.seed)
    model = checkpoints.build_model(architecture, config).to(device)
    if init is not None:
        loaded = checkpoints.load_model(str(init))
        checkpoints.load_init(model, loaded.model, str(init))
    if settings.loss == "sdr" and not model.differentiable_output:
        raise ValueError(f"--loss sdr cannot train {architecture}: its output is thresholded")
    return model


def _training_data(
    specs: list[DataSpec],
    cache: Path,
    model: Separator,
    segment: int,
    settings: TrainSettings,
) -> tuple[RemixDataset, list[Track], str]:
    """The remixing dataset, the whole validation tracks and a line describing the data."""
    rate = model.sample_rate
    train_tracks: dict[str, list[Track]] = {}
    valid_tracks: list[Track] = []
    for spec in specs:
        found = load_tracks(spec, "train", rate, cache)
        held = load_tracks(spec, "valid", rate, cache)
        if not found and not held:
            raise DataError(f"{spec.label}: no tracks in {spec.root}")
        train_tracks[spec.label] = found + (held if settings.train_on_valid else [])
        valid_tracks += held
    if not valid_tracks:
        raise DataError(
            "no validation tracks: give a MUSDB root (its valid split) or a stem folder with "
            "'valid' patterns in the YAML data list"
        )
    pools = {spec.label: (spec.weight, train_tracks[spec.label]) for spec in specs}
    data = RemixDataset(pools, segment, model.sources, settings.silence_threshold,
                        coherent=settings.coherent, speed=settings.speed, mixup=settings.mixup,
                        channels=model.audio_channels, rate=rate)  # fmt: skip
    note = (
        describe(specs, train_tracks, rate)
        + (" (valid tracks included)" if settings.train_on_valid else "")
        + f"; validation on {len(valid_tracks)} held-out tracks; remixed"
        + (f" ({settings.coherent:.0%} real mixes)" if settings.coherent else "")
        + (f", speed changed by up to {settings.speed:.0%}" if settings.speed else "")
        + (f", {settings.mixup:.0%} of stems summed from two tracks" if settings.mixup else "")
    )
    return data, valid_tracks, note


class _Run:
    """What one training run updates: the model, its optimizer, schedule, loss scaler and EMA,
    the data RNG, the step and the best validation score; and how it checkpoints them."""

    def __init__(
        self,
        model: Separator,
        architecture: str,
        settings: TrainSettings,
        proc: _Process,
        out: Path,
    ) -> None:
        self.model, self.architecture, self.settings, self.proc, self.out = (
            model, architecture, settings, proc, out
        )  # fmt: skip
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, settings)
        )
        # Loss scaling wherever the run is in fp16, `auto` included (GPUs without native bf16).
        resolved = resolve_precision(proc.device, settings.precision)
        self.scaler = torch.amp.GradScaler(proc.device.type, enabled=resolved == "fp16")
        self.ema = EMA(model, settings.ema)
        self.rng = np.random.default_rng(settings.seed + proc.rank)
        self.numpy_state = self.rng.bit_generator.state  # after the last batch trained on
        self.step, self.best, self.history = 0, -math.inf, {"valid": []}
        self.compute_loss: torch.nn.Module | None = LossForward(model, settings.loss)
        if proc.distributed:
            self.compute_loss = torch.nn.parallel.DistributedDataParallel(self.compute_loss)
        self.started = time.perf_counter()
        model.train()

    def restore(self, state: dict) -> None:
        path = self.out / "state.pt"
        try:
            checkpoints.load_state_strict(self.model, state["model"], str(path))
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.ema.state = {k: v.to(self.proc.device) for k, v in state["ema"].items()}
            self.step, self.best = int(state["step"]), float(state["best"])
            self.history = json.loads(state["history"])
        except (KeyError, ValueError, TypeError, RuntimeError, json.JSONDecodeError) as err:
            raise checkpoints.CheckpointError(
                one_line(
                    f"{path} does not fit this run ({type(err).__name__}: {err}); "
                    "give a new --out to start afresh"
                )
            )
        rank_state = (
            state if self.proc.main else _load_rank_rng(self.out, self.proc.rank, self.step)
        )
        _restore_rng(rank_state, self.rng, self.proc.device)
        self.numpy_state = self.rng.bit_generator.state

    def optimizer_step(self, batches: "_Prefetcher") -> dict[str, Any]:
        """One optimizer step over `accumulate` micro-batches. The loss and gradient norm stay
        on the device (reading them would wait for the GPU every step); `_MetricsLog` reads
        them in bulk."""
        settings, model = self.settings, self.model
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.proc.device)
        for micro in range(settings.accumulate):
            mix, targets, groups, self.numpy_state = batches.next()
            # Under DDP, gradients are all-reduced on the last micro-batch only.
            last = micro == settings.accumulate - 1
            sync = contextlib.nullcontext()
            if self.proc.distributed and not last:
                sync = self.compute_loss.no_sync()
            with sync:
                with autocast_for(self.proc.device, settings.precision):
                    loss = self.compute_loss(mix, targets, groups) / settings.accumulate
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.ema.update(model, self.step)
        self.step += 1
        return {"step": self.step, "loss": total, "grad_norm": grad_norm,
                "lr": self.schedule.get_last_lr()[0]}  # fmt: skip

    def validate(self, tracks: list[Track]) -> dict[str, float]:
        """EMA weights on whole validation tracks, each rank scoring its share."""
        model = _with_state(self.model, self.architecture, self.ema.state, self.proc.device)
        demixer = Demixer(model, overlap=0.25, batch_size=4, device=self.proc.device,
                          precision=self.settings.precision)  # fmt: skip
        mine = track_scores(demixer, tracks[self.proc.rank :: self.proc.world])
        if self.proc.distributed:
            gathered: list[Any] = [None] * self.proc.world
            dist.all_gather_object(gathered, mine)
            mine = [scores for part in gathered for scores in part]
        self.model.train()
        return mean_scores(mine)

    def save(self, provenance: dict[str, Any], scores: dict[str, float]) -> None:
        """Checkpoints after a validation: last, best if it is, and the exact state."""
        mean = float(np.mean(list(scores.values())))
        self.history["valid"].append({"step": self.step, **scores})
        if self.proc.main:
            provenance = {**provenance, "steps": self.step, "valid_global_sdr": scores,
                          "train_seconds": round(time.perf_counter() - self.started, 1)}  # fmt: skip
            for name, wanted in (("last", True), ("best", mean > self.best)):
                if wanted:
                    checkpoints.save_checkpoint(self.out / f"{name}.safetensors", self.model,
                                                provenance, state=self.ema.state)  # fmt: skip
        self.best = max(self.best, mean)
        self.save_state()

    def save_state(self) -> None:
        """`state.pt` (rank 0) or this rank's data RNG (`rng-rank{N}.pt`), for --resume."""
        if self.proc.main:
            _save_state(self.out / "state.pt", self.model, self.optimizer, self.schedule,
                        self.ema, self.numpy_state, self.step, self.best, self.history)  # fmt: skip
        else:
            _save_rank_rng(self.out, self.proc.rank, self.numpy_state, self.step)


class _Prefetcher:
    """Draws the next micro-batches on a worker thread while the model trains on this one,
    in pinned memory for a non-blocking copy to a GPU.

    Each batch comes with the data RNG's state after it was drawn: what `state.pt` must hold
    for --resume to draw the very next batch, however far ahead the worker is.
    """

    def __init__(
        self, data: Any, rng: np.random.Generator, settings: TrainSettings, device: torch.device,
        depth: int = 2,
    ) -> None:  # fmt: skip
        self.device = device
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.worker = threading.Thread(
            target=self._draw, args=(data, rng, settings.batch_size), daemon=True
        )
        self.worker.start()

    def _draw(self, data: Any, rng: np.random.Generator, batch_size: int) -> None:
        try:
            while not self.stop.is_set():
                mix, targets, groups = data.sample(rng, batch_size)
                arrays = [mix, targets]
                # Identity groups (every example has all the model's targets): the plain loss.
                if not (groups == np.eye(groups.shape[-1], dtype=groups.dtype)).all():
                    arrays.append(groups)
                item = [torch.from_numpy(a) for a in arrays]
                if self.device.type == "cuda":
                    item = [t.pin_memory() for t in item]
                self._put((item, rng.bit_generator.state))
        except BaseException as err:  # noqa: BLE001 - handed to the training thread
            self._put(err)

    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        tensors, state = item
        moved = [t.to(self.device, non_blocking=self.device.type == "cuda") for t in tensors]
        groups = moved[2] if len(moved) > 2 else None
        return moved[0], moved[1], groups, state

    def close(self) -> None:
        self.stop.set()
        self.worker.join()


class _MetricsLog:
    """`metrics.jsonl`, one record per step. Records wait in a short list and are read from the
    device together, so the GPU is waited for once per `every` steps instead of every step.
    The file is opened at the first record: a run that fails at once leaves no run files."""

    def __init__(self, path: Path, every: int = 10) -> None:
        self.path, self.every = path, every
        self.pending: list[dict[str, Any]] = []
        self.file = None

    def append(self, record: dict[str, Any]) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.every or "valid_sdr" in record:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.file is None:
            self.file = open(self.path, "a")
        for record in self.pending:
            self.file.write(json.dumps(_plain(record)) + "\n")
        self.file.flush()
        self.pending = []

    def close(self) -> None:
        self.flush()
        if self.file is not None:
            self.file.close()


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its device scalars read as floats."""
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in record.items()}


class LossForward(torch.nn.Module):
    """The training objective as a forward pass: DDP syncs gradients only through its wrapped
    forward, and a separator's loss may call parts of the model other than `forward`."""

    def __init__(self, model: Separator, loss: str = "model") -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(
        self, mix: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of a batch; `groups` [B, S, S] (None: one target per source) sums the
        estimates into the targets that grouped examples have (see RemixDataset)."""
        if groups is None:
            if self.loss == "sdr":
                return framewise_sdr_loss(self.model(mix), targets, frame=self.model.sample_rate)
            return self.model.loss(mix, targets)
        estimate = grouped(self.model(mix), groups)
        rows = groups.sum(dim=-1) > 0
        if self.loss == "sdr":
            return framewise_sdr_loss(estimate, targets, frame=self.model.sample_rate, rows=rows)
        if not hasattr(self.model, "loss_from_estimate"):
            raise ValueError(
                f"{type(self.model).__name__}'s own loss cannot train on grouped targets "
                "(vocals + accompaniment tracks as real mixes): use --loss sdr, or coherent: 0"
            )
        return self.model.loss_from_estimate(estimate, targets, rows)


def _with_state(
    model: Separator, architecture: str, state: dict, device: torch.device
) -> Separator:
    copy = checkpoints.build_model(architecture, model.config.to_dict()).to(device)
    copy.load_state_dict(state)
    return copy.eval()


STATE_KEYS = {"model", "optimizer", "schedule", "ema", "numpy_rng", "torch_rng", "step", "best",
              "history"}  # fmt: skip


def read_state(path: Path, architecture: str) -> dict:
    """`state.pt` for --resume, loaded on the CPU (tensors move to the device as they load),
    or a one-line CheckpointError: missing, truncated, not a state, another architecture's."""
    problem = not_a_regular_file(path)
    if problem == "not found":
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    if problem:
        raise checkpoints.CheckpointError(f"{path}: {problem}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, garbage, refused pickle: all one answer
        raise checkpoints.CheckpointError(
            f"{path} is truncated or not a sepcli training state ({type(err).__name__}); "
            "give a new --out to start afresh"
        )
    if not isinstance(state, dict) or not STATE_KEYS <= set(state):
        raise checkpoints.CheckpointError(f"{path} is not a sepcli training state")
    saved = state.get("architecture", architecture)
    if saved != architecture:
        raise checkpoints.CheckpointError(
            f"{path} is from a {one_line(str(saved), 40)} run, not {architecture}; give a new --out"
        )
    return state


def _save_state(path, model, optimizer, schedule, ema, numpy_state, step, best, history) -> None:
    state = {
        "architecture": checkpoints.architecture_of(model),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "ema": ema.state,
        **_rng_state(numpy_state),
        "step": step,
        "best": best,
        "history": json.dumps(history),
    }
    _save_atomic(state, path)


def _save_atomic(state: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def _rng_state(numpy_state: dict) -> dict:
    """The data and torch RNGs as saved in `state.pt` and in each rank's `rng-rank{N}.pt`: the
    CPU generator, and each CUDA device's where CUDA is in use (dropout draws there)."""
    state = {"numpy_rng": json.dumps(numpy_state), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _restore_rng(state: dict, rng: np.random.Generator, device: torch.device) -> None:
    """Put back what `_rng_state` saved. RNG states are CPU byte tensors whatever the device
    (`set_rng_state` refuses one that a map_location moved to a GPU)."""
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state_all(list(state["cuda_rng"].cpu()))


def _save_rank_rng(out: Path, rank: int, numpy_state: dict, step: int) -> None:
    """Each DDP rank draws its own segments, so each keeps its own RNG for `--resume`."""
    _save_atomic({"step": step, **_rng_state(numpy_state)}, out / f"rng-rank{rank}.pt")


def _load_rank_rng(out: Path, rank: int, step: int) -> dict:
    path = out / f"rng-rank{rank}.pt"
    state = torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None
    if state is None or int(state["step"]) != step:
        raise FileNotFoundError(
            f"cannot resume rank {rank} exactly: {path} is missing or not from step {step}"
        )
    return state


def _progress_bar(enabled: bool, total: int, start: int) -> "_TrainBar | None":
    return _TrainBar(total, start) if enabled else None


class _TrainBar:
    """A rich bar: step, loss, steps/s and the last validation SDR."""

    def __init__(self, total: int, start: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
        )  # fmt: skip
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=start, info="")
        self.t0, self.s0 = time.perf_counter(), start
        self.loss = float("nan")

    def update(self, step: int, record: dict[str, Any], valid: str) -> None:
        # The loss is read from the device every 10th step only: reading it waits for the GPU.
        if step % 10 == 0 or step - self.s0 == 1 or "valid_sdr" in record:
            self.loss = float(record["loss"])
        rate = (step - self.s0) / max(1e-9, time.perf_counter() - self.t0)
        info = f"loss {self.loss:.4f}  {rate:.2f} step/s" + (
            f"  valid SDR {valid}" if valid else ""
        )
        self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        self.progress.stop()


def plot_curves(metrics: Path, png: Path) -> None:
    """Loss (smoothed) and validation SDR against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    ax1.plot(steps, loss, alpha=0.3, label="loss")
    ax1.plot(steps[k - 1 :], smooth, label=f"mean of {k}")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.legend()
    valid = [r for r in rows if "valid_sdr" in r]
    for source in valid[0]["valid_sdr"] if valid else []:
        ax2.plot(
            [r["step"] for r in valid],
            [r["valid_sdr"][source] for r in valid],
            marker="o",
            label=source,
        )
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation global SDR (dB)")
    if valid:
        ax2.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
