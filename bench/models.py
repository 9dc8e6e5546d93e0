"""Forward time per audio second, parameters and peak RSS of the separators (prints a table).

    python bench/models.py            # KJ Mel-RoFormer config, one 8 s chunk, fp32 and bf16 on CPU
    python bench/models.py --quick    # a small config, for a fast look

Each configuration runs in its own process so peak RSS is per model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

KJ = dict(dim=384, depth=6, stereo=True, num_stems=1, time_transformer_depth=1, freq_transformer_depth=1,
          num_bands=60, dim_head=64, heads=8, attn_dropout=0.0, ff_dropout=0.0, stft_hop_length=441,
          mask_estimator_depth=2)  # fmt: skip
QUICK = dict(KJ, dim=128, depth=2)


def measure(config: dict, seconds: float, precision: str, threads: int, repeats: int) -> dict:
    import torch

    from models.mel_roformer import MelRoFormer, MelRoFormerConfig

    torch.set_num_threads(threads)
    model = MelRoFormer(MelRoFormerConfig(**config)).eval()
    x = torch.randn(1, 2, int(seconds * 44100)) * 0.1
    cast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast("cpu", enabled=False)
    )
    with torch.inference_mode(), cast:
        model(x[..., :44100])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return {
        "seconds": min(times),
        "per_audio_second": min(times) / seconds,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(
            json.dumps(measure(spec["config"], 8.0, spec["precision"], args.threads, args.repeats))
        )
        return
    from rich.console import Console
    from rich.table import Table

    config = QUICK if args.quick else KJ
    table = Table(
        title=f"Mel-RoFormer {'quick' if args.quick else 'KJ'} config, one 8 s stereo chunk, {args.threads} CPU threads"
    )
    for column in ("precision", "seconds", "s per audio s", "params (M)", "peak RSS (GB)"):
        table.add_column(column, justify="right")
    for precision in ("fp32", "bf16"):
        spec = json.dumps({"config": config, "precision": precision})
        out = subprocess.run([sys.executable, __file__, "--child", spec, "--threads", str(args.threads),
                              "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        table.add_row(
            precision,
            f"{r['seconds']:.2f}",
            f"{r['per_audio_second']:.3f}",
            f"{r['params_m']:.1f}",
            f"{r['peak_rss_gb']:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
