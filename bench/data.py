"""Training data speed: batches drawn per second, and training steps per second, with MUSDB
alone and with the stem-folder datasets added (prints a table; not a test).

    python bench/data.py --musdb ../shared/data/musdb18-7 --stems ../shared/data/mir-1k \
        --stems ../shared/data/eif --cache runs/cache

Batches of 8 x 3 s for the embedded default's config, as its training draws them (remixed,
25 % real mixes, silence redraws). "steps/s" is a full optimizer step on 2 threads, with the
batches drawn on the worker thread as `sepcli train` does; "draw only" is the data alone on
the main thread. If steps/s barely moves between rows, the data is not the bottleneck.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--musdb", type=Path, required=True)
    parser.add_argument("--stems", type=Path, action="append", default=[])
    parser.add_argument("--cache", type=Path, default=Path("runs/cache"))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from sepcli import checkpoints
    from sepcli.data import RemixDataset
    from sepcli.datasets import DataSpec, load_tracks
    from sepcli.train import LossForward, TrainSettings, _Prefetcher

    torch.set_num_threads(2)
    loaded = checkpoints.load_model("default")
    model = loaded.model.train()
    rate = model.sample_rate
    specs = [DataSpec("musdb", args.musdb)] + [DataSpec("stems", root) for root in args.stems]
    tracks = {spec.label: (1.0, load_tracks(spec, "train", rate, args.cache)) for spec in specs}
    table = Table(title="training data: batches of 8 x 3 s, default model, 2 threads")
    for column in ("datasets", "tracks", "minutes", "draw only (batches/s)", "ms per batch",
                   "train steps/s"):  # fmt: skip
        table.add_column(column, justify="right")
    settings = TrainSettings(batch_size=8, segment=3.0, loss="sdr")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    loss_fn = LossForward(model, "sdr")
    for count in range(1, len(specs) + 1):
        chosen = dict(list(tracks.items())[:count])
        data = RemixDataset(chosen, 3 * rate, model.sources, 0.001, coherent=0.25, rate=rate)
        rng = np.random.default_rng(0)
        data.sample(rng, 8)
        start = time.perf_counter()
        for _ in range(args.batches):
            data.sample(rng, 8)
        draw = (time.perf_counter() - start) / args.batches
        batches = _Prefetcher(data, rng, settings, torch.device("cpu"))
        try:
            times = []
            for _ in range(args.steps + 1):
                t0 = time.perf_counter()
                mix, targets, groups, _ = batches.next()
                optimizer.zero_grad()
                loss_fn(mix, targets, groups).backward()
                optimizer.step()
                times.append(time.perf_counter() - t0)
        finally:
            batches.close()
        found = [t for _, ts in chosen.values() for t in ts]
        table.add_row(" + ".join(chosen), str(len(found)),
                      f"{sum(t.length for t in found) / rate / 60:.0f}", f"{1 / draw:.1f}",
                      f"{1000 * draw:.0f}", f"{1 / np.median(times[1:]):.3f}")  # fmt: skip
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
