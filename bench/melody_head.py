"""Which melody head reads a trained trunk best? Heads probed on frozen features (prints a table).

    python bench/melody_head.py --data ../shared/data/mir-1k -m melody \\
        --valid 'abjones_*' --valid 'annar_*' --exclude 'bug_*' --exclude 'stool_*' \\
        --exclude 'khair_*' [--epochs 2]

The trunk of the melody checkpoint `-m` runs once over every training and validation clip (its
own 0 dB mix); its band features, the log spectrum below 4 kHz and the harmonic stacks of the
pitch salience map (4096, 2048 and 8192 points) are kept. Each head variant is then trained on
the training singers' clips alone, the trunk frozen (AdamW, one-cycle lr 2e-3, 16 windows of 64
frames a step, `--epochs` passes over the frames), and scored on the validation singers' voiced
frames: raw pitch accuracy (within 50 cents) and voicing accuracy (probability 0.5). Heads are
`models.melody`'s own, built from config keys; "salience only" feeds the head zeros for the band
features. This isolates what a head can read from the trunk from what fine-tuning adds.
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
from sepcli.melody_train import HEAD_KEYS  # noqa: E402

BINS, CONTEXT = 186, 2  # below 4 kHz at 44.1 kHz / 2048; the widest context of a variant
SALIENCE = dict(salience_window=4096)
SPECTRAL = dict(head_channels=32, head_hidden=512, spectral_bins=BINS, spectral_context=2)
WINDOW, WINDOWS = 64, 16  # frames a window, windows a step
# The probe keeps every stack a variant may read; a head reads the extra windows' only when it
# has them (PitchSalience slices its input).
STACKS = dict(salience_extra_windows=(2048, 8192))
TWO_STACKS = dict(salience_extra_windows=(2048,))
TEMPORAL = {**SPECTRAL, **SALIENCE, "salience_dilations": (2, 4, 8, 16)}

VARIANTS = {  # name: (head keys, band features used)
    "band features, linear (preset paper)": (dict(head_channels=16), True),
    "band features + spectrum, MLP 512 (preset spectral)": (SPECTRAL, True),
    "band features, linear + salience": (dict(head_channels=16, **SALIENCE), True),
    "band features + spectrum, MLP 512 + salience (preset salience)": (
        {**SPECTRAL, **SALIENCE},
        True,
    ),
    "salience only": (dict(head_channels=16, **SALIENCE), False),
    "preset salience + time layers (preset temporal)": (TEMPORAL, True),
    "preset temporal + 2048-point stack (preset windows)": ({**TEMPORAL, **TWO_STACKS}, True),
    "preset windows + 8192-point stack (preset three-windows)": ({**TEMPORAL, **STACKS}, True),
    "preset three-windows, salience CNN 32 channels": (
        {**TEMPORAL, **STACKS, "salience_channels": 32},
        True,
    ),
}


def features(model: MelodyTranscriber, clips: list) -> list[tuple[torch.Tensor, ...]]:
    """Per clip: band features [T, K, D], log spectra with context [T, 2c+1, BINS], the
    harmonic stacks [H * windows, T, bins], labels [T]."""
    from sepcli import melody
    from sepcli.melody_train import clip_mixture

    probe = MelodyTranscriber(MelodyConfig.from_dict(
        {**model.config.to_dict(), "spectral_bins": BINS, **SALIENCE, **STACKS}))  # fmt: skip
    rows = []
    with torch.inference_mode():
        for clip in clips:
            mix = torch.from_numpy(clip_mixture(clip, model.audio_channels))[None]
            x, spectrum = model.trunk.encode(mix)
            frames = model.frames(mix.shape[-1])
            logs = with_context(probe.log_magnitudes(spectrum), CONTEXT)[0, :frames]
            stack = probe.salience.harmonic_stack(mix)[0, :, :frames]
            times = np.arange(frames) * model.hop / model.sample_rate
            midi = melody.labels_on_frames(clip.label_times, clip.label_midi, times)
            rows.append((x[0, :frames].half(), logs.reshape(frames, 2 * CONTEXT + 1, BINS).half(),
                         stack.half(), torch.from_numpy(midi).float()))  # fmt: skip
    return rows


def logits(head: MelodyTranscriber, rows: list, use_bands: bool) -> torch.Tensor:
    """Rows of equal length (windows or one clip) -> logits [B, T, bins + 1]."""
    bands = torch.stack([r[0] for r in rows]).float()
    if not use_bands:
        bands = torch.zeros_like(bands)
    c = head.config.spectral_context
    spectral = stack = None
    if head.config.spectral_bins:
        spectral = torch.stack([r[1][:, CONTEXT - c : CONTEXT + c + 1] for r in rows])
        spectral = spectral.float().flatten(2)
    if head.salience is not None:
        stack = torch.stack([r[2] for r in rows])
    return head.head(bands, spectral, stack)


def probe(trunk: MelodyTranscriber, keys: dict, use_bands: bool, train: list, valid: list,
          epochs: int) -> tuple[float, float, float]:  # fmt: skip
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # the trunk's keys, and only the variant's head keys (not the checkpoint's own head)
    base = {k: v for k, v in trunk.config.to_dict().items() if k not in HEAD_KEYS}
    head = MelodyTranscriber(MelodyConfig.from_dict({**base, **keys}))
    params = [p for name, p in head.named_parameters() if not name.startswith("trunk.")]
    lengths = np.array([len(r[3]) for r in train])
    steps = epochs * int(lengths.sum()) // (WINDOW * WINDOWS)
    optimizer = torch.optim.AdamW(params, 1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps,
                                                   pct_start=0.05)  # fmt: skip
    started = time.perf_counter()
    for _ in range(steps):
        windows = []
        for i in rng.choice(len(train), WINDOWS, p=lengths / lengths.sum()):
            start = int(rng.integers(0, lengths[i] - WINDOW + 1))
            b, s, h, m = train[i]
            window = slice(start, start + WINDOW)
            windows.append((b[window], s[window], h[:, window], m[window]))
        out = logits(head, windows, use_bands)
        loss = head.loss(out, torch.stack([w[3] for w in windows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - started
    hits = right = voiced_frames = frames = 0
    with torch.no_grad():
        for row in valid:
            pitch, voicing = head.decode(logits(head, [row], use_bands)[0])
            midi = row[3]
            voiced = midi > 0
            hits += int((pitch[voiced] - midi[voiced]).abs().lt(0.5).sum())
            right += int(((voicing >= 0.5) == voiced).sum())
            voiced_frames, frames = voiced_frames + int(voiced.sum()), frames + len(midi)
    return hits / voiced_frames, right / frames, seconds


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
    parser.add_argument("--only", action="append", default=[], help="Variants whose name has it.")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _, model, _ = load_melody(args.model)
    spec = datasets.DataSpec("stems", args.data, valid=tuple(args.valid),
                             exclude=tuple(args.exclude))  # fmt: skip
    started = time.perf_counter()
    split = {name: features(model, load_clips(spec, name, model.sample_rate, args.cache))
             for name in ("train", "valid")}  # fmt: skip
    count = {name: sum(len(r[3]) for r in rows) for name, rows in split.items()}
    print(f"frozen features of {args.model}: {count['train']} training and {count['valid']} "
          f"validation frames in {time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"\n| head (trunk frozen, {args.epochs} epochs) | raw pitch % | voicing acc % | s |")
    print("|---|---|---|---|")
    for name, (keys, use_bands) in VARIANTS.items():
        if args.only and not any(part in name for part in args.only):
            continue
        raw_pitch, voicing, seconds = probe(model, keys, use_bands, split["train"],
                                            split["valid"], args.epochs)  # fmt: skip
        print(f"| {name} | {100 * raw_pitch:.1f} | {100 * voicing:.1f} | {seconds:.0f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
