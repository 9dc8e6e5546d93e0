"""Datasets beyond MUSDB: stem folders, splits, the cache, remixing across datasets by stem name,
grouped targets for vocals + accompaniment tracks, band limits, and scoring stem folders."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from eval import report
from eval.metrics import nsdr_v3
from eval.musdb import derived_estimates
from sepcli import datasets
from sepcli.data import RemixDataset
from sepcli.datasets import TARGET_ATOMS, DataError, DataSpec, load_tracks, target_groups
from sepcli.losses import framewise_sdr_loss, grouped
from sepcli.train import LossForward, TrainSettings, train
from tests.test_cli_separate import run
from tests.test_train import TINY, make_wav_musdb


def tone(freq: float, seconds: float, rate: int, channels: int, gain: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([gain * np.sin(2 * np.pi * freq * t)] * channels, axis=1)


def stem_folder(root: Path, tracks: dict[str, dict[str, np.ndarray]], rate: int) -> Path:
    for name, stems in tracks.items():
        (root / name).mkdir(parents=True)
        for stem, audio in stems.items():
            sf.write(root / name / f"{stem}.wav", audio, rate, subtype="FLOAT")
    return root


def karaoke(root: Path, singers=("ann", "bob", "cy"), rate: int = 16000) -> Path:
    """MIR-1K-like: mono vocals + accompaniment at 16 kHz, clips named singer_song_clip."""
    tracks = {}
    for k, singer in enumerate(singers):
        for clip in range(2):
            tracks[f"{singer}_1_{clip:02d}"] = {
                "vocals": tone(300 + 50 * k + 10 * clip, 1.0, rate, 1),
                "accompaniment": tone(110, 1.0, rate, 1, 0.1),
            }
    return stem_folder(root, tracks, rate)


def test_a_data_option_names_kind_root_and_weight():
    assert DataSpec.parse("stems:/data/eif:2") == DataSpec("stems", Path("/data/eif"), 2.0)
    assert DataSpec.parse("musdb:/a:b/musdb").root == Path("/a:b/musdb")  # a colon in the root
    for bad in ("stems", "nope:/x", "stems:/x:0", "stems:/x:-1"):
        with pytest.raises(DataError):
            DataSpec.parse(bad)
    spec = DataSpec.from_dict({"kind": "stems", "root": "/m", "valid": "abjones_*", "weight": 3})
    assert spec.valid == ("abjones_*",) and spec.weight == 3.0
    with pytest.raises(DataError, match="unknown data key"):
        DataSpec.from_dict({"kind": "stems", "root": "/m", "vaild": ["x"]})


def test_splits_hold_out_whole_groups_and_excluded_tracks_are_never_read(tmp_path):
    root = karaoke(tmp_path / "k")
    spec = DataSpec("stems", root, valid=("bob_*",), exclude=("cy_*",))
    names = lambda split: sorted(t.name for t in load_tracks(spec, split, 44100, None))  # noqa: E731
    assert names("train") == ["ann_1_00", "ann_1_01"]
    assert names("valid") == ["bob_1_00", "bob_1_01"]
    assert names("all") == ["ann_1_00", "ann_1_01", "bob_1_00", "bob_1_01"]


def test_stem_folders_decode_at_the_model_rate_once_into_the_cache(tmp_path, monkeypatch):
    root = stem_folder(tmp_path / "d", {"song": {
        "vocals": tone(440, 0.5, 48000, 2), "drums": tone(80, 0.5, 48000, 1),
        "bass": tone(55, 0.5, 48000, 2), "other": tone(900, 0.5, 48000, 6)}}, 48000)  # fmt: skip
    spec = DataSpec("stems", root)
    (track,) = load_tracks(spec, "train", 44100, tmp_path / "cache")
    assert track.length == 22050 and track.targets["drums"].shape[0] == 1  # mono stays mono
    assert track.targets["other"].shape[0] == 2  # six channels are averaged to stereo
    assert track.targets["vocals"].dtype == np.float16
    np.testing.assert_allclose(np.asarray(track.targets["vocals"][0, 1000:1100], np.float32),
                               0.2 * np.sin(2 * np.pi * 440 * np.arange(1000, 1100) / 44100),
                               atol=2e-3)  # fmt: skip
    monkeypatch.setattr(datasets, "_decode", lambda *a: pytest.fail("decoded twice"))
    (again,) = load_tracks(spec, "train", 44100, tmp_path / "cache")
    assert np.array_equal(np.asarray(again.targets["bass"]), np.asarray(track.targets["bass"]))


def test_a_silent_bass_is_inside_other(tmp_path):
    root = stem_folder(tmp_path / "d", {"song": {
        "vocals": tone(440, 0.2, 44100, 2), "drums": tone(80, 0.2, 44100, 2),
        "bass": np.zeros((8820, 2)), "other": tone(55, 0.2, 44100, 2)}}, 44100)  # fmt: skip
    (track,) = load_tracks(DataSpec("stems", root), "train", 44100, None)
    assert "bass" not in track.targets and track.atoms["other"] == {"bass", "other"}
    sources = ("vocals", "drums", "bass", "other")
    names = list(track.targets)
    groups = target_groups([track.atoms[n] for n in names], sources)
    named = {tuple(names[t] for t in ts): tuple(sources[s] for s in ss) for ts, ss in groups}
    assert named == {("vocals",): ("vocals",), ("drums",): ("drums",),
                     ("other",): ("bass", "other")}  # fmt: skip


def test_target_groups_meet_any_model():
    four = [TARGET_ATOMS[a] for a in ("vocals", "drums", "bass", "other")]
    two = [TARGET_ATOMS["vocals"], TARGET_ATOMS["accompaniment"]]
    assert target_groups(two, ("vocals", "drums", "bass", "other")) == [
        ([0], [0]),
        ([1], [1, 2, 3]),
    ]
    assert target_groups(four, ("vocals", "accompaniment")) == [([0], [0]), ([1, 2, 3], [1])]
    assert target_groups(four, ("vocals",)) == [([0], [0])]
    assert target_groups(two, ("drums",)) == []  # no drums target to compare with


def test_two_stem_tracks_give_vocals_to_remixes_and_grouped_real_mixes(tmp_path):
    rate = 8000
    root = karaoke(tmp_path / "k", rate=rate)
    karaoke_tracks = load_tracks(DataSpec("stems", root), "train", rate, None)
    four = [np.stack([tone(f, 1.0, rate, 2).T for f in (500, 60, 40, 900)]).astype(np.float32)]
    data = RemixDataset({"musdb": (1.0, RemixDataset(four, 10, ("vocals",)).datasets["musdb"][1]),
                         "k": (1.0, karaoke_tracks)}, 4000, ("vocals", "drums", "bass", "other"),
                        augment=False, coherent=0.5, rate=rate)  # fmt: skip
    mixes, targets, groups = data.sample(np.random.default_rng(0), 64)
    identity = np.eye(4)
    karaoke_rows = sorted([(1, 0, 0, 0), (0, 1, 1, 1)])  # vocals; accompaniment = d + b + o
    kinds = {"identity": 0, "karaoke": 0}
    for mix, target, group in zip(mixes, targets, groups):
        np.testing.assert_allclose(mix, target[group.sum(axis=1) > 0].sum(axis=0), atol=1e-5)
        if np.array_equal(group, identity):
            kinds["identity"] += 1
        else:
            assert sorted(tuple(int(v) for v in row) for row in group if row.any()) == karaoke_rows
            kinds["karaoke"] += 1
    assert kinds["identity"] > 10 and kinds["karaoke"] > 5
    # Remixed vocals come from both datasets: the karaoke singers' pitches show up.
    assert set(data.pools["vocals"][i][1][0][0].dataset for i in range(2)) == {"musdb", "stems:k"}


def test_band_limited_examples_are_low_passed_whole(tmp_path):
    rate = 16000
    dull = stem_folder(tmp_path / "dull", {"a": {"vocals": tone(300, 1.0, rate, 1)}}, rate)
    (track,) = load_tracks(DataSpec("stems", dull), "train", rate, None)
    track.bandwidth = 3000.0  # as the spectrum of a 6 kHz-rate recording would say
    bright = [np.stack([np.random.default_rng(i).standard_normal((2, rate)) * 0.1
                        for i in range(4)]).astype(np.float32)]  # fmt: skip
    musdb = RemixDataset(bright, 10, ("vocals",)).datasets["musdb"][1]
    data = RemixDataset({"m": (1.0, musdb), "d": (1e6, [track])}, 8000,
                        ("vocals", "drums", "bass", "other"), augment=False, rate=rate)  # fmt: skip
    mix, targets, _ = data.example(np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(mix, axis=-1))
    cut = int(3000 / rate * 8000) + 1
    assert spectrum[:, cut:].max() < 1e-3 * spectrum.max()  # the bright drums too
    assert np.abs(np.fft.rfft(targets[1], axis=-1))[:, cut:].max() < 1e-3


def test_the_grouped_loss_compares_summed_estimates_with_grouped_targets():
    torch.manual_seed(0)
    estimate = torch.randn(2, 4, 2, 8000)
    targets = torch.randn(2, 4, 2, 8000)
    groups = torch.zeros(2, 4, 4)
    groups[0] = torch.eye(4)
    groups[1, 0, 0] = 1
    groups[1, 1, 1:] = 1  # accompaniment: drums + bass + other
    rows = groups.sum(-1) > 0
    summed = grouped(estimate, groups)
    assert torch.allclose(summed[1, 1], estimate[1, 1:].sum(0))
    loss = framewise_sdr_loss(summed, targets, frame=4000, rows=rows)
    manual = torch.stack([summed[0], torch.cat([summed[1, :2], targets[1, 2:]])])
    masked_targets = targets.clone()
    assert torch.allclose(loss, framewise_sdr_loss(manual, masked_targets, frame=4000,
                                                   rows=rows))  # fmt: skip

    class Model(torch.nn.Module):
        sample_rate = 4000

        def forward(self, mix):
            return estimate

    forward = LossForward(Model(), "sdr")
    assert torch.allclose(forward(None, targets, groups), loss)


def test_training_on_musdb_and_a_karaoke_folder_validates_on_held_out_singers(tmp_path):
    make_wav_musdb(tmp_path / "db")
    root = karaoke(tmp_path / "k", rate=44100)
    specs = [DataSpec("musdb", tmp_path / "db", is_wav=True),
             DataSpec("stems", root, weight=0.5, valid=("cy_*",))]  # fmt: skip
    settings = TrainSettings(steps=2, batch_size=2, segment=0.5, lr=1e-3, warmup=0, valid_every=2,
                             seed=1, threads=1, loss="sdr", coherent=0.5)  # fmt: skip
    train("mel-roformer", specs, tmp_path / "run", TINY, settings, device_name="cpu",
          progress=False, log=lambda m: None, cache=tmp_path / "cache")  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[-1]["valid_sdr"]) == {"vocals", "bass"}
    meta = json.loads(json.dumps(__import__("sepcli").checkpoints.read_metadata(
        tmp_path / "run" / "last.safetensors")))  # fmt: skip
    data = meta["provenance"]["data"]
    assert "musdb:db (2 tracks" in data and "stems:k (4 tracks" in data, data
    assert "validation on 3 held-out tracks" in data, data


def test_the_cli_takes_data_options_and_a_yaml_data_list(tmp_path, capsys, monkeypatch):
    import yaml

    make_wav_musdb(tmp_path / "db")
    root = karaoke(tmp_path / "k", rate=44100)
    config = {"model": TINY, "training": {"steps": 1, "batch_size": 1, "segment": 0.5,
              "valid_every": 1, "warmup": 0, "threads": 1},
              "data": [{"kind": "musdb", "root": str(tmp_path / "db"), "is_wav": True},
                       {"kind": "stems", "root": str(root), "valid": ["cy_*"]}]}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run(capsys, monkeypatch, "train", "mel-roformer", "--config", tmp_path / "c.yaml",
                       "--out", tmp_path / "r1", "-q")  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, monkeypatch, "train", "mel-roformer", "--out", tmp_path / "r2", "-q")
    assert code == 2 and "no training data" in err
    code, _, err = run(capsys, monkeypatch, "train", "mel-roformer", "--data", "stems:" + str(root),
                       "--out", tmp_path / "r3", "-q")  # fmt: skip
    assert code == 2 and "no validation tracks" in err


def test_nsdr_is_zero_for_the_mixture_and_large_for_the_truth():
    rng = np.random.default_rng(0)
    vocals, accompaniment = rng.standard_normal((2, 16000, 1)) * 0.1
    mix = vocals + accompaniment
    references = {"vocals": vocals, "accompaniment": accompaniment}
    as_mix = nsdr_v3(references, {"vocals": mix, "accompaniment": mix}, mix)
    assert abs(as_mix["vocals"]["nsdr"]) < 1e-6
    truth = nsdr_v3(references, {"vocals": vocals + 1e-3 * accompaniment,
                                 "accompaniment": accompaniment + 1e-3 * vocals}, mix)  # fmt: skip
    assert truth["vocals"]["nsdr"] > 40


def test_gnsdr_weights_clips_by_length_and_accompaniment_estimates_are_derived():
    tracks = [{"length": 100, "scores": {"vocals": {"nsdr": 2.0}}},
              {"length": 300, "scores": {"vocals": {"nsdr": 6.0}}}]  # fmt: skip
    assert report._gnsdr(tracks, "vocals") == pytest.approx(5.0)
    mix = np.ones((4, 1))
    four = {
        s: np.full((4, 1), v) for s, v in zip(("vocals", "drums", "bass", "other"), (1, 2, 3, 4))
    }
    two_refs = {"vocals": mix, "accompaniment": mix}
    assert np.all(derived_estimates(four, two_refs, mix)["accompaniment"] == 9)
    assert np.all(derived_estimates({"vocals": mix * 0.25}, two_refs, mix)["accompaniment"] == 0.75)
    musdb_refs = {**four, "accompaniment": mix}
    assert "accompaniment" not in derived_estimates(four, musdb_refs, mix)


def test_evaluate_scores_a_two_stem_folder_with_gnsdr(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    root = karaoke(tmp_path / "k", singers=("ann",), rate=16000)
    code, _, err = run(capsys, monkeypatch, "evaluate", "-m", tiny_checkpoint, "--data",
                       f"stems:{root}", "--out", tmp_path / "res", "--score-rate", "16000", "-q",
                       "--jobs", "1")  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert set(summary["stems"]) == {"vocals", "accompaniment"}
    assert all(np.isfinite(summary["stems"][s]["gnsdr"]) for s in ("vocals", "accompaniment"))
    assert "GNSDR" in err
    code, _, err = run(capsys, monkeypatch, "evaluate", "-m", tiny_checkpoint, "--data",
                       f"stems:{root}", "--tracks", "zed_*", "--out", tmp_path / "r2")  # fmt: skip
    assert code == 2 and "matches" in err
