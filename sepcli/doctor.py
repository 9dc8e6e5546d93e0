"""`sepcli doctor`: what this machine offers, what sepcli will do on it, and what to fix.

Each check gives a fact, and for a problem a one-line fix. A problem is `broken` when
`sepcli separate` cannot work (exit status 1) and a `warning` when only some of it is missing
(ffmpeg: no m4a/opus/MUSDB input; old libsndfile: no MP3 output).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@dataclasses.dataclass
class Problem:
    level: str  # broken | warning
    what: str
    fix: str


def cpu_flags() -> set[str]:
    """The vector extensions sepcli cares about that the CPU reports (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return {flag for flag in line.split(":", 1)[1].split() if flag in CPU_FLAGS}
    except OSError:
        pass
    return set()


def native_cpu_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 can beat fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def nvidia_gpu_present() -> bool:
    """An NVIDIA driver on this machine, whatever torch was built for."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def report(out: Path) -> tuple[dict[str, Any], list[Problem]]:
    """The facts and the problems, for `--json` and for the table."""
    facts: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    problems: list[Problem] = []
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - a broken install is exactly what doctor reports
        problems.append(Problem("broken", f"torch cannot be imported ({err})",
                                "pip install torch (CPU: pip install torch==2.13.0)"))  # fmt: skip
        return facts, problems
    facts["torch"] = torch.__version__
    facts["torch_build"] = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    facts["cuda_available"] = torch.cuda.is_available()
    facts["gpus"] = [
        {"name": torch.cuda.get_device_name(i),
         "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 1e9, 1)}
        for i in range(torch.cuda.device_count())
    ] if torch.cuda.is_available() else []  # fmt: skip
    facts["mps_available"] = bool(torch.backends.mps.is_available())
    facts["cpu_flags"] = sorted(cpu_flags())
    facts["cpu_native_bf16"] = native_cpu_bf16()
    facts["threads"] = {"torch": torch.get_num_threads(), "cpus": os.cpu_count()}
    if not torch.version.cuda and nvidia_gpu_present():
        problems.append(Problem("warning", "an NVIDIA GPU is present but torch is a CPU-only build",
                                "install a CUDA build of torch: pip install torch --index-url "
                                "<the CUDA wheel index for your driver, see pytorch.org>"))  # fmt: skip
    _audio_facts(facts, problems)
    _output_facts(out, facts, problems)
    _defaults(facts, problems)
    return facts, problems


def _audio_facts(facts: dict[str, Any], problems: list[Problem]) -> None:
    import soundfile as sf

    facts["libsndfile"] = sf.__libsndfile_version__
    formats = sf.available_formats()
    facts["soundfile_formats"] = sorted(formats)
    facts["mp3_writing"] = "MP3" in formats
    if not facts["mp3_writing"]:
        problems.append(Problem("warning", f"libsndfile {sf.__libsndfile_version__} cannot write MP3",
                                "pip install -U soundfile (it bundles libsndfile >= 1.1)"))  # fmt: skip
    for tool in ("ffmpeg", "ffprobe"):
        path = shutil.which(tool)
        facts[tool] = _first_line([tool, "-version"]) if path else None
    if not (facts["ffmpeg"] and facts["ffprobe"]):
        problems.append(Problem("warning", "ffmpeg/ffprobe not found: no m4a, aac, opus or MUSDB "
                                ".stem.mp4 input", "install ffmpeg (apt-get install ffmpeg, "
                                "brew install ffmpeg, or conda install ffmpeg)"))  # fmt: skip


def _first_line(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0] if out else None


def _output_facts(out: Path, facts: dict[str, Any], problems: list[Problem]) -> None:
    existing = Path(out).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    facts["output"] = {"folder": str(out), "free_gb": round(usage.free / 1e9, 1),
                       "writable": os.access(existing, os.W_OK)}  # fmt: skip
    if not facts["output"]["writable"]:
        problems.append(Problem("broken", f"cannot write to {existing}", "choose another --out"))
    elif usage.free < 1e9:
        problems.append(Problem("warning", f"{usage.free / 1e9:.2f} GB free where the stems go "
                                "(a 4-minute song makes about 170 MB of 16-bit WAV stems)",
                                "free some space or choose another --out"))  # fmt: skip


def _defaults(facts: dict[str, Any], problems: list[Problem]) -> None:
    from sepcli import checkpoints
    from sepcli.engine import resolve_device, resolve_precision

    try:
        loaded = checkpoints.load_model("default")
    except checkpoints.CheckpointError as err:
        problems.append(
            Problem("broken", str(err), "reinstall sepcli (pip install --force-reinstall sepcli)")
        )
        return
    device = resolve_device("auto")
    inference = loaded.inference
    precision = resolve_precision(device, "auto", bool(inference.get("cpu_bf16")))
    facts["default_run"] = {
        "model": loaded.name, "device": str(device), "precision": precision,
        "batch_size": inference.get("batch_size", 4),
        "segment_s": round(inference.get("segment", loaded.model.segment) / loaded.model.sample_rate, 2),
        "overlap": inference.get("overlap", 0.25),
    }  # fmt: skip
