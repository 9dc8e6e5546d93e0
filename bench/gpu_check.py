"""The GPU check's measurements (run by `bench/gpu_check.sh`; prints one table).

Rows: the embedded default separating 60 s at fp32, bf16 and fp16 (wall time, real-time factor,
each stem's SNR against CPU fp32); the KJ Mel-RoFormer forward at batch 4 x 8 s in fp32 and bf16
(seconds per audio second, peak GPU memory, whether SDPA's flash kernel accepts the attention);
20 AMP training steps in bf16 and in fp16 with a GradScaler; `sepcli train` stopped and resumed
against an uninterrupted run. `--reduced` runs the same code on a tiny model and short audio, so
a test can run it on the CPU and keep it from rotting.

    python bench/gpu_check.py --device cuda [--tests "N passed"] [--reduced]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.models import KJ  # noqa: E402

TINY = dict(dim=16, depth=1, num_stems=4, sources=["vocals", "drums", "bass", "other"],
            time_transformer_depth=1, freq_transformer_depth=1, num_bands=8, dim_head=8, heads=2,
            mask_estimator_depth=1, mlp_expansion_factor=1, stft_hop_length=512, segment=44100)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 1e9:.2f}" if device.type == "cuda" else "-"


def precisions(device: torch.device) -> list[str]:
    return ["fp32", "bf16"] + (["fp16"] if device.type != "cpu" else [])


def separation_rows(device: torch.device, reduced: bool) -> list[list[str]]:
    """The default model (a tiny one when reduced) on 60 s (2 s), against CPU fp32."""
    from sepcli import checkpoints
    from sepcli.engine import Demixer
    from sepcli.example import example_song

    seconds = 2.0 if reduced else 60.0
    mix = np.ascontiguousarray(example_song(seconds).T)
    if reduced:
        torch.manual_seed(0)
        model = checkpoints.build_model("mel-roformer", TINY)
        inference = {"segment": 44100, "overlap": 0.5}
    else:
        loaded = checkpoints.load_model("default")
        model, inference = loaded.model, loaded.inference
    settings = dict(segment=inference.get("segment"), overlap=inference.get("overlap", 0.25))
    reference = Demixer(model, device="cpu", precision="fp32", **settings).separate(mix)
    rows = []
    for precision in precisions(device):
        demixer = Demixer(model, device=device, precision=precision, **settings)
        demixer.separate(mix[:, :44100])  # warm-up: kernels, cuDNN autotuning
        sync(device)
        start = time.perf_counter()
        estimate = demixer.separate(mix)
        sync(device)
        wall = time.perf_counter() - start
        snrs = [
            10 * np.log10(np.sum(r**2) / max(np.sum((r - e) ** 2), 1e-20))
            for r, e in zip(reference, estimate)
        ]
        stems = " ".join(f"{s[:3]} {v:.1f}" for s, v in zip(model.sources, snrs))
        rows.append([f"separate {seconds:g} s ({'tiny' if reduced else 'default'})", precision,
                     f"{wall:.2f} s, {seconds / wall:.1f}x real time", peak_gb(device),
                     f"SNR vs CPU fp32 (dB): {stems}"])  # fmt: skip
        model.to("cpu")
    return rows


def flash_accepted(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> str:
    """Whether SDPA runs the model's attention with the flash kernel alone (bf16 on CUDA)."""
    if device.type != "cuda":
        return "n/a (CPU)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with torch.inference_mode(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(x)
        return "yes"
    except RuntimeError as err:
        return f"no ({str(err).splitlines()[0][:60]})"


def forward_rows(device: torch.device, reduced: bool) -> list[list[str]]:
    from sepcli import checkpoints
    from sepcli.engine import autocast_for

    config = TINY if reduced else {**KJ, "segment": 8 * 44100}
    seconds, batch = (1.0, 2) if reduced else (8.0, 4)
    torch.manual_seed(0)
    model = checkpoints.build_model("mel-roformer", config).eval().to(device)
    x = (torch.randn(batch, 2, int(seconds * 44100)) * 0.1).to(device)
    rows = []
    for precision in ("fp32", "bf16"):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode(), autocast_for(device, precision):
            model(x)
            sync(device)
            start = time.perf_counter()
            repeats = 1 if reduced else 3
            for _ in range(repeats):
                model(x)
            sync(device)
        per_second = (time.perf_counter() - start) / repeats / (seconds * batch)
        flash = flash_accepted(model, x, device) if precision == "bf16" else ""
        rows.append([f"KJ forward, batch {batch} x {seconds:g} s" if not reduced else
                     f"tiny forward, batch {batch} x {seconds:g} s", precision,
                     f"{per_second:.4f} s per audio s", peak_gb(device),
                     f"flash kernel: {flash}" if flash else ""])  # fmt: skip
    return rows


def training_rows(device: torch.device, reduced: bool) -> list[list[str]]:
    """20 AMP steps (2 when reduced) on random data: finite losses, time per step, loss scale."""
    from sepcli import checkpoints
    from sepcli.engine import autocast_for, resolve_precision

    rows = []
    steps = 2 if reduced else 20
    for precision in precisions(device)[1:]:
        torch.manual_seed(0)
        config = (
            TINY
            if reduced
            else checkpoints.read_metadata(checkpoints.default_checkpoint())["config"]
        )
        model = checkpoints.build_model("mel-roformer", config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type,
                                      enabled=resolve_precision(device, precision) == "fp16")  # fmt: skip
        losses, start = [], None
        for step in range(steps + 1):
            if step == 1:
                sync(device)
                start = time.perf_counter()
            mix = torch.randn(4, 2, 44100 * (1 if reduced else 3), device=device) * 0.1
            targets = torch.stack([mix * g for g in (0.4, 0.3, 0.2, 0.1)], 1)
            optimizer.zero_grad(set_to_none=True)
            with autocast_for(device, precision):
                loss = model.loss(mix, targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.detach())
        sync(device)
        per_step = (time.perf_counter() - start) / steps
        finite = bool(torch.isfinite(torch.stack(losses)).all())
        scale = f", loss scale {scaler.get_scale():.0f}" if scaler.is_enabled() else ""
        rows.append([f"{steps} training steps", precision, f"{per_step:.3f} s per step",
                     peak_gb(device), f"losses finite: {finite}{scale}"])  # fmt: skip
    return rows


def resume_rows(device: torch.device, reduced: bool) -> list[list[str]]:
    """`sepcli train` for 6 steps straight, and 3 + `--resume` 3, on a generated MUSDB."""
    from sepcli.train import TrainSettings, train
    from tests.test_train import TINY as TRAIN_TINY
    from tests.test_train import make_wav_musdb

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_wav_musdb(root / "db")
        settings = TrainSettings(steps=6, batch_size=2, segment=0.5, lr=3e-3, warmup=2,
                                 valid_every=3, ema=0.9, seed=3)  # fmt: skip
        common = dict(is_wav=True, device_name=str(device), progress=False, log=lambda m: None)
        start = time.perf_counter()
        train("mel-roformer", root / "db", root / "a", TRAIN_TINY, settings, **common)
        train("mel-roformer", root / "db", root / "b", TRAIN_TINY, settings, stop_after=3, **common)
        train("mel-roformer", root / "db", root / "b", TRAIN_TINY, settings, resume=True, **common)
        wall = time.perf_counter() - start
        a = torch.load(root / "a" / "state.pt", weights_only=True, map_location="cpu")
        b = torch.load(root / "b" / "state.pt", weights_only=True, map_location="cpu")
        diff = max(float((a["model"][k].float() - b["model"][k].float()).abs().max())
                   for k in a["model"])  # fmt: skip
    verdict = "bitwise equal" if diff == 0 else f"max weight difference {diff:.2e}"
    return [["train 6 steps vs 3 + --resume 3", "auto", f"{wall:.1f} s", peak_gb(device), verdict]]


@contextlib.contextmanager
def section(name: str, rows: list[list[str]]):
    """A failing part becomes a row saying so; the rest of the check still runs."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - a report, not a program
        rows.append([name, "", "FAILED", "", f"{type(err).__name__}: {str(err)[:90]}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tests", default="not run", help="the device tests' result line")
    parser.add_argument("--reduced", action="store_true")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows: list[list[str]] = [["device tests (pytest)", "", args.tests, "", ""]]
    for label, part in (("separate", separation_rows), ("forward", forward_rows),
                        ("training", training_rows), ("resume", resume_rows)):  # fmt: skip
        with section(label, rows):
            rows.extend(part(device, args.reduced))
    table = Table(title=f"sepcli GPU check on {name}, torch {torch.__version__}")
    for column in ("check", "precision", "time", "peak GPU GB", "result"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=170, markup=False).print(table)
    if any(row[2] == "FAILED" for row in rows) or "failed" in args.tests:
        sys.exit(1)


if __name__ == "__main__":
    main()
