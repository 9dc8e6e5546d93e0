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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(device: torch.device, precision: str, cpu_bf16: bool = False) -> str:
    """`auto` -> what runs on `device`: bf16 on CUDA GPUs with native bf16 (Ampere and later),
    fp16 on older ones (emulated bf16 on a T4 or V100 is slower than fp32); on a CPU, bf16 for a
    model measured to gain from it (`cpu_bf16`, from its checkpoint) where the CPU has native
    bf16 (AVX512-BF16 or AMX), else fp32."""
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision '{precision}' (use auto, fp32, bf16 or fp16)")
    if precision == "auto":
        if device.type == "cpu":
            from sepcli.doctor import native_cpu_bf16

            return "bf16" if cpu_bf16 and native_cpu_bf16() else "fp32"
        if device.type != "cuda":
            return "fp32"
        return "bf16" if native_bf16_on_cuda(device) else "fp16"
    if precision == "fp16" and device.type == "cpu":
        raise EngineError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
    return precision


def native_bf16_on_cuda(device: torch.device) -> bool:
    try:  # torch >= 2.3 can leave emulation out
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.get_device_capability(device)[0] >= 8


def autocast_for(
    device: torch.device, precision: str, cpu_bf16: bool = False
) -> contextlib.AbstractContextManager:
    """The autocast context for `precision` (see `resolve_precision`); none for fp32."""
    resolved = resolve_precision(device, precision, cpu_bf16)
    if resolved == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_fast_cuda_kernels(device: torch.device, precision: str) -> None:
    """On CUDA, let cuDNN pick its fastest convolution for each shape and, unless the user asked
    for exact fp32, let fp32 matmuls and convolutions run on TF32 tensor cores."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    if precision != "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


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
        device, precision: where and how the model runs (see `resolve_precision`).
        cpu_bf16: `auto` may pick bf16 on a CPU with native bf16 (measured for this model).
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
        cpu_bf16: bool = False,
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
        self.precision, self.cpu_bf16 = precision, cpu_bf16
        autocast_for(self.device, precision, cpu_bf16)  # validate early
        use_fast_cuda_kernels(self.device, precision)
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
                       self.device, self.precision, self.seed, self.on_retry, self.cpu_bf16)  # fmt: skip

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
        track = self.open()
        for block in blocks:
            yield from track.feed(block)
        yield from track.close()

    def open(self) -> "TrackStream":
        """The push form of `stream`, for callers that feed several engines the same blocks."""
        return TrackStream(self)

    def forward(self, chunks: np.ndarray) -> Iterator[torch.Tensor]:
        """Run the model on chunks [N, C, L]; yield float32 [n, S, C, L] on the device, batch by
        batch (N in all), halving the batch when the device runs out of memory."""
        x = self.to_device(torch.from_numpy(chunks))
        size = self.batch_size
        start = 0
        while start < len(chunks):
            part = x[start : start + size]
            try:
                yield self._forward_batch(part)
                start += len(part)
            except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_out_of_memory(err):
                    raise
                if size == 1:
                    raise OutOfMemory(
                        f"out of memory on {self.device} even with batch size 1 and segment "
                        f"{self.segment}; use a smaller --segment or --device cpu"
                    )
                size = max(1, size // 2)
                self.batch_size = size
                empty_cache(self.device)
                if self.on_retry:
                    self.on_retry(
                        f"out of memory on {self.device}: retrying with batch size {size}"
                    )

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Host -> device: from pinned memory and without blocking on CUDA, so the next chunks
        are cut while this copy runs."""
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def _forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_for(self.device, self.precision, self.cpu_bf16):
            y = self.model(x).float()
            if self.tta:
                # One view at a time, so TTA costs time but no extra memory.
                y += self.model(x.flip(1)).float().flip(-2) - self.model(-x).float()
                y /= 3
        return y


# What each backend raises when an allocation fails: torch.OutOfMemoryError (torch >= 2.5; the
# CUDA one before), and plain RuntimeErrors from MPS, cuBLAS and cuFFT.
OOM_TYPES = tuple(
    {t for t in (getattr(torch, "OutOfMemoryError", None),
                 getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None}
)  # fmt: skip
OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUFFT_ALLOC_FAILED",
                "cuFFT error: CUFFT_INTERNAL_ERROR", "Failed to allocate")  # fmt: skip


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` says the device ran out of memory, whichever backend raised it."""
    if OOM_TYPES and isinstance(err, OOM_TYPES):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in OOM_MESSAGES)


def empty_cache(device: torch.device) -> None:
    """Give the caching allocator's free blocks back, so a smaller retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


class TrackStream:
    """One track through a demixer, block by block: `feed` takes [C, n] blocks at the model's
    rate and returns the [S, C, m] output they finish; `close` returns the rest. In all, the
    output is exactly as long as the input."""

    def __init__(self, demixer: Demixer) -> None:
        self.demixer = demixer
        self.held: list[np.ndarray] = []  # input before the left reflection can be made
        self.held_len = 0
        self.state: _OverlapAdd | None = None
        self.real_length = 0

    def feed(self, block: np.ndarray) -> list[np.ndarray]:
        block = np.asarray(block, dtype=np.float32)
        pad = self.demixer.pad
        if self.state is None:
            # Prime: the left reflection needs pad + 1 real samples.
            self.held.append(block)
            self.held_len += block.shape[-1]
            if self.held_len <= pad:
                return []
            head = np.concatenate(self.held, axis=-1)
            self.held = []
            self.state = _OverlapAdd(self.demixer, head.shape[0])
            self.state.push(_reflect_pad(head, pad, 0))
            self.real_length = head.shape[-1]
            return list(self.state.drain())
        self.real_length += block.shape[-1]
        self.state.push(block)
        return list(self.state.drain())

    def close(self) -> list[np.ndarray]:
        pad = self.demixer.pad
        if self.state is None:  # the whole track is no longer than the padding
            if self.held_len == 0:
                return []
            head = np.concatenate(self.held, axis=-1)
            state = _OverlapAdd(self.demixer, head.shape[0])
            state.push(_reflect_pad(head, pad, pad))
            return list(state.finish(real_length=head.shape[-1]))
        tail = self.state.buffer[:, -(pad + 1) :]
        self.state.push(_reflect_pad(tail, 0, pad)[:, pad + 1 :])
        return list(self.state.finish(real_length=self.real_length))


def take_samples(queue: list[np.ndarray], count: int) -> np.ndarray:
    """Pop the first `count` samples (last axis) from a queue of blocks [..., n]."""
    parts, need = [], count
    while need > 0 and queue:
        head = queue[0]
        if head.shape[-1] <= need:
            parts.append(queue.pop(0))
            need -= head.shape[-1]
        else:
            parts.append(head[..., :need])
            queue[0] = head[..., need:]
            need = 0
    return np.concatenate(parts, axis=-1)


def _reflect_pad(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """Reflect-pad the last axis; numpy reflects repeatedly when the pad exceeds the length."""
    if x.shape[-1] == 1:
        return np.repeat(x, 1 + left + right, axis=-1)
    return np.pad(x, ((0, 0), (left, right)), mode="reflect")


# Chunks are cut, separated and added in groups of this many batches; finished output is copied
# back once per group. The sums span a group's chunks, so this sets the engine's memory too.
GROUP_BATCHES = 2


class _OverlapAdd:
    """The running state of one track: input buffer, output accumulator, next chunks.

    The input is cut into chunks on the host; the weighted sums (float32: a sample sums at
    most 1 / (1 - overlap) chunks, so an identity model comes back to within 1e-7) stay on the
    model's device and only finished output is copied back, so the device never waits for the
    host between batches.
    """

    def __init__(self, demixer: Demixer, channels: int) -> None:
        self.demixer = demixer
        self.channels = channels
        self.buffer = np.zeros((channels, 0), dtype=np.float32)  # padded input
        self.buffer_start = 0  # padded index of buffer[:, 0]
        self.starts = demixer._chunk_starts()
        self.next_start = next(self.starts)
        device = demixer.device
        self.window = torch.from_numpy(demixer.window).to(device)
        self.acc = torch.zeros((len(demixer.sources), channels, 0), device=device)
        self.weight = torch.zeros(0, device=device)
        self.emitted = 0  # padded index up to which output has been handed out
        self.head = 0  # buffer index of padded sample `emitted` in acc and weight

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
            while self.next_start <= limit and len(starts) < demixer.batch_size * GROUP_BATCHES:
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
            self._add(starts, demixer.forward(chunks))
            yield from self._emit(self.next_start, end)
        # Everything before the next chunk (or the track end) is final.
        yield from self._emit(self.next_start if end is None else end, end)

    @torch.inference_mode()
    def _add(self, starts: list[int], batches: Iterable[torch.Tensor]) -> None:
        """Window-weight each chunk's output [S, C, L] and add it in at its (ascending) start."""
        segment = self.demixer.segment
        self._reserve(starts[-1] - self.emitted + segment)
        chunks = (out for batch in batches for out in batch)
        for start, out in zip(starts, chunks):
            at = self.head + start - self.emitted
            self.acc[..., at : at + segment] += out * self.window
            self.weight[at : at + segment] += self.window

    def _reserve(self, need: int) -> None:
        """Room for `need` samples from `emitted` on. The sums live in one buffer from `head`
        on; emitted samples before `head` are dead. When the room runs out, the live part moves
        to the front (a copy of under one chunk) and the buffer grows only if it must."""
        size = self.weight.shape[0]
        if self.head + need <= size:
            return
        live = size - self.head
        if need > size:
            acc = self.acc.new_zeros(*self.acc.shape[:2], need)
            weight = self.weight.new_zeros(need)
        else:
            acc, weight = self.acc, self.weight
        acc[..., :live] = self.acc[..., self.head :].clone()
        weight[:live] = self.weight[self.head :].clone()
        acc[..., live:] = 0
        weight[live:] = 0
        self.acc, self.weight, self.head = acc, weight, 0

    @torch.inference_mode()
    def _emit(self, upto: int, end: int | None) -> Iterator[np.ndarray]:
        """Hand out output in [emitted, upto), cropped to the real (unpadded) samples."""
        pad = self.demixer.pad
        count = upto - self.emitted
        if count <= 0:
            return
        lo = max(pad, self.emitted) - self.emitted
        hi = count if end is None else min(count, end - self.emitted)
        out = None
        if hi > lo:
            span = slice(self.head + lo, self.head + hi)
            out = (self.acc[..., span] / self.weight[span]).cpu().numpy()
        self.head += count
        self.emitted = upto
        # Input before the next chunk is no longer needed, but keep pad + 1 samples for the
        # reflection at the end of the track.
        keep_from = min(self.next_start, self.buffer_start + self.buffer.shape[-1] - pad - 1)
        if keep_from > self.buffer_start:
            self.buffer = self.buffer[:, keep_from - self.buffer_start :]
            self.buffer_start = keep_from
        if out is not None:
            if not np.isfinite(out).all():
                # Written out, NaN becomes full-scale -1.0 in every stem: fail the track instead.
                raise NonFiniteOutput(
                    "the model's output holds NaN or infinite values (its weights may be "
                    "corrupt, or try --precision fp32)"
                )
            yield out
