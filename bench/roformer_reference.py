"""sepcli's RoFormers against the community reference code (ZFTurbo's
Music-Source-Separation-Training, commit ccc011a): exactness over random configs, the test
fixtures, and the speed table. Needs a checkout of that repository and its packages
(`pip install -e ".[reference]"`); the reference code is only run, never copied.

    python bench/roformer_reference.py --reference /path/to/msst check      # random configs
    python bench/roformer_reference.py --reference /path/to/msst fixtures tests/fixtures
    python bench/roformer_reference.py --reference /path/to/msst speed      # viperx, 8 s chunk

`check` builds each config with the reference class (seeded), loads its state dict into
sepcli's class with strict=True, and compares the outputs of one random input. `speed` times one
forward of the viperx BS config on one 8 s stereo chunk, each side in its own process (peak RSS
per side), fp32 and bf16, on the threads given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# Run in a process of its own: the reference's package is also called `models`.
REFERENCE_RUN = """
import json, sys
import numpy as np, torch
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[1])
spec = json.loads(sys.argv[2])
if spec["family"] == "bs-roformer":
    from models.bs_roformer.bs_roformer import BSRoformer as Model
else:
    from models.bs_roformer.mel_band_roformer import MelBandRoformer as Model
config = spec["config"]
for key in ("freqs_per_bands", "multi_stft_resolutions_window_sizes"):
    if key in config:
        config[key] = tuple(config[key])
torch.manual_seed(spec["seed"])
model = Model(**config).eval()
save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, spec["out"] + ".safetensors")
channels = 2 if config["stereo"] else 1
x = torch.randn(spec["batch"], channels, spec["length"],
                generator=torch.Generator().manual_seed(spec["seed"])) * 0.1
with torch.no_grad():
    y = model(x)
if y.dim() == 3:  # the community Mel output drops the stem axis for one stem
    y = y[:, None]
np.savez(spec["out"] + ".npz", input=x.numpy(), output=y.numpy())
"""


def reference_run(reference: Path, family: str, config: dict, seed: int, length: int,
                  out: Path, batch: int = 2) -> tuple[dict, np.ndarray, np.ndarray]:  # fmt: skip
    """The reference model's state dict, an input and its output, made in a subprocess."""
    from safetensors.torch import load_file

    spec = {"family": family, "config": config, "seed": seed, "length": length,
            "out": str(out), "batch": batch}  # fmt: skip
    subprocess.run([sys.executable, "-W", "ignore", "-c", REFERENCE_RUN, str(reference),
                    json.dumps(spec)], check=True, cwd="/tmp")  # fmt: skip
    arrays = np.load(str(out) + ".npz")
    return load_file(str(out) + ".safetensors"), arrays["input"], arrays["output"]


def ours(family: str, model_section: dict):
    import models as registry

    cls, config_cls = registry.ARCHITECTURES[family]
    return cls(config_cls(**model_section))


def random_config(rng: np.random.Generator, family: str) -> dict:
    n_fft = int(rng.choice([256, 512, 1024]))
    config = {
        "dim": int(rng.choice([8, 16])),
        "depth": int(rng.integers(1, 3)),
        "stereo": bool(rng.random() < 0.7),
        "num_stems": int(rng.integers(1, 4)),
        "time_transformer_depth": int(rng.integers(1, 3)),
        "freq_transformer_depth": int(rng.integers(1, 3)),
        "linear_transformer_depth": int(rng.choice([0, 0, 1, 2])),
        "dim_head": int(rng.choice([8, 16])),
        "heads": int(rng.integers(1, 3)),
        "attn_dropout": 0.0,
        "ff_dropout": 0.0,
        "flash_attn": bool(rng.random() < 0.7),
        "stft_n_fft": n_fft,
        "stft_hop_length": int(rng.choice([n_fft // 4, n_fft // 4 + 13])),
        "stft_win_length": int(rng.choice([n_fft, n_fft // 2])),
        "stft_normalized": bool(rng.random() < 0.3),
        "zero_dc": bool(rng.random() < 0.6),
        "mask_estimator_depth": int(rng.integers(0, 4)),
        "mlp_expansion_factor": int(rng.choice([1, 2, 4])),
        "skip_connection": bool(rng.random() < 0.4),
        "multi_stft_resolutions_window_sizes": (256, 128),
    }
    if family == "bs-roformer":
        bins = n_fft // 2 + 1
        cuts = np.sort(rng.choice(np.arange(1, bins), size=int(rng.integers(1, 9)), replace=False))
        config["freqs_per_bands"] = tuple(int(v) for v in np.diff([0, *cuts, bins]))
    else:
        config["stft_win_length"] = n_fft  # the reference Mel class builds with win = n_fft
        config["num_bands"] = int(rng.choice([4, 8, 16]))
        config["sample_rate"] = 44100
        config["match_input_audio_length"] = True
    return config


def compare(reference: Path, family: str, config: dict, seed: int, length: int) -> float:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        state, x, expected = reference_run(reference, family, config, seed, length,
                                           Path(tmp) / "ref")  # fmt: skip
    mine = ours(family, config).eval()
    mine.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = mine(torch.from_numpy(x)).numpy()
    return float(np.abs(expected - got).max())


def check(reference: Path, count: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sepcli vs the reference code, random configs (max |difference|)")
    for column in ("family", "config", "length", "max diff"):
        table.add_column(column)
    worst = 0.0
    for seed in range(count):
        rng = np.random.default_rng(seed)
        for family in ("bs-roformer", "mel-roformer"):
            config = random_config(rng, family)
            length = int(config["stft_n_fft"] // 2 + 1 + rng.integers(0, 6000))
            diff = compare(reference, family, config, seed, length)
            worst = max(worst, diff)
            short = {k: v for k, v in config.items() if k not in ("attn_dropout", "ff_dropout",
                     "multi_stft_resolutions_window_sizes", "sample_rate")}  # fmt: skip
            table.add_row(family, json.dumps(short)[:200], str(length), f"{diff:.1e}")
    Console(width=260).print(table)
    print(f"worst {worst:.2e}")


def fixtures(reference: Path, out: Path) -> None:
    """Small reference-made models with an input and the reference output, for the tests."""
    out.mkdir(parents=True, exist_ok=True)
    small = {"dim": 8, "depth": 2, "dim_head": 8, "heads": 2, "attn_dropout": 0.0,
             "ff_dropout": 0.0, "stft_n_fft": 256, "stft_hop_length": 64, "stft_win_length": 256,
             "time_transformer_depth": 1, "freq_transformer_depth": 1}  # fmt: skip
    cases = {
        "bs_4stem_linear_skip": ("bs-roformer", 7, {**small, "stereo": True, "num_stems": 4,
            "linear_transformer_depth": 1, "skip_connection": True, "mask_estimator_depth": 2,
            "mlp_expansion_factor": 2, "freqs_per_bands": (8, 8, 16, 32, 65)}),
        "bs_mono_depth3": ("bs-roformer", 11, {**small, "stereo": False, "num_stems": 2,
            "mask_estimator_depth": 3, "mlp_expansion_factor": 1, "zero_dc": False,
            "stft_win_length": 192, "freqs_per_bands": (4, 12, 48, 65)}),
        "mel_2stem_depth3": ("mel-roformer", 5, {**small, "stereo": True, "num_stems": 2,
            "num_bands": 8, "sample_rate": 44100, "mask_estimator_depth": 3,
            "mlp_expansion_factor": 1, "match_input_audio_length": True}),
    }  # fmt: skip
    for name, (family, seed, config) in cases.items():
        path = out / name
        state, _, _ = reference_run(reference, family, config, seed, 3001, path, batch=1)
        (out / f"{name}.json").write_text(json.dumps({"family": family, "config": config}))
        print(name, family, sum(v.numel() for v in state.values()), "elements")


# One timed forward, run as its own process (peak RSS per side) from /tmp, where the
# reference's `models` package is the one found.
TIMED_FORWARD = """
import json, sys, time
import numpy as np, torch
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
section = spec["section"]
torch.manual_seed(0)
if spec["side"] == "reference":
    sys.path.insert(0, spec["reference"])
    from models.bs_roformer.bs_roformer import BSRoformer
    for key in ("freqs_per_bands", "multi_stft_resolutions_window_sizes"):
        section[key] = tuple(section[key])
    model = BSRoformer(**section).eval()
else:
    sys.path.insert(0, spec["root"])
    from safetensors.torch import load_file
    from models.bs_roformer import BSRoFormer, BSRoFormerConfig
    model = BSRoFormer(BSRoFormerConfig(**section)).eval()
    model.load_state_dict(load_file(spec["weights"]), strict=True)
x = torch.randn(1, 2, 8 * 44100, generator=torch.Generator().manual_seed(1)) * 0.1
dtype = torch.bfloat16 if spec["precision"] == "bf16" else None
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
    model(x)  # warm-up
    start = time.perf_counter()
    y = model(x)
    seconds = time.perf_counter() - start
np.save(spec["out"], y.float().numpy())
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "peak_gb": peak / 1e6}))
if spec["side"] == "reference" and spec["precision"] == "fp32":  # after the peak is read
    from safetensors.torch import save_file
    save_file({k: v.clone().contiguous() for k, v in model.state_dict().items()}, spec["weights"])
"""


def timed_forward(side: str, precision: str, threads: int, reference: Path) -> dict:
    from sepcli.checkpoints import PRESETS_DIR, read_yaml

    section = read_yaml(PRESETS_DIR / "bs-roformer-viperx.yaml")["model"]
    section.update(attn_dropout=0.0, ff_dropout=0.0)
    section = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    spec = {"side": side, "precision": precision, "threads": threads, "section": section,
            "reference": str(reference), "root": str(ROOT),
            "weights": "/tmp/roformer_speed_weights.safetensors",
            "out": f"/tmp/roformer_speed_{side}_{precision}.npy"}  # fmt: skip
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", TIMED_FORWARD, json.dumps(spec)],
                         capture_output=True, text=True, check=True, cwd="/tmp")  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(reference: Path, threads: int) -> None:
    from rich.console import Console
    from rich.table import Table

    results = {}
    for precision in ("fp32", "bf16"):  # the reference's fp32 run writes the shared weights
        for side in ("reference", "sepcli"):
            results[side, precision] = timed_forward(side, precision, threads, reference)
    fp32 = np.load("/tmp/roformer_speed_reference_fp32.npy")
    table = Table(title=f"BS-RoFormer viperx config, one 8 s stereo chunk, {threads} CPU threads")
    for column in ("code", "precision", "seconds", "speed-up", "peak RSS GB",
                   "max |diff| vs reference fp32", "SNR vs reference fp32 (dB)"):  # fmt: skip
        table.add_column(column, justify="right")
    for (side, precision), r in results.items():
        y = np.load(f"/tmp/roformer_speed_{side}_{precision}.npy")
        diff = np.abs(y - fp32).max()
        snr = 10 * np.log10(np.sum(fp32**2) / max(np.sum((y - fp32) ** 2), 1e-30))
        base = results["reference", precision]["seconds"]
        table.add_row(side, precision, f"{r['seconds']:.2f}", f"{base / r['seconds']:.2f}x",
                      f"{r['peak_gb']:.2f}", f"{diff:.1e}", f"{snr:.1f}")  # fmt: skip
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="MSST checkout")
    parser.add_argument("what", choices=["check", "fixtures", "speed"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.what == "check":
        check(args.reference, args.count)
    elif args.what == "fixtures":
        fixtures(args.reference, Path(args.args[0]))
    else:
        speed(args.reference, args.threads)


if __name__ == "__main__":
    main()
