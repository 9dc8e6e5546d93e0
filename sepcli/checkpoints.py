"""Checkpoints: the native safetensors format, community Mel-RoFormer import, the embedded default.

A native checkpoint is one `.safetensors` file. Its metadata key `sepcli` holds a JSON document:
`{"architecture", "config", "sources", "sample_rate", "inference", "provenance"}`. Community
checkpoints are a `.ckpt`/`.pth` state dict plus the YAML config of the RoFormer training code;
they load through `torch.load(weights_only=True)` and a safe YAML loader, so nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import models
import sepcli
from models.base import Separator
from models.mel_roformer import MelRoFormer, MelRoFormerConfig
from sepcli.files import atomic_write

WEIGHTS_DIR = Path(__file__).parent / "weights"
PRESETS_DIR = Path(__file__).parent / "presets"
DEFAULT_MODEL = "default"


class CheckpointError(Exception):
    """A checkpoint or config that cannot be used, in words for the user."""


@dataclasses.dataclass
class LoadedModel:
    """A separator ready to run, with where it came from and its engine defaults."""

    model: Separator
    name: str
    architecture: str
    metadata: dict[str, Any]
    inference: dict[str, Any]


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads the `!!python/tuple` tags of the community configs."""


_ConfigLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple",
    lambda loader, node: tuple(loader.construct_sequence(node)),
)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            loader = _ConfigLoader(f)  # what yaml.safe_load does, with the tuple tag added
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except FileNotFoundError:
        raise CheckpointError(f"config not found: {path}")
    except yaml.YAMLError as err:
        raise CheckpointError(f"config {path} is not valid YAML ({str(err).splitlines()[0]})")
    if not isinstance(data, dict):
        raise CheckpointError(f"config {path} must be a mapping of sections")
    return data


def architecture_of(model: Separator) -> str:
    for name, (cls, _) in models.ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise CheckpointError(f"{type(model).__name__} is not a registered architecture")


def check_architecture(architecture: str) -> None:
    if architecture not in models.ARCHITECTURES:
        known = ", ".join(models.ARCHITECTURES)
        raise CheckpointError(f"unknown architecture '{architecture}' (known: {known})")


def build_model(architecture: str, config: dict[str, Any]) -> Separator:
    """Build a registered architecture from a config dict, naming any bad key."""
    check_architecture(architecture)
    cls, config_cls = models.ARCHITECTURES[architecture]
    try:
        return cls(config_cls.from_dict(config))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"bad {architecture} config: {err}")


def load_state_strict(model: Separator, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)`, with errors that name the offending keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first: {', '.join(unexpected[:3])}")
        raise CheckpointError(f"{source} does not match the architecture: {'; '.join(parts)}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: shape mismatch for parameter '{key}': checkpoint has "
                f"{tuple(state[key].shape)}, the config expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)


def load_init(model: Separator, init: Separator, source: str) -> None:
    """Start `model` from `init`'s weights: the same model, or (Mel-RoFormer) a smaller one."""
    if type(init) is type(model) and hasattr(model, "grow_from"):
        try:
            model.grow_from(init)
            return
        except ValueError:
            pass  # not a smaller copy: the strict load below names the keys that differ
    load_state_strict(model, init.state_dict(), source)


def save_checkpoint(
    path: Path,
    model: Separator,
    provenance: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    half: bool = False,
) -> None:
    """Write `model` (or `state`, e.g. EMA weights) as a native checkpoint, atomically.

    `half` stores float32 tensors as float16, half the file; loading casts them back to the
    model's float32, so only the weights' rounding differs.
    """
    path = Path(path)
    meta = {
        "architecture": architecture_of(model),
        "config": model.config.to_dict(),
        "sources": list(model.sources),
        "sample_rate": model.sample_rate,
        "inference": inference or {},
        "provenance": {"sepcli_version": sepcli.__version__, **(provenance or {})},
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in (state or model.state_dict()).items()}
    if half:
        tensors = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata={"sepcli": json.dumps(meta)})


def weights_digest(model: Separator) -> str:
    """SHA-256 of the model's config and weights: what identifies a model's results, whatever
    path or name it was loaded by (a retrained `best.safetensors`, a newer embedded default)."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(
            tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def read_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata of a native checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("sepcli")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})")
    if raw is None:
        raise CheckpointError(
            f"{path} has no sepcli metadata; import it with 'sepcli models import'"
        )
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has corrupt sepcli metadata")


def load_native(path: Path, name: str | None = None) -> LoadedModel:
    meta = read_metadata(path)
    architecture = meta.get("architecture", "")
    model = build_model(architecture, meta.get("config", {}))
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({err})")
    load_state_strict(model, state, str(path))
    model.eval()
    return LoadedModel(model, name or path.stem, architecture, meta, meta.get("inference", {}))


def read_community_state(path: Path) -> dict[str, torch.Tensor]:
    """A community `.ckpt`/`.pth` state dict, unwrapped; pickled code is refused, never run."""
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path} was refused: it holds pickled Python objects, not just tensors "
            f"(loading it could run code). {first}"
        )
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({_first_line(err)})"
        )
    for wrapper in ("model_state_dict", "state_dict", "state"):
        if isinstance(data, dict) and wrapper in data and isinstance(data[wrapper], dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return data


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def community_config(path: Path) -> tuple[MelRoFormerConfig, dict[str, Any]]:
    """Mel-RoFormer config and engine defaults from a community YAML."""
    data = read_yaml(path)
    model_section = dict(data.get("model") or {})
    training = data.get("training") or {}
    audio = data.get("audio") or {}
    inference = data.get("inference") or {}
    target = training.get("target_instrument")
    instruments = training.get("instruments") or []
    stems = model_section.get("num_stems", 1)
    if target:
        sources = [target]
    elif instruments:
        sources = list(instruments)[:stems] if len(instruments) >= stems else list(instruments)
    else:
        sources = ["vocals"] if stems == 1 else [f"stem{i}" for i in range(stems)]
    model_section["sources"] = sources
    chunk = inference.get("chunk_size", audio.get("chunk_size"))
    if chunk is not None:
        model_section["segment"] = int(chunk)
    try:
        config = MelRoFormerConfig.from_dict(model_section)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"bad config {path}: {err}")
    defaults: dict[str, Any] = {}
    if chunk is not None:
        defaults["segment"] = int(chunk)
    if inference.get("num_overlap"):
        defaults["overlap"] = 1.0 - 1.0 / float(inference["num_overlap"])
    if inference.get("batch_size"):
        defaults["batch_size"] = int(inference["batch_size"])
    return config, defaults


def load_community(path: Path, config_path: Path) -> LoadedModel:
    config, inference = community_config(config_path)
    model = MelRoFormer(config)
    load_state_strict(model, read_community_state(path), str(path))
    model.eval()
    meta = {
        "architecture": "mel-roformer",
        "config": config.to_dict(),
        "sources": list(config.sources),
        "sample_rate": config.sample_rate,
        "inference": inference,
        "provenance": {"imported_from": path.name, "config": config_path.name},
    }
    return LoadedModel(model, path.stem, "mel-roformer", meta, inference)


def default_checkpoint() -> Path:
    return WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors"


def load_model(spec: str | None, config: Path | None = None) -> LoadedModel:
    """Resolve `-m`: the embedded default, a native `.safetensors`, or a community `.ckpt` + YAML."""
    if spec in (None, "", DEFAULT_MODEL):
        path = default_checkpoint()
        if not path.exists():
            raise CheckpointError("the embedded default model is missing from this installation")
        return load_native(path, name=DEFAULT_MODEL)
    path = Path(spec).expanduser()
    if not path.exists():
        if spec in models.ARCHITECTURES:
            raise CheckpointError(
                f"'{spec}' is an architecture, not a trained model: give a checkpoint path "
                f"(train one with 'sepcli train {spec} ...')"
            )
        raise CheckpointError(f"checkpoint not found: {spec}")
    if path.is_dir():
        raise CheckpointError(f"{spec} is a folder, not a checkpoint")
    if config is not None:
        return load_community(path, Path(config))
    if path.suffix == ".safetensors":
        return load_native(path)
    if path.suffix in (".ckpt", ".pth", ".pt", ".bin"):
        raise CheckpointError(f"{spec} is a community checkpoint: also give its YAML with --config")
    raise CheckpointError(
        f"{spec}: unknown checkpoint type (expected .safetensors, or .ckpt + --config)"
    )


def list_checkpoints() -> list[Path]:
    return sorted(WEIGHTS_DIR.glob("*.safetensors"))


def list_presets() -> dict[str, list[str]]:
    """Training presets per architecture: `presets/<arch>-<size>.yaml`."""
    presets: dict[str, list[str]] = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        for arch in models.ARCHITECTURES:
            if path.stem.startswith(arch + "-"):
                presets.setdefault(arch, []).append(path.stem[len(arch) + 1 :])
    return presets
