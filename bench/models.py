"""Forward time per audio second, parameters and peak RSS of the separators (prints a table).

    python bench/models.py            # every row below, CPU, 2 threads
    python bench/models.py --quick    # small RoFormers instead of the viperx and KJ configs

Rows: viperx's BS-RoFormer config and the KJ Mel-RoFormer config on one 8 s chunk in fp32 and bf16 (with the bf16 output's SNR
against fp32 on the same input), the `small` preset that the embedded default grew from, the
embedded default's own config on a batch of 4 chunks of 3 s (as `sepcli separate` runs it), and
the default configs of the complex-mask U-Net and the IBM-CNN. Random weights: speed does not depend on them. Each row runs
in its own process, so peak RSS is per model. On CUDA (when present) the same rows run there too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KJ = {"dim": 384, "depth": 6, "num_stems": 1, "time_transformer_depth": 1,
      "freq_transformer_depth": 1, "num_bands": 60, "dim_head": 64, "heads": 8,
      "attn_dropout": 0.0, "ff_dropout": 0.0, "stft_hop_length": 441, "mask_estimator_depth": 2}  # fmt: skip
QUICK = {**KJ, "dim": 128, "depth": 2}


def rows(quick: bool) -> list[dict]:
    from sepcli.checkpoints import WEIGHTS_DIR, read_metadata
    from sepcli.train import load_preset

    mel = QUICK if quick else KJ
    label = "Mel-RoFormer quick" if quick else "Mel-RoFormer KJ"
    viperx = load_preset("bs-roformer", "viperx")["model"]
    bs = {**viperx, "dim": 128, "depth": 2} if quick else viperx
    bs_label = "BS-RoFormer quick" if quick else "BS-RoFormer viperx"
    return [
        {"label": bs_label, "arch": "bs-roformer", "config": bs, "seconds": 8.0, "precision": "fp32"},
        {"label": bs_label, "arch": "bs-roformer", "config": bs, "seconds": 8.0, "precision": "bf16"},
        {"label": "BS-RoFormer small preset", "arch": "bs-roformer",
         "config": load_preset("bs-roformer", "small")["model"], "seconds": 4.0, "precision": "fp32"},
        {"label": label, "arch": "mel-roformer", "config": mel, "seconds": 8.0, "precision": "fp32"},
        {"label": label, "arch": "mel-roformer", "config": mel, "seconds": 8.0, "precision": "bf16"},
        {"label": "Mel-RoFormer small preset", "arch": "mel-roformer",
         "config": load_preset("mel-roformer", "small")["model"], "seconds": 4.0, "precision": "fp32"},
        {"label": "embedded default, 4 x 3 s", "arch": "mel-roformer",
         "config": read_metadata(WEIGHTS_DIR / "default.safetensors")["config"], "seconds": 3.0,
         "batch": 4, "precision": "fp32"},
        {"label": "complex-mask U-Net", "arch": "complex-mask", "config": {}, "seconds": 2.96,
         "precision": "fp32"},
        {"label": "IBM-CNN", "arch": "ibm-cnn", "config": {}, "seconds": 2.0, "precision": "fp32"},
    ]  # fmt: skip


def peak_rss_kb() -> int:
    """This process's own peak RSS. Not ru_maxrss: after vfork + exec it holds the parent's peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def measure(row: dict, device: str, threads: int, repeats: int) -> dict:
    import torch

    from sepcli import checkpoints
    from sepcli.engine import autocast_for

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = checkpoints.build_model(row["arch"], row["config"]).eval().to(device)
    batch = row.get("batch", 1)
    x = torch.randn(batch, model.audio_channels, int(row["seconds"] * model.sample_rate)) * 0.1
    x = x.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    with torch.inference_mode():
        reference = model(x).float() if row["precision"] != "fp32" else None
        with autocast_for(torch.device(device), row["precision"]):
            model(x)
            times = []
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                out = model(x)
                sync()
                times.append(time.perf_counter() - start)
    # On CUDA the memory that matters is the GPU's: the caching allocator's peak, not host RSS.
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss_kb() * 1000
    result = {
        "seconds": min(times),
        "per_audio_second": min(times) / (row["seconds"] * batch),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_gb": peak / 1e9,
    }
    if reference is not None:
        error = (out.float() - reference).square().sum()
        result["snr_db"] = float(10 * torch.log10(reference.square().sum() / error))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["row"], spec["device"], args.threads, args.repeats)))
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    table = Table(
        title=f"Separator forward passes, batch 1 unless named, {args.threads} CPU threads"
    )
    for column in ("model", "device", "precision", "chunk s", "seconds", "s per audio s",
                   "params (M)", "peak GB (RSS; GPU on cuda)", "bf16 vs fp32 SNR (dB)"):  # fmt: skip
        table.add_column(column, justify="right")
    for device in devices:
        for row in rows(args.quick):
            spec = json.dumps({"row": row, "device": device})
            out = subprocess.run([sys.executable, __file__, "--child", spec, "--threads",
                                  str(args.threads), "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            table.add_row(
                row["label"],
                device,
                row["precision"],
                f"{row['seconds']:.2f}",
                f"{r['seconds']:.2f}",
                f"{r['per_audio_second']:.3f}",
                f"{r['params_m']:.1f}",
                f"{r['peak_gb']:.2f}",
                f"{r['snr_db']:.1f}" if "snr_db" in r else "",
            )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
