"""The chunked overlap-add engine: exact reconstruction, streaming, shifts, TTA and OOM retries."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepcli.engine import Demixer, EngineError, chunk_window
from tests.conftest import GainSeparator


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 5000),
    segment=st.integers(2, 700),
    overlap=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9]),
    batch=st.integers(1, 5),
    shifts=st.integers(0, 3),
)
def test_identity_separator_reconstructs_input_for_any_length(
    length, segment, overlap, batch, shifts
):
    rng = np.random.default_rng(length)
    mix = rng.uniform(-1, 1, (2, length)).astype(np.float32)
    demixer = Demixer(
        GainSeparator((1.0, -0.5), segment), overlap=overlap, batch_size=batch, shifts=shifts
    )
    out = demixer.separate(mix)
    assert out.shape == (2, 2, length)
    np.testing.assert_allclose(out[0], mix, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out[1], -0.5 * mix, atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(length=st.integers(1, 4000), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_streaming_in_any_blocks_equals_whole_track(length, cuts):
    rng = np.random.default_rng(length)
    mix = rng.uniform(-1, 1, (2, length)).astype(np.float32)
    demixer = Demixer(GainSeparator((1.0,), 300), overlap=0.5, batch_size=2)
    whole = demixer.separate(mix)
    blocks = np.split(mix, sorted(c % (length + 1) for c in cuts), axis=-1)
    streamed = np.concatenate(list(demixer.stream(blocks)), axis=-1)
    assert streamed.shape == whole.shape
    np.testing.assert_array_equal(streamed, whole)


@pytest.mark.parametrize("length", [1, 2, 499, 500, 501, 997, 44100 * 3 + 7])
def test_exact_lengths_including_one_chunk_and_primes(length):
    mix = np.random.default_rng(0).uniform(-1, 1, (2, length)).astype(np.float32)
    out = Demixer(GainSeparator((1.0,), 500), overlap=0.25).separate(mix)
    assert out.shape == (1, 2, length)
    assert np.abs(out[0] - mix).max() < 1e-6


@pytest.mark.slow
def test_one_hour_track_streams_exactly_in_blocks():
    rate, block = 8000, 8000 * 60
    demixer = Demixer(GainSeparator((1.0,), 8000 * 4), overlap=0.25, batch_size=8)
    rng = np.random.default_rng(1)
    blocks = [rng.uniform(-1, 1, (2, block)).astype(np.float32) for _ in range(60)]
    total, worst = 0, 0.0
    it = iter(blocks)
    pending = []
    for out in demixer.stream(b for b in blocks):
        pending.append(out)
    got = np.concatenate(pending, axis=-1)
    ref = np.concatenate(blocks, axis=-1)
    total, worst = got.shape[-1], np.abs(got[0] - ref).max()
    assert total == 60 * block
    assert worst < 1e-6
    del it, rate


class LopsidedSeparator(GainSeparator):
    """Test-only: left x1, right x0.5, plus a half-wave rectifier, so neither swapping the
    channels nor inverting the polarity leaves its output unchanged."""

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        gains = torch.tensor([1.0, 0.5]).to(mix)[:, None]
        return (mix * gains + 0.25 * mix.clamp(min=0))[:, None]


@pytest.mark.parametrize("overlap, batch", [(0.0, 1), (0.5, 3)])
def test_tta_averages_the_swapped_and_inverted_passes_exactly(overlap, batch):
    mix = np.random.default_rng(3).uniform(-1, 1, (2, 2345)).astype(np.float32)
    model = LopsidedSeparator((1.0,), 400)
    plain = Demixer(model, overlap=overlap, batch_size=batch).separate(mix)[0]
    tta = Demixer(model, overlap=overlap, batch_size=batch, tta=True).separate(mix)[0]
    g = np.array([1.0, 0.5])[:, None]
    relu = np.maximum(mix, 0)
    np.testing.assert_allclose(plain, g * mix + 0.25 * relu, atol=1e-6, rtol=0)
    # pass 1: itself; pass 2: channels swapped in and out; pass 3: -f(-x).
    swapped = g[::-1] * mix + 0.25 * relu
    inverted = g * mix - 0.25 * np.maximum(-mix, 0)
    np.testing.assert_allclose(tta, (plain + swapped + inverted) / 3, atol=1e-6, rtol=0)


def test_window_is_positive_at_both_ends():
    w = chunk_window(10)
    assert w.min() > 0 and w[0] == w[-1] and w.max() == 1.0


class FlakyOOM(GainSeparator):
    """Raises out-of-memory for batches larger than `limit`."""

    def __init__(self, limit):
        super().__init__((1.0,), 100)
        self.limit = limit

    def forward(self, mix):
        if mix.shape[0] > self.limit:
            raise torch.OutOfMemoryError("simulated")
        return super().forward(mix)


def test_out_of_memory_retries_with_smaller_batch_and_says_so():
    messages = []
    demixer = Demixer(FlakyOOM(limit=1), batch_size=8, on_retry=messages.append)
    mix = np.random.default_rng(0).uniform(-1, 1, (2, 2000)).astype(np.float32)
    out = demixer.separate(mix)
    np.testing.assert_allclose(out[0], mix, atol=1e-6)
    assert demixer.batch_size == 1
    assert any("batch size 1" in m for m in messages)


def test_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(EngineError, match="CUDA is not available"):
        Demixer(GainSeparator(), device="cuda")


def test_bad_settings_are_refused():
    with pytest.raises(EngineError):
        Demixer(GainSeparator(), overlap=1.0)
    with pytest.raises(EngineError):
        Demixer(GainSeparator(), batch_size=0)
    with pytest.raises(EngineError, match="fp16"):
        Demixer(GainSeparator(), precision="fp16")
