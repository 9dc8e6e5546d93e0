"""Ensembles: several separators in one streaming pass, combined stem by stem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sepcli import api, checkpoints, ensemble
from sepcli.engine import Demixer, EngineError
from sepcli.ensemble import Ensemble, _SpectralCombiner, combine_spectra
from tests.conftest import TINY_MEL_ROFORMER, GainSeparator, write_tone


def song(seconds: float, rate: int = 44100, seed: int = 0) -> np.ndarray:
    """Stereo test music band-limited below 6 kHz, so that 16 kHz models see all of it."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freqs = rng.uniform(80, 6000, size=(2, 24))
    phases = rng.uniform(0, 2 * np.pi, size=(2, 24))
    audio = np.sin(2 * np.pi * freqs[..., None] * t + phases[..., None]).sum(axis=1)
    return (0.3 * audio / np.abs(audio).max()).astype(np.float32)


def blocks(audio: np.ndarray, sizes=(1000, 4410, 17, 30000, 999)) -> list[np.ndarray]:
    """Uneven blocks, as a decoder hands them out."""
    out, at, k = [], 0, 0
    while at < audio.shape[-1]:
        out.append(audio[:, at : at + sizes[k % len(sizes)]])
        at += sizes[k % len(sizes)]
        k += 1
    return out


def streamed(engine, audio: np.ndarray) -> np.ndarray:
    return np.concatenate(list(engine.stream(blocks(audio))), axis=-1)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A random 4-stem Mel-RoFormer and a random vocals-only one, as native checkpoints."""
    folder = tmp_path_factory.mktemp("ens")
    paths = {}
    for name, stems in (("four", ["vocals", "drums", "bass", "other"]), ("vox", ["vocals"])):
        torch.manual_seed(len(stems))
        config = {**TINY_MEL_ROFORMER, "num_stems": len(stems), "sources": stems}
        model = checkpoints.build_model("mel-roformer", config)
        paths[name] = folder / f"{name}.safetensors"
        checkpoints.save_checkpoint(paths[name], model, {"note": "random weights for tests"})
    return paths


@pytest.mark.parametrize("algorithm", ensemble.ALGORITHMS)
def test_an_ensemble_of_one_model_is_that_model_bit_for_bit(tiny_models, algorithm):
    model = checkpoints.load_model(str(tiny_models["four"])).model
    audio = song(3.0)
    alone = streamed(Demixer(model, segment=22050, batch_size=2), audio)
    one = Ensemble([Demixer(model, segment=22050, batch_size=2)], algorithm)
    together = streamed(one, audio)
    assert together.dtype == alone.dtype and np.array_equal(together, alone)


def test_avg_wave_of_two_fixed_gain_separators_is_the_weighted_gain():
    a = Demixer(GainSeparator((1.0, 0.5), segment=4000), batch_size=3)
    b = Demixer(GainSeparator((0.5, 0.25), segment=3000), overlap=0.5)
    audio = song(2.0)
    out = streamed(Ensemble([a, b], "avg_wave", [2, 1]), audio)
    assert out.shape == (2, 2, audio.shape[-1])
    np.testing.assert_allclose(out[0], audio * (2 * 1.0 + 0.5) / 3, atol=1e-6)
    np.testing.assert_allclose(out[1], audio * (2 * 0.5 + 0.25) / 3, atol=1e-6)
    # median of three: the middle gain
    c = Demixer(GainSeparator((0.1, 2.0), segment=5000))
    mid = streamed(Ensemble([a, b, c], "median_wave"), audio)
    np.testing.assert_allclose(mid[0], audio * 0.5, atol=1e-6)
    np.testing.assert_allclose(mid[1], audio * 0.5, atol=1e-6)


def test_max_and_min_fft_pick_bin_by_bin_the_larger_and_smaller_magnitude():
    rng = np.random.default_rng(1)
    spectra = rng.normal(size=(3, 2, 5, 7)) + 1j * rng.normal(size=(3, 2, 5, 7))
    picked = combine_spectra(spectra, [1, 1, 1], "max_fft")
    least = combine_spectra(spectra, [1, 1, 1], "min_fft")
    for c, f, b in np.ndindex(2, 5, 7):
        k = np.abs(spectra[:, c, f, b]).argmax()
        assert picked[c, f, b] == spectra[k, c, f, b]  # phase included
        assert least[c, f, b] == spectra[np.abs(spectra[:, c, f, b]).argmin(), c, f, b]


def _combined(algorithm: str, stack: np.ndarray, sizes=(700, 5000, 3, 2048, 12000)) -> np.ndarray:
    combiner = _SpectralCombiner(algorithm, [1.0] * stack.shape[0])
    out, at, k = [], 0, 0
    while at < stack.shape[-1]:
        n = sizes[k % len(sizes)]
        out.append(combiner.push(stack[..., at : at + n]))
        at, k = at + n, k + 1
    out.append(combiner.finish())
    return np.concatenate(out, axis=-1)


def test_the_streaming_stft_gives_back_what_it_gets_whatever_the_blocks():
    audio = song(1.5)
    for algorithm in ("avg_fft", "max_fft", "min_fft"):
        out = _combined(algorithm, np.stack([audio, audio]))
        assert out.shape == audio.shape
        np.testing.assert_allclose(out, audio, atol=1e-6)


def test_max_fft_keeps_each_models_louder_partial_and_min_fft_the_quieter():
    rate = 44100
    t = np.arange(rate) / rate
    low, high = np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 5000 * t)
    a = np.stack([0.5 * low + 0.1 * high] * 2)  # model A: loud low partial, quiet high one
    b = np.stack([0.2 * low + 0.4 * high] * 2)  # model B: the other way round
    inner = slice(4096, -4096)  # the track's ends see half a window of zeros
    for algorithm, expected in (("max_fft", 0.5 * low + 0.4 * high),
                                ("min_fft", 0.2 * low + 0.1 * high)):  # fmt: skip
        out = _combined(algorithm, np.stack([a, b]).astype(np.float32))
        for channel in out:
            np.testing.assert_allclose(channel[inner], expected[inner], atol=2e-3)


def test_models_at_different_rates_line_up_to_the_sample():
    audio = song(3.0)  # at 44.1 kHz, band-limited below 6 kHz
    rates = (44100, 16000, 48000)
    members = [Demixer(GainSeparator((1.0,), segment=8000, sample_rate=r)) for r in rates]
    for algorithm in ("avg_wave", "max_fft"):
        out = streamed(Ensemble(members, algorithm), audio)[0]
        assert out.shape == audio.shape  # sample-exact length
        inner = slice(2000, -2000)
        assert np.abs(out[:, inner] - audio[:, inner]).max() < 5e-3
        lags = np.arange(-20, 21)
        corr = [np.dot(np.roll(out[0], lag)[inner], audio[0, inner]) for lag in lags]
        assert lags[int(np.argmax(corr))] == 0  # no shift between the members


def test_stems_are_matched_by_name_and_the_residual_comes_after_the_combination(tiny_models):
    four = api.load(tiny_models["four"], device="cpu", precision="fp32", segment=0.5)
    vox = api.load(tiny_models["vox"], device="cpu", precision="fp32", segment=0.5)
    both = api.load_ensemble([tiny_models["four"], tiny_models["vox"]], algorithm="avg_wave",
                             weights=[1, 3], device="cpu", precision="fp32", segment=0.5)  # fmt: skip
    assert both.sources == ("vocals", "drums", "bass", "other")
    audio = song(2.0)
    a, b = four.separate(audio, 44100), vox.separate(audio, 44100)
    out = both.separate(audio, 44100, stems=["vocals", "drums", "no_vocals"])
    np.testing.assert_allclose(out["vocals"], (a["vocals"] + 3 * b["vocals"]) / 4, atol=1e-6)
    assert np.array_equal(out["drums"], a["drums"])  # only one model has drums
    # The members do not split the mix the same way: no_vocals is the mix minus the vocals.
    np.testing.assert_allclose(out["no_vocals"], audio - out["vocals"], atol=1e-6)


def test_a_vocal_model_and_a_four_stem_model_write_the_right_stems(tmp_path, tiny_models):
    write_tone(tmp_path / "song.wav", 1.5)
    args = [sys.executable, "-m", "sepcli", "separate", str(tmp_path / "song.wav"), "-m",
            str(tiny_models["vox"]), "-m", str(tiny_models["four"]), "--ensemble", "max_fft",
            "-o", str(tmp_path / "out"), "--json", "--bit-depth", "32"]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["model"] == "max_fft-vox+four"
    folder = tmp_path / "out" / "max_fft-vox+four" / "song"
    assert sorted(p.name for p in folder.iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"
    ]  # fmt: skip
    assert all(sf.info(p).frames == int(1.5 * 44100) for p in folder.iterdir())
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)  # resumes
    assert json.loads(rerun.stdout)["tracks"][0]["status"] == "skipped"
    two = subprocess.run([*args[:-2], "--two-stems", "vocals", "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr
    stems = sorted((tmp_path / "two" / "max_fft-vox+four" / "song").iterdir())
    assert [p.name for p in stems] == ["no_vocals.wav", "vocals.wav"]


def test_the_ensemble_streams_and_its_output_comes_before_the_input_ends():
    members = [Demixer(GainSeparator((1.0, 0.5), segment=2000)),
               Demixer(GainSeparator((0.5, 1.0), segment=3000, sample_rate=22050))]  # fmt: skip
    audio = song(5.0)
    fed = {"n": 0}

    def source():
        for block in blocks(audio, sizes=(4410,)):
            fed["n"] += block.shape[-1]
            yield block

    stream = Ensemble(members, "max_fft").stream(source())
    first = next(stream)
    assert first.shape[-1] > 0 and fed["n"] < audio.shape[-1] // 4  # no whole-track buffering
    rest = sum(b.shape[-1] for b in stream)
    assert first.shape[-1] + rest == audio.shape[-1]


def test_bad_ensembles_are_refused_in_one_line(tmp_path, tiny_models):
    one = [Demixer(GainSeparator())]
    with pytest.raises(EngineError, match="unknown ensemble"):
        Ensemble(one, "max_wave")
    with pytest.raises(EngineError, match="2 weights for 1 models"):
        Ensemble(one, "avg_wave", [1, 2])
    with pytest.raises(EngineError, match="positive"):
        Ensemble(one * 2, "avg_wave", [1, -1])
    write_tone(tmp_path / "a.wav", 0.5)
    for extra, message in ((["--weights", "2,x"], "--weights 2,x"),
                           (["--ensemble", "loud"], "unknown ensemble 'loud'"),
                           (["--config", str(tmp_path / "a.yaml")], "community checkpoint")):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "sepcli", "separate", str(tmp_path / "a.wav"),
                               "-m", str(tiny_models["vox"]), "-m", "default", *extra,
                               "-o", str(tmp_path / "o")], capture_output=True, text=True)  # fmt: skip
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_evaluate_scores_an_ensemble_once_and_keys_its_cache_on_every_part(
    tmp_path, capsys, monkeypatch, tiny_models
):
    from tests.test_cli_separate import run
    from tests.test_datasets import karaoke

    root = karaoke(tmp_path / "k", singers=("ann",), rate=16000)
    common = ["--data", f"stems:{root}", "--score-rate", "16000", "-q", "--jobs", "1"]
    four, vox = str(tiny_models["four"]), str(tiny_models["vox"])

    def scores(out: Path) -> dict:
        return json.loads((out / "summary.json").read_text())["stems"]

    assert run(capsys, monkeypatch, "evaluate", "-m", four, "--out", tmp_path / "alone",
               *common)[0] == 0  # fmt: skip
    code, _, err = run(capsys, monkeypatch, "evaluate", "-m", four, "--ensemble", "avg_wave",
                       "--out", tmp_path / "one", *common)  # fmt: skip
    assert code == 0, err
    assert scores(tmp_path / "one") == scores(tmp_path / "alone")  # an ensemble of one

    args = ["evaluate", "-m", four, "-m", vox, "--ensemble", "max_fft", "--out", tmp_path / "e"]
    assert run(capsys, monkeypatch, *args, *common)[0] == 0
    first = scores(tmp_path / "e")
    assert first != scores(tmp_path / "alone")
    cached = sorted((tmp_path / "e" / "tracks").glob("*.scores.json"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert run(capsys, monkeypatch, *args, *common)[0] == 0  # scored once: all from the cache
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert run(capsys, monkeypatch, *args, "--weights", "3,1", *common)[0] == 0
    assert [p.stat().st_mtime_ns for p in cached] != stamps  # other weights: scored again
    assert run(capsys, monkeypatch, *args[:-2], "--ensemble", "min_fft", "--out",
               tmp_path / "e", *common)[0] == 0  # fmt: skip
    assert scores(tmp_path / "e") != first
