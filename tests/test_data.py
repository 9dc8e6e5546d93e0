"""RemixDataset: remixed and coherent (real-mix) training examples."""

import numpy as np
import pytest

from sepcli.data import STEMS, RemixDataset
from sepcli.train import TrainSettings

SEGMENT = 100


def numbered_tracks(count: int = 6, length: int = 1000) -> list[np.ndarray]:
    """Track k holds (k + 1) * 10_000 + t in every stem and channel, so a sample names its source."""
    t = np.arange(length, dtype=np.float32)
    return [
        np.broadcast_to((k + 1) * 10_000 + t, (len(STEMS), 2, length)).copy() for k in range(count)
    ]


def sources_of(targets: np.ndarray) -> list[tuple[int, int]]:
    """(track, offset) of each stem of one example, read back from its first sample."""
    first = targets[:, 0, 0].astype(int)
    return [(int(v) // 10_000, int(v) % 10_000) for v in first]


def test_coherent_examples_take_every_stem_from_one_track_at_one_offset():
    data = RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), augment=False, coherent=1.0)
    mixes, targets = data.sample(np.random.default_rng(0), 16)
    for mix, example in zip(mixes, targets):
        assert len(set(sources_of(example))) == 1
        track, start = sources_of(example)[0]
        expected = track * 10_000 + np.arange(start, start + SEGMENT)
        np.testing.assert_array_equal(example[:, 0], np.broadcast_to(expected, (4, SEGMENT)))
        np.testing.assert_allclose(mix, example.sum(axis=0))


def test_remixed_examples_draw_each_stem_independently():
    data = RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), augment=False)
    _, targets = data.sample(np.random.default_rng(0), 16)
    # Four independent draws from 6 tracks x 901 offsets almost never coincide.
    assert all(len(set(sources_of(example))) == 4 for example in targets)


def test_coherent_fraction_sets_the_share_of_real_mixes():
    data = RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), augment=False, coherent=0.3)
    _, targets = data.sample(np.random.default_rng(1), 400)
    share = np.mean([len(set(sources_of(example))) == 1 for example in targets])
    assert 0.23 < share < 0.37


def test_coherent_examples_are_still_augmented_per_stem():
    data = RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), coherent=1.0)
    _, targets = data.sample(np.random.default_rng(2), 8)
    plain = np.abs(targets[:, :, 0, 0])
    gains = plain / np.max(plain, axis=1, keepdims=True)
    assert np.any(gains < 0.99)  # stems of one example got different gains


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_coherent_fraction_outside_0_1_is_refused(value):
    with pytest.raises(ValueError, match="coherent"):
        RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), coherent=value)
    with pytest.raises(ValueError, match="coherent"):
        TrainSettings(coherent=value)
