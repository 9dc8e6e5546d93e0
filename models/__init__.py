"""The separators. Pure torch: no files, no CLI, no printing.

`ARCHITECTURES` maps the name used on the command line and in checkpoints to the model class and
its config dataclass, so that code outside this package never needs to import a model module.
"""

from __future__ import annotations

from models.base import Separator, SeparatorConfig
from models.bs_roformer import BSRoFormer, BSRoFormerConfig
from models.complex_mask import ComplexMaskUNet, ComplexMaskUNetConfig
from models.ibm_cnn import IBMCNN, IBMCNNConfig
from models.mel_roformer import MelRoFormer, MelRoFormerConfig

ARCHITECTURES: dict[str, tuple[type[Separator], type[SeparatorConfig]]] = {
    "mel-roformer": (MelRoFormer, MelRoFormerConfig),
    "bs-roformer": (BSRoFormer, BSRoFormerConfig),
    "complex-mask": (ComplexMaskUNet, ComplexMaskUNetConfig),
    "ibm-cnn": (IBMCNN, IBMCNNConfig),
}

__all__ = ["ARCHITECTURES", "Separator", "SeparatorConfig"]
