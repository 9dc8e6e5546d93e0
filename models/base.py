"""The Separator contract every model follows, and the config base class.

The engine, the trainer and the evaluator only ever use what is declared here: `sources`,
`sample_rate`, `audio_channels`, `segment`, `forward` and `loss`. They never ask which model they
hold.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class SeparatorConfig:
    """Base for the frozen config dataclasses the separators are built from."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SeparatorConfig":
        """Build from a plain dict (YAML or checkpoint metadata), naming any bad key.

        Lists become tuples, so a config read back from JSON compares equal to the original.
        """
        config = cls(**typed_fields(cls, values, owner=cls.__name__))
        config.check_bounds()
        return config

    def check_bounds(self) -> None:
        """Refuse values no real model has, before they size a buffer or a loop: a config from
        a checkpoint or YAML is untrusted input (a 6 kB file must not ask for 5 GB)."""
        for field in dataclasses.fields(self):
            name, value = field.name, getattr(self, field.name)
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"config key '{name}' must be finite, got {v}")
                if isinstance(v, int) and not 0 <= v <= MAX_CONFIG_INT:
                    raise ValueError(f"config key '{name}' is out of range: {v}")
                if any(part in name for part in ("n_fft", "win_length", "window_sizes")):
                    if not 1 <= v <= MAX_FFT:
                        raise ValueError(f"config key '{name}' must be in 1..{MAX_FFT}, got {v}")
                if "hop" in name and v < 1:
                    raise ValueError(f"config key '{name}' must be at least 1, got {v}")
        rate = getattr(self, "sample_rate", None)
        if rate is not None and not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(
                f"config key 'sample_rate' must be in {MIN_RATE}..{MAX_RATE}, got {rate}"
            )
        segment = getattr(self, "segment", None)
        if segment is not None and not 2 <= segment <= MAX_SEGMENT:
            raise ValueError(f"config key 'segment' must be in 2..{MAX_SEGMENT}, got {segment}")
        sources = getattr(self, "sources", None)
        if sources is not None:
            check_source_names(sources)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Bounds on untrusted configs (see `check_bounds`), far beyond any published model.
MAX_CONFIG_INT = 1 << 20
MAX_FFT = 1 << 15
MIN_RATE, MAX_RATE = 1000, 768000
MAX_SEGMENT = 1 << 25  # samples: 12.7 min at 44.1 kHz
SOURCE_NAME = re.compile(r"[^\W_][\w.+-]*( [\w.+-]+)*")


def check_source_names(sources: tuple[str, ...]) -> None:
    """Stem names become file names and output keys: they must be distinct, short words."""
    if not sources:
        raise ValueError("config key 'sources' names no stem")
    for name in sources:
        if not isinstance(name, str) or len(name) > 64 or not SOURCE_NAME.fullmatch(name):
            raise ValueError(f"config key 'sources': {name!r} is not a usable stem name")
    duplicates = sorted({name for name in sources if sources.count(name) > 1})
    if duplicates:
        raise ValueError(f"config key 'sources' names {', '.join(duplicates)} more than once")


def typed_fields(
    cls: type, values: dict[str, Any], label: str = "config key", owner: str = ""
) -> dict[str, Any]:
    """`values` for the dataclass `cls` (a config, training settings): every key one of its
    fields, every value checked against the field's annotation (`coerce_value`). `label` and
    `owner` name the keys in errors."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        where = f" for {owner}" if owner else ""
        raise ValueError(f"unknown {label}(s){where}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    return {name: coerce_value(name, value, hints[name], label) for name, value in values.items()}


def coerce_value(name: str, value: Any, hint: Any, label: str = "config key") -> Any:
    """Check one value against its annotation; accept lists for tuples, ints for floats, None
    for `X | None`."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{label} '{name}' must be a list, got {type(value).__name__}")
        (item,) = set(typing.get_args(hint)) - {Ellipsis}
        return tuple(coerce_value(name, v, item, label) for v in value)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        if value is None:
            return None
        (hint,) = set(typing.get_args(hint)) - {type(None)}
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{label} '{name}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{label} '{name}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{label} '{name}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{label} '{name}' must be a string, got {value!r}")
        return value
    return value


class Separator(torch.nn.Module):
    """A source separator: a mixture waveform in, one waveform per source out.

    Subclasses set these attributes in `__init__`:
        sources: names of the estimated sources, in output order.
        sample_rate: the rate the model works at, in Hz.
        audio_channels: number of channels the model expects (2 for stereo models).
        segment: preferred chunk length in samples for the engine.
    `differentiable_output` is False where `forward` thresholds its masks: a loss on the separated
    waveforms (`sepcli train --loss sdr`) then has no gradient to train the model with.
    """

    differentiable_output: bool = True
    sources: tuple[str, ...]
    sample_rate: int
    audio_channels: int
    segment: int
    config: SeparatorConfig

    def forward(self, mix: Tensor) -> Tensor:
        """Separate `mix` [B, C, T] into [B, S, C, T], with the same T."""
        raise NotImplementedError

    def loss(self, mix: Tensor, targets: Tensor) -> Tensor:
        """The training objective of the model's paper; `mix` [B, C, T], `targets` [B, S, C, T]."""
        raise NotImplementedError


def match_length(x: Tensor, length: int) -> Tensor:
    """Crop or zero-pad the last axis of `x` to `length`."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))
