"""Which melody head reads a trained trunk best? Linear probes on frozen features (prints a table).

    python bench/melody_head.py --data ../shared/data/mir-1k -m melody \\
        --valid 'abjones_*' --valid 'annar_*' --exclude 'bug_*' --exclude 'stool_*' \\
        --exclude 'khair_*' [--epochs 2]

The trunk of the melody checkpoint `-m` runs once over every training and validation clip (its
own 0 dB mix); its band features and the log spectrum below 4 kHz are kept. Each head variant
is then trained on the training singers' frames alone, the trunk frozen (AdamW, one-cycle lr
2e-3, 2048 frames a step, `--epochs` passes), and scored on the validation singers' voiced
frames: raw pitch accuracy (within 50 cents) and voicing accuracy (probability 0.5). Heads are
`models.melody`'s own, built from config keys; "spectrum only" feeds the head zeros for the
band features. This isolates what a head can read from the trunk from what fine-tuning adds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.melody import MelodyConfig, MelodyTranscriber, with_context  # noqa: E402

HEAD_KEYS = ("head_channels", "head_hidden", "spectral_bins", "spectral_context")
BINS, CONTEXT = 186, 2  # below 4 kHz at 44.1 kHz / 2048; the widest context of a variant

VARIANTS = {  # name: (head keys, band features used)
    "band features, linear (paper)": (dict(head_channels=16), True),
    "band features, MLP 512": (dict(head_channels=32, head_hidden=512), True),
    "spectrum only, MLP 512": (
        dict(head_hidden=512, spectral_bins=BINS, spectral_context=2),
        False,
    ),
    "both, linear": (dict(head_channels=16, spectral_bins=BINS, spectral_context=2), True),
    "both, MLP 512, one frame": (dict(head_channels=32, head_hidden=512, spectral_bins=BINS), True),
    "both, MLP 512 (preset spectral)": (
        dict(head_channels=32, head_hidden=512, spectral_bins=BINS, spectral_context=2),
        True,
    ),
}


def features(model: MelodyTranscriber, clips: list) -> dict[str, torch.Tensor]:
    """Band features [N, K, D], log spectra with context [N, 2c+1, BINS], labels [N]."""
    from sepcli import melody
    from sepcli.melody_train import clip_mixture

    probe = MelodyTranscriber(MelodyConfig.from_dict(
        {**model.config.to_dict(), "spectral_bins": BINS}))  # fmt: skip
    bands, logs, labels = [], [], []
    with torch.inference_mode():
        for clip in clips:
            mix = torch.from_numpy(clip_mixture(clip, model.audio_channels))[None]
            x, spectrum = model.trunk.encode(mix)
            frames = model.frames(mix.shape[-1])
            windows = with_context(probe.log_magnitudes(spectrum), CONTEXT)[0, :frames]
            bands.append(x[0, :frames].half())
            logs.append(windows.reshape(frames, 2 * CONTEXT + 1, BINS).half())
            times = np.arange(frames) * model.hop / model.sample_rate
            midi = melody.labels_on_frames(clip.label_times, clip.label_midi, times)
            labels.append(torch.from_numpy(midi).float())
    return {"bands": torch.cat(bands), "logs": torch.cat(logs), "midi": torch.cat(labels)}


def logits(
    head: MelodyTranscriber, data: dict, index: torch.Tensor, use_bands: bool
) -> torch.Tensor:
    bands = data["bands"][index].float()
    if not use_bands:
        bands = torch.zeros_like(bands)
    c = head.config.spectral_context
    spectral = data["logs"][index, CONTEXT - c : CONTEXT + c + 1].float().flatten(1)
    return head.head(bands[:, None], spectral[:, None] if head.config.spectral_bins else None)[:, 0]


def probe(trunk: MelodyTranscriber, keys: dict, use_bands: bool, train: dict, valid: dict,
          epochs: int) -> tuple[float, float, float]:  # fmt: skip
    torch.manual_seed(0)
    # the trunk's keys, and only the variant's head keys (not the checkpoint's own head)
    base = {k: v for k, v in trunk.config.to_dict().items() if k not in HEAD_KEYS}
    head = MelodyTranscriber(MelodyConfig.from_dict({**base, **keys}))
    params = [*head.band_head.parameters(), *head.classifier.parameters()]
    per_epoch = len(train["midi"]) // 2048
    optimizer = torch.optim.AdamW(params, 1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * per_epoch,
                                                   pct_start=0.05)  # fmt: skip
    started = time.perf_counter()
    for _ in range(epochs * per_epoch):
        index = torch.randint(len(train["midi"]), (2048,))
        loss = head.loss(logits(head, train, index, use_bands)[None], train["midi"][index][None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - started
    frames = len(valid["midi"])
    with torch.no_grad():
        out = torch.cat([logits(head, valid, torch.arange(i, min(i + 8192, frames)), use_bands)
                         for i in range(0, frames, 8192)])  # fmt: skip
    pitch, voicing = head.decode(out)
    voiced = valid["midi"] > 0
    raw_pitch = (pitch[voiced] - valid["midi"][voiced]).abs().lt(0.5).float().mean().item()
    return raw_pitch, ((voicing >= 0.5) == voiced).float().mean().item(), seconds


def main() -> None:
    from sepcli import datasets
    from sepcli.melody_train import load_clips
    from sepcli.transcribe import load_melody

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="MIR-1K stem folders.")
    parser.add_argument("-m", "--model", default="melody", help="Melody checkpoint (its trunk).")
    parser.add_argument("--valid", action="append", required=True, help="Validation singers.")
    parser.add_argument("--exclude", action="append", default=[], help="Never read (test).")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="Decoded-audio cache folder.")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _, model, _ = load_melody(args.model)
    spec = datasets.DataSpec("stems", args.data, valid=tuple(args.valid),
                             exclude=tuple(args.exclude))  # fmt: skip
    started = time.perf_counter()
    split = {name: features(model, load_clips(spec, name, model.sample_rate, args.cache))
             for name in ("train", "valid")}  # fmt: skip
    print(f"frozen features of {args.model}: {len(split['train']['midi'])} training and "
          f"{len(split['valid']['midi'])} validation frames in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"\n| head (trunk frozen, {args.epochs} epochs) | raw pitch % | voicing acc % | s |")
    print("|---|---|---|---|")
    for name, (keys, use_bands) in VARIANTS.items():
        raw_pitch, voicing, seconds = probe(model, keys, use_bands, split["train"],
                                            split["valid"], args.epochs)  # fmt: skip
        print(f"| {name} | {100 * raw_pitch:.1f} | {100 * voicing:.1f} | {seconds:.0f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
