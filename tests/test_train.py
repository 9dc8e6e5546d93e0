"""`sepcli train`: a few steps on a generated MUSDB folder, exact resume, and learning."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from sepcli import checkpoints
from sepcli.train import EMA, TrainSettings, train
from tests.test_separators import SMALL

TINY = dict(dim=16, depth=1, num_stems=2, sources=["vocals", "bass"], time_transformer_depth=1,
            freq_transformer_depth=1, num_bands=8, dim_head=8, heads=2, attn_dropout=0.0, ff_dropout=0.0,
            mask_estimator_depth=1, mlp_expansion_factor=1, stft_hop_length=512, segment=22050,
            multi_stft_resolutions_window_sizes=[1024, 256], multi_stft_hop_size=256)  # fmt: skip
# musdb's valid split is a fixed list of real track names, so one generated track borrows one.
NAMES = ["Song A", "Song B", "Actions - One Minute Smile"]


def make_wav_musdb(root, seconds=2.0, rate=44100):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for k, name in enumerate(NAMES):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        stems = {
            "vocals": 0.2 * np.sin(2 * np.pi * (440 + 60 * k) * t),
            "drums": 0.05 * rng.standard_normal(t.size),
            "bass": 0.3 * np.sin(2 * np.pi * (55 + 5 * k) * t),
            "other": 0.1 * np.sin(2 * np.pi * 1500 * t),
        }
        for stem, x in stems.items():
            sf.write(folder / f"{stem}.wav", np.stack([x, x], 1), rate, subtype="FLOAT")
        sf.write(
            folder / "mixture.wav", np.stack([sum(stems.values())] * 2, 1), rate, subtype="FLOAT"
        )


def run(root, out, steps, resume=False, lr=3e-3, stop_after=None, arch="mel-roformer", config=None,
        init=None):  # fmt: skip
    settings = TrainSettings(
        steps=steps,
        batch_size=2,
        segment=0.5,
        lr=lr,
        warmup=2,
        valid_every=3,
        ema=0.9,
        seed=3,
        threads=1,
    )
    return train(
        arch,
        root,
        out,
        TINY if config is None else config,
        settings,
        is_wav=True,
        device_name="cpu",
        resume=resume,
        progress=False,
        log=lambda m: None,
        stop_after=stop_after,
        init=init,
    )


def test_a_few_steps_write_checkpoints_metrics_and_curves(tmp_path):
    make_wav_musdb(tmp_path / "db")
    summary = run(tmp_path / "db", tmp_path / "run", steps=3)
    assert summary["steps"] == 3
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and set(rows[-1]["valid_sdr"]) == {
        "vocals",
        "bass",
    }
    meta = checkpoints.read_metadata(tmp_path / "run" / "best.safetensors")
    assert meta["provenance"]["steps"] == 3 and meta["provenance"]["seed"] == 3
    assert set(meta["provenance"]["valid_global_sdr"]) == {"vocals", "bass"}
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert checkpoints.load_model(str(tmp_path / "run" / "last.safetensors")).model.sources == (
        "vocals",
        "bass",
    )
    # Forgetting --resume must not start over in the same folder, replacing `best` and the log.
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="already holds a training run .*--resume"):
        run(tmp_path / "db", tmp_path / "run", steps=3)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    make_wav_musdb(tmp_path / "db")
    run(tmp_path / "db", tmp_path / "straight", steps=6)
    run(tmp_path / "db", tmp_path / "halves", steps=6, stop_after=3)  # as if interrupted
    run(tmp_path / "db", tmp_path / "halves", steps=6, resume=True)
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "halves" / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    assert a["numpy_rng"] == b["numpy_rng"] and a["schedule"] == b["schedule"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for key, value in a["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(value[name], b["optimizer"]["state"][key][name])
    losses = {}
    for name in ("straight", "halves"):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
        losses[name] = [r["loss"] for r in rows]
    assert losses["halves"] == losses["straight"]


@pytest.mark.parametrize("arch", ["bs-roformer", "complex-mask", "ibm-cnn"])
def test_other_architectures_train_through_the_same_loop(tmp_path, arch):
    """The IBM-CNN works at 8 kHz here: the trainer resamples MUSDB to the model's rate."""
    make_wav_musdb(tmp_path / "db")
    summary = run(tmp_path / "db", tmp_path / "run", steps=3, arch=arch, config=SMALL[arch])
    assert summary["steps"] == 3
    loaded = checkpoints.load_model(str(tmp_path / "run" / "best.safetensors"))
    assert loaded.architecture == arch
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[-1]["valid_sdr"]) == set(loaded.model.sources)
    assert all(np.isfinite(v) for v in rows[-1]["valid_sdr"].values())


def tiny_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Half a second of a 440 Hz "vocal" over a 55 Hz "bass": mix [1, 2, T], targets [1, 2, 2, T]"""
    t = torch.arange(22050) / 44100
    vocals = 0.2 * torch.sin(2 * torch.pi * 440 * t).expand(1, 2, -1)
    bass = 0.3 * torch.sin(2 * torch.pi * 55 * t).expand(1, 2, -1)
    return vocals + bass, torch.stack([vocals, bass], dim=1)


def test_loss_falls_when_overfitting_a_tiny_case():
    torch.manual_seed(0)
    model = checkpoints.build_model("mel-roformer", TINY)
    mix, targets = tiny_case()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = model.loss(mix, targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_ema_follows_the_weights_early_and_averages_later():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.995)
    torch.nn.init.ones_(model.weight)
    ema.update(model, step=0)  # decay 0.1: mostly the new weights
    assert ema.state["weight"].item() == pytest.approx(0.9)
    ema.update(model, step=10_000)  # warm-up over: the configured decay
    assert ema.state["weight"].item() == pytest.approx(0.9 + 0.1 * 0.005)


def test_init_from_a_shallower_mel_roformer_starts_from_its_exact_output(tmp_path):
    make_wav_musdb(tmp_path / "db")
    run(tmp_path / "db", tmp_path / "shallow", steps=3)
    init = tmp_path / "shallow" / "best.safetensors"
    deeper = {**TINY, "time_transformer_depth": 2, "freq_transformer_depth": 2}
    run(tmp_path / "db", tmp_path / "same", steps=1, init=init)
    run(tmp_path / "db", tmp_path / "grown", steps=1, init=init, config=deeper)

    def first_loss(name):
        return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    # Same seed, same first batch: the grown model's first loss is the shallow model's.
    assert first_loss("grown") == pytest.approx(first_loss("same"), rel=1e-6)
    assert first_loss("same") != pytest.approx(first_loss("shallow"), rel=1e-3)
    meta = checkpoints.read_metadata(tmp_path / "grown" / "last.safetensors")
    assert meta["config"]["time_transformer_depth"] == 2


def test_a_wrong_musdb_root_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    from tests.test_cli_separate import run as cli

    (tmp_path / "music").mkdir()
    out = tmp_path / "runs" / "x"
    code, _, err = cli(capsys, monkeypatch, "train", "mel-roformer", "--musdb", tmp_path / "music",
                       "--out", out, "-q")  # fmt: skip
    assert code == 2
    assert err.strip() == (
        f"sepcli: error: no MUSDB tracks found in {tmp_path / 'music'} (subset train, split train)"
        f": there is no folder {tmp_path / 'music' / 'train'}"
    )
    assert not out.exists() and not out.parent.exists()
    # MUSDB18-HQ stems without --is-wav: the error names the flag.
    (tmp_path / "music" / "train" / "Song").mkdir(parents=True)
    sf.write(tmp_path / "music" / "train" / "Song" / "mixture.wav", np.zeros((100, 2)), 44100)
    code, _, err = cli(capsys, monkeypatch, "train", "mel-roformer", "--musdb", tmp_path / "music",
                       "--out", out, "-q")  # fmt: skip
    assert code == 2 and err.strip().endswith("add --is-wav"), err
    assert not out.exists()


def test_a_missing_config_file_and_an_out_that_is_a_file_are_one_line_errors(
    tmp_path, capsys, monkeypatch
):
    from tests.test_cli_separate import run as cli

    make_wav_musdb(tmp_path / "music")
    base = ("train", "mel-roformer", "--musdb", tmp_path / "music", "-q")
    missing = tmp_path / "presets" / "mine.yaml"
    code, _, err = cli(capsys, monkeypatch, *base, "--out", tmp_path / "r", "--config", missing)
    assert (code, err.strip()) == (2, f"sepcli: error: config file {missing} does not exist")
    code, _, err = cli(capsys, monkeypatch, *base, "--out", tmp_path / "r", "--config", "huge")
    assert code == 2 and "no preset" in err and "huge" in err, err
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    code, _, err = cli(capsys, monkeypatch, *base, "--out", taken)
    assert (code, err.strip()) == (
        2,
        f"sepcli: error: --out {taken}: {taken} is a file, not a folder",
    )
    code, _, err = cli(capsys, monkeypatch, *base, "--out", taken / "run")
    assert (code, err.strip()) == (
        2,
        f"sepcli: error: --out {taken / 'run'}: {taken} is a file, not a folder",
    )
    assert taken.read_text() == "keep me"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("on_valid", [False, True])
def test_train_on_valid_adds_the_valid_tracks_to_the_remix_pool(tmp_path, monkeypatch, on_valid):
    import sepcli.train as train_module

    pools = []

    class Recording(train_module.RemixDataset):
        def __init__(self, tracks, *args, **kwargs):
            ((_, found),) = tracks.values()  # one dataset: (weight, its tracks)
            pools.append([np.stack([t.targets[a] for a in ("vocals", "drums", "bass", "other")])
                          for t in found])  # fmt: skip
            super().__init__(tracks, *args, **kwargs)

    monkeypatch.setattr(train_module, "RemixDataset", Recording)
    make_wav_musdb(tmp_path / "db")
    settings = TrainSettings(steps=1, batch_size=1, segment=0.5, warmup=0, valid_every=1, seed=3,
                             threads=1, train_on_valid=on_valid)  # fmt: skip
    train("mel-roformer", tmp_path / "db", tmp_path / "run", TINY, settings, is_wav=True,
          device_name="cpu", progress=False, log=lambda m: None)  # fmt: skip
    # Two generated tracks fall in the train split, the one with a real valid-split name in valid;
    # they differ in their vocal tone, so the pool's first samples tell them apart.
    assert len(pools[0]) == (3 if on_valid else 2)
    valid_vocal_hz = 440 + 60 * NAMES.index("Actions - One Minute Smile")
    t = np.arange(200) / 44100
    expected = np.float32(0.2 * np.sin(2 * np.pi * valid_vocal_hz * t)).astype(np.float16)
    holds_valid = [np.allclose(s[0, 0, :200], expected, atol=1e-3) for s in pools[0]]
    assert sum(holds_valid) == int(on_valid)
    data = checkpoints.read_metadata(tmp_path / "run" / "last.safetensors")["provenance"]["data"]
    assert data.startswith(
        f"musdb:db ({2 + on_valid} tracks, 0 min, weight 1)"
        + " (valid tracks included)" * on_valid
        + "; validation on 1 held-out tracks; remixed"
    ), data
