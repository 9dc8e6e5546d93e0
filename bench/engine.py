"""Engine benchmarks (prints tables; not a test).

1. Overhead: end-to-end `sepcli separate` machinery (decode, resample, chunking, overlap-add,
   encode) on 60 s of stereo audio with the embedded default model, against the sum of the bare
   model forwards on the same chunks.
2. Peak RSS when separating 1, 10 and 60 minutes of audio (streamed), each in a fresh process,
   with a cheap gain model so the run measures the engine and I/O, not the network; once with
   glibc's defaults and once with `keep_freed_memory` (what `sepcli separate` on a CPU uses),
   which must stay bounded too.

    python bench/engine.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def overhead() -> dict:
    from sepcli import batch, checkpoints
    from sepcli.engine import Demixer

    torch.set_num_threads(2)
    loaded = checkpoints.load_model("default")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sixty.wav"
        rng = np.random.default_rng(0)
        sf.write(path, (rng.standard_normal((60 * 44100, 2)) * 0.1).astype(np.float32), 44100)
        demixer = Demixer(loaded.model, batch_size=4)
        bare = []
        original = demixer._forward_batch

        def timed(chunks):
            start = time.perf_counter()
            out = original(chunks)
            bare.append(time.perf_counter() - start)
            return out

        demixer._forward_batch = timed
        tracks, _ = batch.discover([str(path)], False)
        stems = list(loaded.model.sources)
        batch.plan_outputs(
            tracks, Path(tmp) / "out", batch.DEFAULT_TEMPLATE, "default", stems, "wav"
        )
        start = time.perf_counter()
        batch.run_batch(tracks, demixer, batch.SeparationOptions(stems), batch.Reporter())
        total = time.perf_counter() - start
    return {"end_to_end_s": total, "model_forwards_s": sum(bare), "overhead": total / sum(bare) - 1}


def peak_rss(minutes: float, keep: bool) -> float:
    code = f"""
import sys, numpy as np, soundfile as sf, tempfile, torch
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from sepcli.allocator import keep_freed_memory
if {keep}:
    keep_freed_memory()
from sepcli import batch
from sepcli.engine import Demixer
from models.base import Separator
from bench.models import peak_rss_kb
class Gain(Separator):
    def __init__(self):
        super().__init__(); self.sources=("a","b","c","d"); self.sample_rate=44100; self.audio_channels=2; self.segment=44100*8
    def forward(self, x): return x[:, None].expand(-1, 4, -1, -1) * 0.25
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "long.flac"
    with sf.SoundFile(path, "w", 44100, 2, subtype="PCM_16") as f:
        for _ in range(int({minutes} * 6)):
            f.write((np.random.default_rng(0).standard_normal((441000, 2)) * 0.1).astype(np.float32))
    tracks, _ = batch.discover([str(path)], False)
    batch.plan_outputs(tracks, Path(tmp) / "o", batch.DEFAULT_TEMPLATE, "g", ["a", "b", "c", "d"], "flac")
    batch.run_batch(tracks, Demixer(Gain(), batch_size=4), batch.SeparationOptions(["a", "b", "c", "d"], fmt="flac"), batch.Reporter())
    print(peak_rss_kb() / 1e3)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    o = overhead()
    table = Table(title="engine overhead: 60 s stereo, embedded default model, 2 CPU threads")
    for c in ("end to end (s)", "bare model forwards (s)", "overhead"):
        table.add_column(c, justify="right")
    table.add_row(
        f"{o['end_to_end_s']:.2f}", f"{o['model_forwards_s']:.2f}", f"{100 * o['overhead']:.1f} %"
    )
    Console().print(table)
    table = Table(title="peak RSS vs track length (streamed; gain model; FLAC in and out)")
    table.add_column("minutes", justify="right")
    table.add_column("peak RSS (MB)", justify="right")
    table.add_column("with keep_freed_memory (MB)", justify="right")
    results = {m: [peak_rss(m, keep=False), peak_rss(m, keep=True)] for m in (1, 10, 60)}
    for m, (plain, kept) in results.items():
        table.add_row(str(m), f"{plain:.0f}", f"{kept:.0f}")
    Console().print(table)
    print(json.dumps({"overhead": o, "peak_rss_mb": results}))


if __name__ == "__main__":
    main()
