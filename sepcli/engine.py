"""Apply a separator to a whole track: overlapping chunks, batched forwards, overlap-add.

The track streams through in blocks. It is padded by reflection at both ends, cut into chunks of
`segment` samples every `hop` samples, and the chunks go through the model `batch_size` at a
time. Each chunk's output is weighted by a window that is positive everywhere, added into place,
and divided by the summed window, so an identity model reproduces its input exactly.
`shifts` adds chunk grids at random offsets and `tta` channel-swapped and polarity-inverted
passes, and both average them in (test-time augmentation).
Samples are emitted once no later chunk can touch them, so memory does not grow with length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from models.base import Separator


class EngineError(Exception):
    """A problem with the engine settings or the device, written for the user."""


def chunk_window(length: int) -> np.ndarray:
    """Triangular weights 1..peak..1, positive at both ends so any overlap (even none) works."""
    ramp = np.arange(1, length + 1, dtype=np.float64)
    return (np.minimum(ramp, ramp[::-1]) / ((length + 1) // 2)).astype(np.float32)


def resolve_device(name: str) -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N|mps` into a device that exists, or explain why not."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EngineError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(
                f"device '{name}' requested but CUDA is not available on this machine"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineError(
                f"device '{name}' does not exist ({torch.cuda.device_count()} GPU(s))"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise EngineError("device 'mps' requested but MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise EngineError(f"unsupported device '{name}'")
    return device


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """`auto` is bf16 (or fp16 where bf16 is missing) on CUDA and fp32 elsewhere."""
    if precision == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext()
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise EngineError(f"unknown precision '{precision}' (use auto, fp32, bf16 or fp16)")
    if precision == "fp16" and device.type == "cpu":
        raise EngineError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


class NonFiniteOutput(EngineError):
    """The model returned NaN or infinity: its estimates are garbage."""


class OutOfMemory(EngineError):
    """Out of memory even at batch size 1: only a shorter segment can help."""


class Demixer:
    """Separates a stream of [C, n] float32 blocks at the model's rate into [S, C, n] blocks.

    Args:
        model: any Separator; it is moved to `device` and set to eval mode.
        segment: chunk length in samples (default: the model's own).
        overlap: fraction of a chunk shared with the next one, in [0, 1).
        batch_size: chunks per forward pass.
        shifts: number of chunk grids at random offsets averaged together (0 or 1: one grid).
        tta: also run every chunk with its channels swapped and with its polarity inverted, and
            average the three (the community `--use_tta`); 3x the compute.
        device, precision: where and how the model runs (see `autocast_for`).
        seed: seeds the shift offsets, so runs are repeatable.
        on_retry: told in words when an out-of-memory error makes the engine shrink its batch.
    """

    def __init__(
        self,
        model: Separator,
        segment: int | None = None,
        overlap: float = 0.25,
        batch_size: int = 4,
        shifts: int = 0,
        tta: bool = False,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        seed: int = 0,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.segment = int(segment or model.segment)
        self.overlap, self.shifts, self.tta, self.seed = overlap, shifts, tta, seed
        if self.segment < 2:
            raise EngineError(f"segment must be at least 2 samples, got {self.segment}")
        if not 0 <= overlap < 1:
            raise EngineError(f"overlap must be in [0, 1), got {overlap}")
        if batch_size < 1:
            raise EngineError(f"batch size must be at least 1, got {batch_size}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval()
        self.precision = precision
        autocast_for(self.device, precision)  # validate early
        self.hop = max(1, round(self.segment * (1 - overlap)))
        self.pad = self.segment // 2
        self.batch_size = batch_size
        self.window = chunk_window(self.segment)
        rng = np.random.default_rng(seed)
        extra = rng.integers(1, self.hop, size=max(0, shifts - 1)) if self.hop > 1 else []
        self.offsets = sorted({0, *(int(o) for o in extra)})
        self.on_retry = on_retry

    def with_segment(self, segment: int) -> "Demixer":
        """The same demixer with another chunk length (the out-of-memory fallback)."""
        return Demixer(self.model, segment, self.overlap, self.batch_size, self.shifts, self.tta,
                       self.device, self.precision, self.seed, self.on_retry)  # fmt: skip

    @property
    def sources(self) -> tuple[str, ...]:
        return self.model.sources

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """Separate a whole track [C, T] -> [S, C, T]."""
        blocks = list(self.stream([mix]))
        if not blocks:
            return np.zeros((len(self.sources), mix.shape[0], 0), dtype=np.float32)
        return np.concatenate(blocks, axis=-1)

    def _chunk_starts(self) -> Iterator[int]:
        """All chunk starts of all grids, ascending, in padded coordinates (unbounded)."""
        heads = [(offset, offset) for offset in self.offsets]
        while True:
            start = min(head for head, _ in heads)
            yield start
            heads = [(h + self.hop, o) if h == start else (h, o) for h, o in heads]

    def stream(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Separate blocks [C, n] of one track as they arrive; yield [S, C, m] blocks in order."""
        pad = self.pad
        held: list[np.ndarray] = []
        held_len = 0
        blocks = iter(blocks)
        # Prime: the left reflection needs pad + 1 real samples (or the whole track if shorter).
        for block in blocks:
            held.append(np.asarray(block, dtype=np.float32))
            held_len += block.shape[-1]
            if held_len > pad:
                break
        if held_len == 0:
            return
        head = np.concatenate(held, axis=-1)
        state = _OverlapAdd(self, head.shape[0])
        if head.shape[-1] <= pad:  # the whole track is shorter than the padding
            state.push(_reflect_pad(head, pad, pad))
            yield from state.finish(real_length=head.shape[-1])
            return
        state.push(_reflect_pad(head, pad, 0))
        real_length = head.shape[-1]
        yield from state.drain()
        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            real_length += block.shape[-1]
            state.push(block)
            yield from state.drain()
        tail = state.buffer[:, -(pad + 1) :]
        state.push(_reflect_pad(tail, 0, pad)[:, pad + 1 :])
        yield from state.finish(real_length=real_length)

    def forward(self, chunks: np.ndarray) -> np.ndarray:
        """Run the model on chunks [N, C, L] -> [N, S, C, L], halving the batch on OOM."""
        outputs = []
        size = self.batch_size
        start = 0
        while start < len(chunks):
            part = chunks[start : start + size]
            try:
                outputs.append(self._forward_batch(part))
                start += len(part)
            except torch.OutOfMemoryError:
                if size == 1:
                    raise OutOfMemory(
                        f"out of memory on {self.device} even with batch size 1 and segment "
                        f"{self.segment}; use a smaller --segment or --device cpu"
                    )
                size = max(1, size // 2)
                self.batch_size = size
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if self.on_retry:
                    self.on_retry(
                        f"out of memory on {self.device}: retrying with batch size {size}"
                    )
        return np.concatenate(outputs)

    def _forward_batch(self, chunks: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast_for(self.device, self.precision):
            x = torch.from_numpy(chunks).to(self.device)
            y = self.model(x).float()
            if self.tta:
                # One view at a time, so TTA costs time but no extra memory.
                y += self.model(x.flip(1)).float().flip(-2) - self.model(-x).float()
                y /= 3
            if not bool(torch.isfinite(y).all()):
                # Written out, NaN becomes full-scale -1.0 in every stem: fail the track instead.
                raise NonFiniteOutput(
                    "the model's output holds NaN or infinite values (its weights may be "
                    "corrupt, or try --precision fp32)"
                )
        return y.cpu().numpy()


def _reflect_pad(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """Reflect-pad the last axis; numpy reflects repeatedly when the pad exceeds the length."""
    if x.shape[-1] == 1:
        return np.repeat(x, 1 + left + right, axis=-1)
    return np.pad(x, ((0, 0), (left, right)), mode="reflect")


class _OverlapAdd:
    """The running state of one track: input buffer, output accumulator, next chunks."""

    def __init__(self, demixer: Demixer, channels: int) -> None:
        self.demixer = demixer
        self.channels = channels
        self.buffer = np.zeros((channels, 0), dtype=np.float32)  # padded input
        self.buffer_start = 0  # padded index of buffer[:, 0]
        self.starts = demixer._chunk_starts()
        self.next_start = next(self.starts)
        sources = len(demixer.sources)
        # float64 accumulation keeps the overlap-add exact to float32 rounding of the result.
        self.acc = np.zeros((sources, channels, 0), dtype=np.float64)
        self.weight = np.zeros(0, dtype=np.float64)
        self.emitted = 0  # padded index up to which output has been handed out

    def push(self, block: np.ndarray) -> None:
        self.buffer = np.concatenate([self.buffer, block], axis=-1)

    def drain(self) -> Iterator[np.ndarray]:
        """Process every chunk whose input is complete; yield the finished output."""
        end = self.buffer_start + self.buffer.shape[-1]
        yield from self._process(limit=end - self.demixer.segment, end=None)

    def finish(self, real_length: int) -> Iterator[np.ndarray]:
        """Process the chunks left at the end of the track and yield the rest of the output."""
        pad = self.demixer.pad
        yield from self._process(limit=pad + real_length - 1, end=pad + real_length)

    def _process(self, limit: int, end: int | None) -> Iterator[np.ndarray]:
        demixer = self.demixer
        segment = demixer.segment
        while True:
            starts = []
            while self.next_start <= limit and len(starts) < demixer.batch_size * 4:
                starts.append(self.next_start)
                self.next_start = next(self.starts)
            if not starts:
                break
            chunks = np.zeros((len(starts), self.channels, segment), dtype=np.float32)
            for i, start in enumerate(starts):
                piece = self.buffer[
                    :, start - self.buffer_start : start - self.buffer_start + segment
                ]
                chunks[i, :, : piece.shape[-1]] = piece
            outputs = demixer.forward(chunks) * demixer.window
            for start, out in zip(starts, outputs):
                self._add(start, out)
            yield from self._emit(self.next_start, end)
        # Everything before the next chunk (or the track end) is final.
        yield from self._emit(self.next_start if end is None else end, end)

    def _add(self, start: int, out: np.ndarray) -> None:
        offset = start - self.emitted
        need = offset + out.shape[-1]
        if need > self.weight.shape[0]:
            grow = need - self.weight.shape[0]
            self.acc = np.pad(self.acc, ((0, 0), (0, 0), (0, grow)))
            self.weight = np.pad(self.weight, (0, grow))
        self.acc[..., offset:need] += out
        self.weight[offset:need] += self.demixer.window

    def _emit(self, upto: int, end: int | None) -> Iterator[np.ndarray]:
        """Hand out output in [emitted, upto), cropped to the real (unpadded) samples."""
        pad = self.demixer.pad
        count = upto - self.emitted
        if count <= 0:
            return
        out = self.acc[..., :count] / self.weight[:count]
        lo = max(pad, self.emitted) - self.emitted
        hi = count if end is None else min(count, end - self.emitted)
        self.acc = self.acc[..., count:]
        self.weight = self.weight[count:]
        self.emitted = upto
        # Input before the next chunk is no longer needed, but keep pad + 1 samples for the
        # reflection at the end of the track.
        keep_from = min(self.next_start, self.buffer_start + self.buffer.shape[-1] - pad - 1)
        if keep_from > self.buffer_start:
            self.buffer = self.buffer[:, keep_from - self.buffer_start :]
            self.buffer_start = keep_from
        if hi > lo:
            yield out[..., lo:hi].astype(np.float32)
