"""RemixDataset: remixed and coherent (real-mix) training examples, speed changes, mixup."""

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
    mixes, targets, _ = data.sample(np.random.default_rng(0), 16)
    for mix, example in zip(mixes, targets):
        assert len(set(sources_of(example))) == 1
        track, start = sources_of(example)[0]
        expected = track * 10_000 + np.arange(start, start + SEGMENT)
        np.testing.assert_array_equal(example[:, 0], np.broadcast_to(expected, (4, SEGMENT)))
        np.testing.assert_allclose(mix, example.sum(axis=0))


def test_remixed_examples_draw_each_stem_independently():
    data = RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), augment=False)
    _, targets, _ = data.sample(np.random.default_rng(0), 16)
    # Four independent draws from 6 tracks x 901 offsets almost never coincide.
    assert all(len(set(sources_of(example))) == 4 for example in targets)


def test_coherent_fraction_sets_the_share_of_real_mixes():
    data = RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), augment=False, coherent=0.3)
    _, targets, _ = data.sample(np.random.default_rng(1), 400)
    share = np.mean([len(set(sources_of(example))) == 1 for example in targets])
    assert 0.23 < share < 0.37


def test_coherent_examples_are_still_augmented_per_stem():
    data = RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), coherent=1.0)
    _, targets, _ = data.sample(np.random.default_rng(2), 8)
    plain = np.abs(targets[:, :, 0, 0])
    gains = plain / np.max(plain, axis=1, keepdims=True)
    assert np.any(gains < 0.99)  # stems of one example got different gains


# Long enough that the middle half is clear of the resampler's ringing at the segment edges.
LONG = 2000


def slopes(targets: np.ndarray) -> np.ndarray:
    """Source samples advanced per output sample, per example and stem (middle half only)."""
    middle = targets[..., 0, LONG // 4 : 3 * LONG // 4]
    return np.polyfit(np.arange(middle.shape[-1]), middle.reshape(-1, middle.shape[-1]).T, 1)[0]


def test_speed_changes_play_each_stem_faster_or_slower_within_the_bound():
    tracks = numbered_tracks(length=8000)
    data = RemixDataset(tracks, LONG, tuple(STEMS), augment=False, speed=0.2)
    mixes, targets, _ = data.sample(np.random.default_rng(3), 32)
    assert targets.shape == (32, 4, 2, LONG) and mixes.shape == (32, 2, LONG)
    speeds = slopes(targets)
    assert np.all((speeds > 0.79) & (speeds < 1.21))
    assert speeds.min() < 0.9 and speeds.max() > 1.1  # the whole range is used
    np.testing.assert_allclose(mixes, targets.sum(axis=1), rtol=1e-6)


def test_a_coherent_example_changes_the_speed_of_all_its_stems_alike():
    tracks = numbered_tracks(length=8000)
    data = RemixDataset(tracks, LONG, tuple(STEMS), augment=False, coherent=1.0, speed=0.2)
    _, targets, _ = data.sample(np.random.default_rng(4), 16)
    speeds = slopes(targets).reshape(16, 4)
    np.testing.assert_allclose(speeds, speeds[:, :1].repeat(4, axis=1), rtol=1e-4)
    assert np.ptp(speeds[:, 0]) > 0.1


def segments_summed(targets: np.ndarray) -> np.ndarray:
    """How many numbered segments make each stem: each adds 1 to its slope over time."""
    return np.rint(targets[..., 0, 1] - targets[..., 0, 0]).astype(int)


def test_mixup_sums_two_segments_of_the_same_stem_from_random_tracks():
    tracks = numbered_tracks()
    for stem in range(len(STEMS)):
        tracks[0][stem] += stem * 1_000_000  # the stem index shows in the sum too
    data = RemixDataset(tracks, SEGMENT, tuple(STEMS), augment=False, mixup=1.0)
    mixes, targets, _ = data.sample(np.random.default_rng(0), 32)
    assert np.all(segments_summed(targets) == 2)
    np.testing.assert_allclose(mixes, targets.sum(axis=1))
    # Each stem holds only segments of itself: the stem offset appears 0, 1 or 2 times.
    for stem in range(len(STEMS)):
        first = targets[:, stem, 0, 0]
        copies = np.rint(first / 1_000_000).astype(int) if stem else np.zeros(32, int)
        assert set(np.unique(copies)) <= {0, stem, 2 * stem}
        pairs = [int(v) % 1_000_000 // 10_000 for v in first]  # sum of two (track + 1)s
        assert all(2 <= p <= 12 for p in pairs)
        assert len(set(pairs)) > 3  # the two tracks are drawn independently


def test_mixup_probability_sets_the_share_of_summed_stems_and_spares_real_mixes():
    data = RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), augment=False, mixup=0.3)
    _, targets, _ = data.sample(np.random.default_rng(1), 200)
    share = np.mean(segments_summed(targets) == 2)
    assert 0.25 < share < 0.35 and set(np.unique(segments_summed(targets))) == {1, 2}
    real = RemixDataset(
        numbered_tracks(), SEGMENT, tuple(STEMS), augment=False, coherent=1.0, mixup=1.0
    )
    _, targets, _ = real.sample(np.random.default_rng(1), 16)
    assert np.all(segments_summed(targets) == 1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("coherent", -0.1),
        ("coherent", 1.5),
        ("speed", -0.1),
        ("speed", 1.0),
        ("mixup", -0.1),
        ("mixup", 1.5),
    ],
)
def test_a_coherent_fraction_speed_or_mixup_out_of_range_is_refused(name, value):
    with pytest.raises(ValueError, match=name):
        RemixDataset(numbered_tracks(), SEGMENT, tuple(STEMS), **{name: value})
    with pytest.raises(ValueError, match=name):
        TrainSettings(**{name: value})
