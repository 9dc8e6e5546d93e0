"""Training objectives that `sepcli train --loss` can use instead of a separator's own `loss`."""

from __future__ import annotations

import torch
from torch import Tensor

# Frames whose reference is quieter than this mean square (-70 dBFS) have no SDR worth the name;
# museval leaves silent reference frames out of its median the same way.
SILENT_FRAME_POWER = 1e-7


def framewise_sdr_loss(
    estimate: Tensor, target: Tensor, frame: int, eps: float = 1e-8, rows: Tensor | None = None
) -> Tensor:
    """Negative mean SDR in dB over frames of `frame` samples, per stem, channels pooled.

    `estimate` and `target` are [B, S, C, T]. Over a whole track this ratio is the global SDR of
    MDX; museval reports the median over 1 s frames of BSSEval's SDR, which also forgives a short
    distortion filter. Training on it spends capacity where those scores are decided, unlike an
    L1 loss, which weighs a loud frame's error more than the same relative error in a quiet one.
    A segment shorter than `frame` is one frame. `rows` [B, S] (bool) leaves out the stems
    that an example has no target for.
    """
    frame = min(frame, target.shape[-1])
    count = target.shape[-1] // frame
    shape = (*target.shape[:-1], count, frame)
    target = target[..., : count * frame].float().reshape(shape)
    estimate = estimate[..., : count * frame].float().reshape(shape)
    signal = target.square().sum(dim=(2, 4))
    noise = (target - estimate).square().sum(dim=(2, 4))
    sdr = 10 * torch.log10((signal + eps) / (noise + eps))
    active = signal > SILENT_FRAME_POWER * frame * target.shape[2]
    if rows is not None:
        active = active & rows[..., None]
    return -(sdr * active).sum() / active.sum().clamp(min=1)


def grouped(estimate: Tensor, groups: Tensor) -> Tensor:
    """Estimates [B, S, C, T] summed by `groups` [B, K, S] into [B, K, C, T]: row k is the sum
    of the sources that example's target k covers (drums + bass + other for accompaniment)."""
    return torch.einsum("bks,bsct->bkct", groups.to(estimate.dtype), estimate)
