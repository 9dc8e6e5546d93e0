"""Checkpoints: the native safetensors format, community RoFormer import, the embedded default.

A native checkpoint is one `.safetensors` file. Its metadata key `sepcli` holds a JSON document:
`{"architecture", "config", "sources", "sample_rate", "inference", "provenance"}`. Community
checkpoints (Mel-RoFormer and BS-RoFormer, told apart by their YAML) are a `.ckpt`/`.pth` state
dict plus the YAML config of the RoFormer training code; they load through
`torch.load(weights_only=True)` and a safe YAML loader, so nothing is unpickled.
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
from models.base import Separator, SeparatorConfig
from sepcli.files import atomic_write, not_a_regular_file, read_bounded
from sepcli.messages import one_line

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


MAX_CONFIG_BYTES = 1 << 20  # community YAML configs are a few kB
MAX_YAML_NODES = 100_000  # after aliases are expanded; a real config has a few hundred


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML config as a dict, read safely: a regular file under 1 MB whose aliases do not
    expand it past `MAX_YAML_NODES` (a "billion laughs" file is refused, not expanded)."""
    try:
        text = read_bounded(Path(path), MAX_CONFIG_BYTES, "config")
    except ValueError as err:
        raise CheckpointError(str(err).replace("not found", "does not exist"))
    except OSError as err:
        raise CheckpointError(f"config {path}: {err.strerror or err}")
    loader = _ConfigLoader(text)  # what yaml.safe_load does, with the tuple tag added
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expanded_size(node, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise CheckpointError(f"config {path} is not valid YAML ({str(err).splitlines()[0]})")
    except RecursionError:
        raise CheckpointError(f"config {path} is nested too deeply")
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise CheckpointError(f"config {path} must be a mapping of sections")
    return data


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """Count the nodes `root` stands for with every alias expanded (each shared node is counted
    where it is used, once computed); refuse recursive aliases and oversized expansions."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise CheckpointError(f"config {path} has a recursive alias")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > MAX_YAML_NODES:
            raise CheckpointError(
                f"config {path} expands to over {MAX_YAML_NODES} values through its aliases; "
                "refused"
            )
        sizes[key] = total
        return total

    size(root)


def architecture_of(model: Separator) -> str:
    for name, (cls, _) in models.ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise CheckpointError(f"{type(model).__name__} is not a registered architecture")


def check_architecture(architecture: str) -> None:
    if architecture == "melody":
        raise CheckpointError(
            "this is a melody transcription model, not a separator: use 'sepcli transcribe -m'"
        )
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
        raise CheckpointError(one_line(f"bad {architecture} config: {err}"))


def shape_mismatches(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]
) -> list[str]:
    """The first few missing, unexpected and wrongly shaped keys, each with its shape; [] if
    none."""

    def listed(keys: list[str], shapes: dict[str, tuple[int, ...]]) -> str:
        return ", ".join(f"{k} {tuple(shapes[k])}" for k in keys[:3])

    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), first: {listed(missing, expected)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first: {listed(unexpected, found)}")
    for key in shapes[:3]:
        parts.append(
            f"shape mismatch for parameter '{key}': checkpoint has {tuple(found[key])}, "
            f"the config expects {tuple(expected[key])}"
        )
    if len(shapes) > 3:
        parts.append(f"{len(shapes) - 3} more shape mismatch(es)")
    return parts


def load_state_strict(model: Separator, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)`, with errors that name the offending keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = shape_mismatches(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(
            one_line(f"{source} does not match the architecture: {'; '.join(problems)}")
        )
    model.load_state_dict(state, strict=True)


def check_shapes_before_building(
    architecture: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]], source: str
) -> Separator:
    """The model built on the meta device (no memory), checked against the checkpoint's tensor
    shapes: a small file whose config asks for a huge model is refused before anything is
    allocated. Returns the meta model (its parameters can be counted)."""
    with torch.device("meta"):
        model = build_model(architecture, config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = shape_mismatches(expected, shapes)
    if problems:
        raise CheckpointError(
            one_line(f"{source} does not match its config: {'; '.join(problems)}")
        )
    return model


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
    meta = {
        "architecture": architecture_of(model),
        "config": model.config.to_dict(),
        "sources": list(model.sources),
        "sample_rate": model.sample_rate,
        "inference": inference or {},
        "provenance": provenance or {},
    }
    write_native(path, meta, state or model.state_dict(), half)


def write_native(
    path: Path, meta: dict[str, Any], state: dict[str, torch.Tensor], half: bool = False
) -> None:
    """The native format: safetensors with the JSON `meta` (sepcli's version added to its
    provenance), written atomically; `half` stores float32 tensors as float16."""
    meta = {**meta, "provenance": {"sepcli_version": sepcli.__version__,
                                   **meta.get("provenance", {})}}  # fmt: skip
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if half:
        tensors = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
    with atomic_write(Path(path)) as tmp:
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
    """The JSON metadata of a native checkpoint, checked for the fields and types sepcli reads."""
    meta, _ = read_header(path)
    return meta


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(metadata, tensor shapes) of a native checkpoint, from its header alone."""
    from safetensors import safe_open

    problem = not_a_regular_file(path)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("sepcli")
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(err)})")
    if raw is None:
        raise CheckpointError(
            f"{path} has no sepcli metadata; import it with 'sepcli models import'"
        )
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} has corrupt sepcli metadata")
    check_metadata(meta, str(path))
    return meta, shapes


METADATA_TYPES = {"architecture": str, "config": dict, "sources": list, "sample_rate": int,
                  "inference": dict, "provenance": dict}  # fmt: skip


def check_metadata(meta: Any, source: str) -> None:
    """Refuse metadata that is not an object of the expected fields and types."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: its sepcli metadata is not a JSON object")
    for key, kind in METADATA_TYPES.items():
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            raise CheckpointError(f"{source}: metadata field '{key}' must be a {kind.__name__}")
    if "architecture" not in meta:
        raise CheckpointError(f"{source}: its metadata names no architecture")
    rate = meta.get("sample_rate")
    if rate is not None and not models.base.MIN_RATE <= rate <= models.base.MAX_RATE:
        raise CheckpointError(f"{source}: metadata sample_rate {rate} is out of range")
    check_inference(meta.get("inference") or {}, source)


def check_inference(inference: dict[str, Any], source: str) -> None:
    """Engine defaults from a checkpoint or YAML, checked like the command-line options."""
    bounds = {"segment": (int, 2, models.base.MAX_SEGMENT), "overlap": (float, 0.0, MAX_OVERLAP),
              "batch_size": (int, 1, MAX_BATCH), "tta": (bool, None, None),
              "cpu_bf16": (bool, None, None)}  # fmt: skip
    for key, value in inference.items():
        if key not in bounds:
            continue
        kind, low, high = bounds[key]
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            and (kind is float or isinstance(value, int)) and low <= value <= high
        )  # fmt: skip
        if not ok:
            raise CheckpointError(f"{source}: inference setting '{key}' = {value!r} is invalid")


MAX_OVERLAP = 0.95  # 20 passes over every sample; more is a time bomb, not a setting
MAX_BATCH = 1024


def load_native(path: Path, name: str | None = None) -> LoadedModel:
    meta, shapes = read_header(path)
    architecture = meta["architecture"]
    check_shapes_before_building(architecture, meta.get("config", {}), shapes, str(path))
    model = build_model(architecture, meta.get("config", {}))
    load_state_strict(model, read_native_state(path), str(path))
    model.eval()
    return LoadedModel(model, name or path.stem, architecture, meta, meta.get("inference", {}))


def read_native_state(path: Path) -> dict[str, torch.Tensor]:
    """A native checkpoint's tensors (read its header first with `read_header`)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(err)})")


def read_community_state(path: Path) -> dict[str, torch.Tensor]:
    """A community `.ckpt`/`.pth` state dict, unwrapped; pickled code is refused, never run."""
    problem = not_a_regular_file(path)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}")
    _refuse_zip_bombs(path)
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
    # The community loader's order: `state`, then `state_dict`, then `model_state_dict`.
    for wrapper in ("state", "state_dict", "model_state_dict"):
        if isinstance(data, dict) and wrapper in data and isinstance(data[wrapper], dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    if data and all(k.startswith("module.") for k in data):  # saved from DataParallel/DDP
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def _refuse_zip_bombs(path: Path) -> None:
    """torch.save writes its zip uncompressed; entries that would inflate far past the file's
    own size are a decompression bomb, not a checkpoint."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is a damaged zip archive ({_first_line(err)})")
    if inflated > 2 * path.stat().st_size + (1 << 20):
        raise CheckpointError(
            f"{path} would inflate from {path.stat().st_size} to {inflated} bytes; refused"
        )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# The RoFormer families sepcli reads, by the community `model_type` names.
FAMILIES = {"mel_band_roformer": "mel-roformer", "bs_roformer": "bs-roformer"}
# Other model types of the community training code, and a model-section key that marks each.
OTHER_TYPES = {"mdx23c": "num_subbands", "scnet": "band_SR", "htdemucs": "channels_time",
               "apollo": "feature_dim", "bandit": "band_specs", "segm_models": "encoder_name",
               "torchseg": "encoder_name", "bs_roformer_experimental": "hyper_connections",
               "mel_band_roformer_experimental": "hyper_connections", "bs_conformer": "conformer",
               "mel_band_conformer": "conformer"}  # fmt: skip


def detect_family(data: dict[str, Any], path: Path) -> str:
    """`mel-roformer` or `bs-roformer` from a community YAML: its `model_type` where it has one,
    else `freqs_per_bands` (BS) or `num_bands` (Mel) in the model section."""
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    model_type = training.get("model_type") or data.get("model_type")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    supported = "sepcli reads mel_band_roformer and bs_roformer"
    if model_type:
        if str(model_type) in FAMILIES:
            return FAMILIES[str(model_type)]
        raise CheckpointError(f"config {path} is for a {model_type} model; {supported}")
    if "freqs_per_bands" in model:
        return "bs-roformer"
    if "num_bands" in model:
        return "mel-roformer"
    guess = next((name for name, key in OTHER_TYPES.items() if key in model or key in data), None)
    if guess:
        raise CheckpointError(f"config {path} looks like a {guess} model; {supported}")
    raise CheckpointError(
        f"config {path} names no RoFormer family (no model_type, freqs_per_bands or num_bands "
        f"in its model section); {supported}"
    )


def community_config(path: Path) -> tuple[str, SeparatorConfig, dict[str, Any]]:
    """(architecture, config, engine defaults) from a community RoFormer YAML."""
    data = read_yaml(path)
    architecture = detect_family(data, path)
    try:
        config, defaults = _community_sections(data, architecture)
    except (ValueError, TypeError, AttributeError, OverflowError) as err:
        raise CheckpointError(one_line(f"bad config {path}: {err}"))
    check_inference(defaults, str(path))
    return architecture, config, defaults


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ValueError(f"section '{name}' must be a mapping")
    return dict(section)


def stem_names(training: dict[str, Any], stems: int) -> list[str]:
    """What the community code calls a model's outputs: `[target_instrument]` if set, else
    `training.instruments` (the first `stems` of them); generic names without either."""
    target = training.get("target_instrument")
    instruments = training.get("instruments") or []
    if not isinstance(instruments, (list, tuple)):
        raise ValueError("training.instruments must be a list")
    if target and stems == 1:
        return [str(target)]
    if len(instruments) >= stems:
        return [str(name) for name in instruments[:stems]]
    return ["vocals"] if stems == 1 else [f"stem{i}" for i in range(stems)]


def _community_sections(
    data: dict[str, Any], architecture: str
) -> tuple[SeparatorConfig, dict[str, Any]]:
    model_section = _section(data, "model")
    training = _section(data, "training")
    audio = _section(data, "audio")
    inference = _section(data, "inference")
    stems = model_section.get("num_stems", 1)
    if not isinstance(stems, int) or isinstance(stems, bool) or not 1 <= stems <= 64:
        raise ValueError(f"num_stems must be an integer in 1..64, got {stems!r}")
    model_section.setdefault("sources", stem_names(training, stems))
    chunk = inference.get("chunk_size", audio.get("chunk_size"))
    if chunk is not None:
        model_section.setdefault("segment", int(chunk))
    if architecture == "bs-roformer" and audio.get("sample_rate"):
        model_section.setdefault("sample_rate", int(audio["sample_rate"]))
    _, config_cls = models.ARCHITECTURES[architecture]
    config = config_cls.from_dict(model_section)
    defaults: dict[str, Any] = {}
    if chunk is not None:
        defaults["segment"] = int(chunk)
    if inference.get("num_overlap"):
        defaults["overlap"] = 1.0 - 1.0 / float(inference["num_overlap"])
    if inference.get("batch_size"):
        defaults["batch_size"] = int(inference["batch_size"])
    return config, defaults


def load_community(path: Path, config_path: Path) -> LoadedModel:
    architecture, config, inference = community_config(config_path)
    state = read_community_state(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    check_shapes_before_building(architecture, config.to_dict(), shapes, str(path))
    model = build_model(architecture, config.to_dict())
    load_state_strict(model, state, str(path))
    model.eval()
    meta = {
        "architecture": architecture,
        "config": config.to_dict(),
        "sources": list(config.sources),
        "sample_rate": config.sample_rate,
        "inference": inference,
        "provenance": {"imported_from": path.name, "config": config_path.name},
    }
    return LoadedModel(model, path.stem, architecture, meta, inference)


def default_checkpoint() -> Path:
    return WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors"


def embedded_checkpoint(name: str) -> Path | None:
    """The package's own checkpoint called `name` (`default`, `complex-mask`...), if any."""
    if "/" in name or name.startswith("."):
        return None
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return path if path.is_file() else None


def load_model(spec: str | None, config: Path | None = None) -> LoadedModel:
    """Resolve `-m`: an embedded model by name, a native `.safetensors`, or a community `.ckpt`
    + YAML. A file of that name in the working folder wins over an embedded model."""
    if spec in (None, "", DEFAULT_MODEL) and not default_checkpoint().exists():
        raise CheckpointError("the embedded default model is missing from this installation")
    spec = spec or DEFAULT_MODEL
    embedded = embedded_checkpoint(spec)
    if embedded is not None and not Path(spec).exists() and config is None:
        return load_native(embedded, name=spec)
    path = Path(spec).expanduser()
    if not path.exists():
        if spec in models.ARCHITECTURES:
            raise CheckpointError(
                f"'{spec}' is an architecture, not a trained model: give a checkpoint path "
                f"(train one with 'sepcli train {spec} ...')"
            )
        raise CheckpointError(f"checkpoint not found: {spec}")
    problem = not_a_regular_file(path)
    if problem:
        raise CheckpointError(f"checkpoint {spec}: {problem}")
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


def preset_names(kind: str) -> list[str]:
    """The shipped presets of an architecture or of `melody`: `presets/<kind>-NAME.yaml`."""
    return [p.stem[len(kind) + 1 :] for p in sorted(PRESETS_DIR.glob(f"{kind}-*.yaml"))]


def preset_path(preset: str | Path, kind: str, what: str) -> Path:
    """The YAML a `--config` names: a file, or the shipped preset `presets/<kind>-NAME.yaml`.

    A bare name means the shipped preset unless a file of that name is here: a run folder called
    `low` in the working directory must not hide the preset `low`. `what` names the presets in
    the error ("preset 'x' for mel-roformer", "melody preset 'x'").
    """
    path = Path(preset)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        problem = "is a folder, not a file" if path.exists() else "does not exist"
        raise CheckpointError(f"config file {preset} {problem}")
    path = PRESETS_DIR / f"{kind}-{path.name}.yaml"
    if not path.is_file():
        raise CheckpointError(f"no {what} (have: {', '.join(preset_names(kind))})")
    return path


def list_presets() -> dict[str, list[str]]:
    """Training presets per architecture that has any: `presets/<arch>-<size>.yaml`."""
    names = {arch: preset_names(arch) for arch in sorted(models.ARCHITECTURES)}
    return {arch: shipped for arch, shipped in names.items() if shipped}
