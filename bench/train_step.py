"""CPU training-step time of the embedded default's config, by allocator (prints a table).

    python bench/train_step.py                # batch 16 x 2 s, 2 threads, 3 timed steps per row
    python bench/train_step.py --batch 4      # quicker

Each row runs in its own process: `keep_freed_memory` changes glibc's malloc for the whole
process, and peak RSS is per process. "glibc default" maps every block over 32 MB afresh and
unmaps it on free, so each step page-faults its activations back in; the minor faults and the
system CPU time per step show that cost. Random weights and audio: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(keep: bool, batch: int, threads: int, steps: int) -> dict:
    from sepcli.allocator import keep_freed_memory

    if keep:
        keep_freed_memory()
    import torch

    from bench.models import peak_rss_kb
    from sepcli import checkpoints
    from sepcli.train import load_preset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = checkpoints.build_model("mel-roformer", load_preset("mel-roformer", "small")["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mix = torch.randn(batch, 2, 88200) * 0.1
    targets = torch.randn(batch, 4, 2, 88200) * 0.05

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(mix, targets).backward()
        optimizer.step()

    step()  # warm-up: first-touch of weights and optimizer state
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    wall = (time.perf_counter() - start) / steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "step_s": wall,
        "user_s": (after.ru_utime - before.ru_utime) / steps,
        "system_s": (after.ru_stime - before.ru_stime) / steps,
        "faults": (after.ru_minflt - before.ru_minflt) / steps,
        "peak_rss_gb": peak_rss_kb() / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child), args.batch, args.threads, args.steps)))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Mel-RoFormer small training step, batch {args.batch} x 2 s, {args.threads} threads"
    )
    for column in ("allocator", "step s", "user CPU s", "system CPU s",
                   "minor faults", "peak RSS (GB)", "speed-up"):  # fmt: skip
        table.add_column(column, justify="right")
    baseline = None
    for keep in (False, True):
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(keep),
                              "--batch", str(args.batch), "--threads", str(args.threads),
                              "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        baseline = baseline or r["step_s"]
        table.add_row(
            "keep_freed_memory" if keep else "glibc default",
            f"{r['step_s']:.2f}",
            f"{r['user_s']:.2f}",
            f"{r['system_s']:.2f}",
            f"{r['faults']:.0f}",
            f"{r['peak_rss_gb']:.2f}",
            f"{baseline / r['step_s']:.2f}x",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
