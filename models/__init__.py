"""The separators. Pure torch: no files, no CLI, no printing.

`ARCHITECTURES` maps the name used on the command line and in checkpoints to the model class and
its config dataclass, so that code outside this package never needs to import a model module.
"""

from __future__ import annotations

from models.base import Separator, SeparatorConfig
from models.mel_roformer import MelRoFormer, MelRoFormerConfig

ARCHITECTURES: dict[str, tuple[type[Separator], type[SeparatorConfig]]] = {
    "mel-roformer": (MelRoFormer, MelRoFormerConfig),
}

__all__ = ["ARCHITECTURES", "Separator", "SeparatorConfig"]
