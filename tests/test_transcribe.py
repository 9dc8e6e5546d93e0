"""`sepcli train melody`, `sepcli transcribe` and `sepcli evaluate --task melody`, on generated
karaoke clips with pitch labels (a sung tone whose pitch is known, over noise)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from models.melody import MelodyConfig, MelodyTranscriber
from sepcli import melody, melody_train, transcribe
from tests.conftest import TINY_MEL_ROFORMER


def sung_clip(folder: Path, midi: float, seconds: float = 2.0, rate: int = 16000) -> None:
    """A MIR-1K-like clip: a voice at `midi` from 0.4 s to the end - 0.4 s, noise under it."""
    folder.mkdir(parents=True)
    t = np.arange(int(seconds * rate)) / rate
    on = (t >= 0.4) & (t < seconds - 0.4)
    hz = 440 * 2 ** ((midi - 69) / 12)
    voice = 0.3 * np.sin(2 * np.pi * hz * t) * on
    rng = np.random.default_rng(int(midi))
    sf.write(folder / "vocals.wav", voice, rate)
    sf.write(folder / "accompaniment.wav", 0.02 * rng.standard_normal(len(t)), rate)
    frames = 0.02 + 0.02 * np.arange(int(seconds / 0.02) - 1)
    labels = np.where((frames >= 0.4) & (frames < seconds - 0.4), midi, 0)
    (folder / "pitch.pv").write_text("".join(f"{v:g}\n" for v in labels))


def cli(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sepcli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def karaoke(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("karaoke")
    for singer, pitches in (("ann", (57, 60)), ("bob", (62,)), ("val", (59,))):
        for k, midi in enumerate(pitches):
            sung_clip(root / f"{singer}_1_{k:02d}", midi)
    return root


def test_train_melody_fine_tunes_a_separator_and_resumes(tmp_path, karaoke, tiny_checkpoint):
    out = tmp_path / "run"
    args = ["train", "melody", "--data", f"stems:{karaoke}", "--init", tiny_checkpoint, "--out",
            out, "--valid", "val_*", "--batch-size", "2", "--segment", "1.0", "--valid-every",
            "3", "-q"]  # fmt: skip
    first = cli(*args, "--steps", "3")
    assert first.returncode == 0, first.stderr
    assert "overall accuracy" in first.stderr  # validation on the held-out singer
    # the best checkpoint's voicing threshold was chosen on the held-out singer
    assert "voicing threshold" in first.stderr
    _, best, best_meta = transcribe.load_melody(str(out / "best.safetensors"))
    calibration = best_meta["provenance"]["voicing_calibration"]
    assert calibration["clips"] == 1
    assert best.config.voicing_threshold == calibration["threshold"]
    assert 0.05 <= calibration["threshold"] <= 0.95
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and "valid" in records[-1]
    name, model, meta = transcribe.load_melody(str(out / "last.safetensors"))
    assert meta["provenance"]["steps"] == 3
    # val_* is held out: never trained on
    assert "3 training clips, 1 validation clips" in meta["provenance"]["data"]
    resumed = cli(*args, "--steps", "5", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 5
    bad = cli("train", "melody", "--data", f"stems:{karaoke}", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "--init" in bad.stderr


def test_train_melody_keeps_the_step_with_the_best_score_named_by_select_by(
    tmp_path, karaoke, tiny_checkpoint, monkeypatch
):
    """Validation scripted per step: overall accuracy peaks at step 2, raw pitch at step 1."""
    from sepcli import datasets

    scripted = [(0.9, 0.5), (0.6, 0.7), (0.8, 0.6)]  # (raw pitch, overall) at steps 1, 2, 3
    spec = datasets.DataSpec("stems", karaoke, valid=("val_*",))
    for select_by, chosen in (("overall_accuracy", 2), ("raw_pitch_accuracy", 1)):
        scores = iter(scripted)

        def validate(model, clips):
            raw, overall = next(scores)
            return {"raw_pitch_accuracy": raw, "raw_chroma_accuracy": raw, "voicing_recall": 1.0,
                    "voicing_false_alarm": 0.0, "overall_accuracy": overall}  # fmt: skip

        monkeypatch.setattr(melody_train, "validate", validate)
        settings = melody_train.MelodySettings(steps=3, batch_size=2, segment=1.0,
                                               valid_every=1, select_by=select_by)  # fmt: skip
        out = tmp_path / select_by
        melody_train.train_melody(spec, str(tiny_checkpoint), out, settings)
        _, _, meta = transcribe.load_melody(str(out / "best.safetensors"))
        assert meta["provenance"]["steps"] == chosen
        assert meta["provenance"]["settings"]["select_by"] == select_by
    with pytest.raises(ValueError, match="select_by"):
        melody_train.MelodySettings(select_by="voicing_false_alarm")  # lower is better: refused


def test_ema_saves_the_moving_average_of_the_weights_and_resumes_it(
    tmp_path, karaoke, tiny_checkpoint
):
    """ema 0.5 over 3 steps: the first update copies the weights w1, then each step
    averages, so the saved model is 0.25 w1 + 0.25 w2 + 0.5 w3. An interrupted run resumes
    its average from state.pt: the same weights as a run that never stopped."""
    from sepcli import datasets

    spec = datasets.DataSpec("stems", karaoke, valid=("val_*",))
    settings = melody_train.MelodySettings(steps=3, batch_size=2, segment=1.0, valid_every=1,
                                           ema=0.5)  # fmt: skip
    trained: list[dict[str, torch.Tensor]] = []  # the weights as trained, after each step

    def keep(step: int, record: dict) -> None:
        trained.append(torch.load(tmp_path / "run" / "state.pt", weights_only=True)["model"])

    melody_train.train_melody(spec, str(tiny_checkpoint), tmp_path / "run", settings,
                              on_step=keep)  # fmt: skip
    w1, w2, w3 = trained
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    key = "classifier.weight"  # the default head's (no salience map on a separator's trunk)
    expected = 0.25 * w1[key] + 0.25 * w2[key] + 0.5 * w3[key]
    assert not torch.allclose(w3[key], expected, atol=1e-6)  # the steps did move the weights
    torch.testing.assert_close(state["ema"][f"module.{key}"], expected)
    _, saved, meta = transcribe.load_melody(str(tmp_path / "run" / "last.safetensors"))
    torch.testing.assert_close(saved.state_dict()[key], expected, atol=2e-3, rtol=2e-3)  # float16
    assert meta["provenance"]["settings"]["ema"] == 0.5

    def stop_after_two(step: int, record: dict) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        melody_train.train_melody(spec, str(tiny_checkpoint), tmp_path / "cut", settings,
                                  on_step=stop_after_two)  # fmt: skip
    melody_train.train_melody(spec, str(tiny_checkpoint), tmp_path / "cut", settings, resume=True)
    resumed = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    torch.testing.assert_close(resumed["ema"][f"module.{key}"], expected)
    with pytest.raises(ValueError, match="ema"):
        melody_train.MelodySettings(ema=1.0)


@pytest.fixture(scope="module")
def melody_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    trunk = {k: v for k, v in TINY_MEL_ROFORMER.items() if k not in ("num_stems", "sources")}
    model = MelodyTranscriber(MelodyConfig.from_dict(trunk))
    path = tmp_path_factory.mktemp("mel") / "tiny-melody.safetensors"
    transcribe.save_melody(path, model, {"note": "random weights for tests"})
    return path


def test_train_melody_gives_a_melody_model_a_new_head_on_its_frozen_trunk(
    tmp_path, karaoke, melody_checkpoint
):
    """--init a melody model, --config spectral: the first steps train only the new head."""
    out = tmp_path / "run"
    band = tmp_path / "band" / "song"  # an accompaniment dataset: its vocals are left out
    band.mkdir(parents=True)
    noise = 0.1 * np.random.default_rng(0).standard_normal((44100, 2))
    sf.write(band / "drums.wav", noise, 44100)
    sf.write(band / "vocals.wav", noise, 44100)
    proc = cli("train", "melody", "--data", f"stems:{karaoke}", "--init", melody_checkpoint,
               "--config", "spectral", "--out", out, "--valid", "val_*", "--batch-size", "2",
               "--segment", "1.0", "--steps", "2", "--accompaniment", f"stems:{band.parent}:2",
               "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, old, _ = transcribe.load_melody(str(melody_checkpoint))
    _, new, meta = transcribe.load_melody(str(out / "last.safetensors"))
    assert new.config.spectral_bins == 186 and new.config.head_hidden == 512
    assert meta["provenance"]["head"]["spectral_context"] == 2
    assert meta["provenance"]["settings"]["head_only_steps"] == 200
    assert meta["provenance"]["accompaniments"] == ["stems:band: 1 tracks, weight 2"]
    # full-precision weights after the 2 steps: the trunk's untouched, the new head's trained
    state = torch.load(out / "state.pt", weights_only=True)["model"]
    trunk = [k for k in old.state_dict() if k.startswith("trunk.")]
    assert trunk and all(torch.equal(state[k], old.state_dict()[k]) for k in trunk)
    assert state["band_head.1.weight"].shape[0] == 32 != old.band_head[1].weight.shape[0]
    torch.manual_seed(0)  # the head's initial weights, as build_model drew them
    fresh = melody_train.build_model(
        str(melody_checkpoint), melody_train.load_preset("spectral")[0]
    )
    assert not torch.equal(state["classifier.2.weight"], fresh.state_dict()["classifier.2.weight"])
    bad = cli("train", "melody", "--data", f"stems:{karaoke}", "--init", melody_checkpoint,
              "--config", "huge", "--out", tmp_path / "x")  # fmt: skip
    assert bad.returncode == 2 and "no melody preset 'huge'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_transcribe_writes_melody_and_notes_resumes_and_fails_alone(tmp_path, karaoke,
                                                                   melody_checkpoint):  # fmt: skip
    music = tmp_path / "music"
    (music / "sub").mkdir(parents=True)
    audio, rate = sf.read(karaoke / "ann_1_00" / "vocals.wav")
    sf.write(music / "sub" / "song.flac", audio, rate)
    (music / "broken.wav").write_text("no audio")
    args = ["transcribe", music, "-r", "-m", melody_checkpoint, "-o", tmp_path / "out", "--json"]
    proc = cli(*args)
    assert proc.returncode == 1, proc.stderr  # the broken file
    doc = json.loads(proc.stdout)
    status = {Path(t["input"]).name: t["status"] for t in doc["tracks"]}
    assert status == {"broken.wav": "failed", "song.flac": "done"}
    folder = tmp_path / "out" / "tiny-melody" / "sub" / "song"
    assert sorted(p.name for p in folder.iterdir()) == ["melody.csv", "notes.csv", "notes.mid"]
    rows = (folder / "melody.csv").read_text().splitlines()
    assert rows[0] == "time,f0,confidence"
    _, model, _ = transcribe.load_melody(str(melody_checkpoint))
    assert len(rows) - 1 == model.frames(int(len(audio) * 44100 / rate + 0.5))  # one per frame
    times = [float(r.split(",")[0]) for r in rows[1:]]
    assert np.allclose(np.diff(times), 512 / 44100, atol=1e-4)
    melody.read_midi_notes(folder / "notes.mid")  # a readable MIDI file
    assert not (tmp_path / "out" / "tiny-melody" / "broken").exists()
    again = json.loads(cli(*args).stdout)
    assert {Path(t["input"]).name: t["status"] for t in again["tracks"]}["song.flac"] == "skipped"
    (folder / "notes.mid").write_bytes(b"MThd")  # a damaged output is redone
    again = json.loads(cli(*args).stdout)
    assert {Path(t["input"]).name: t["status"] for t in again["tracks"]}["song.flac"] == "done"
    wrong = cli("transcribe", music, "-m", "default", "-o", tmp_path / "o2")
    assert wrong.returncode == 2 and "not a melody model" in wrong.stderr


def test_fast_transcribes_in_one_pass_without_the_models_test_transpositions(tmp_path, karaoke,
                                                                             melody_checkpoint):  # fmt: skip
    """A model with test-time transpositions: `transcribe` hears each track transposed as well
    (its confidence column is the averaged passes'), `--fast` hears it once."""
    _, model, _ = transcribe.load_melody(str(melody_checkpoint))
    model.config = dataclasses.replace(model.config, test_transpositions=(-1.0, 2.0))
    checkpoint = tmp_path / "tta.safetensors"
    transcribe.save_melody(checkpoint, model, {"note": "random weights for tests"})
    audio, rate = sf.read(karaoke / "ann_1_00" / "vocals.wav", dtype="float32")
    sf.write(tmp_path / "song.wav", audio, rate)
    audio, _ = sf.read(tmp_path / "song.wav", dtype="float32")  # as stored (16-bit)
    confidence = {}
    for flag in ("", "--fast"):
        out = tmp_path / f"out{flag}"
        proc = cli("transcribe", tmp_path / "song.wav", "-m", checkpoint, "-o", out, "-q",
                   *([flag] if flag else []))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rows = (out / "tta" / "song" / "melody.csv").read_text().splitlines()[1:]
        confidence[flag] = np.array([float(r.split(",")[2]) for r in rows])
    *_, with_passes = transcribe.transcribe_audio(model, audio[None], rate)
    model.config = dataclasses.replace(model.config, test_transpositions=())
    *_, one_pass = transcribe.transcribe_audio(model, audio[None], rate)
    assert np.allclose(confidence[""], with_passes, atol=2e-4)
    assert np.allclose(confidence["--fast"], one_pass, atol=2e-4)
    assert np.abs(with_passes - one_pass).max() > 2e-3  # 10 times the CSV rounding


def test_evaluate_melody_scores_clips_with_mir_eval(tmp_path, karaoke, melody_checkpoint):
    proc = cli("evaluate", "--task", "melody", "-m", melody_checkpoint, "--data",
               f"stems:{karaoke}", "--tracks", "ann_*", "--out", tmp_path / "res", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert summary["tracks"] == 2 and summary["task"] == "melody"
    assert all(0 <= v <= 1 for v in summary["mean"].values())
    rows = (tmp_path / "res" / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("track,input,raw_pitch_accuracy") and len(rows) == 3
    assert (tmp_path / "res" / "boxplot.png").stat().st_size > 1000


def test_chunked_inference_matches_one_pass_away_from_the_chunk_edges(melody_checkpoint):
    _, model, _ = transcribe.load_melody(str(melody_checkpoint))
    audio = np.random.default_rng(0).standard_normal((2, 44100 * 3)).astype(np.float32) * 0.1
    whole = transcribe.frame_logits(model, audio, chunk_seconds=10.0)
    chunked = transcribe.frame_logits(model, audio, chunk_seconds=1.0)
    assert whole.shape == chunked.shape == (model.frames(audio.shape[-1]), model.config.bins + 1)
    # Chunks see less context, so they differ a little; the decoded pitch mostly agrees.
    agree = np.mean(np.abs(whole.argmax(-1) - chunked.argmax(-1)) <= 2)
    assert agree > 0.5


def test_every_chunk_holds_the_tracks_own_audio_and_the_last_ends_with_it(melody_checkpoint):
    _, model, _ = transcribe.load_melody(str(melody_checkpoint))
    hop, rate = model.hop, model.sample_rate
    # 2.6 s in 1-s chunks: a grid of half-overlapping chunks would leave the last one 60 %
    # silence; the last chunk ends with the track instead (on a whole frame)
    length = int(2.6 * rate) // hop * hop + 7
    audio = np.random.default_rng(1).standard_normal((2, length)).astype(np.float32) * 0.1
    heard = []

    def forward(pieces):
        heard.extend(pieces.clone())
        return type(model).forward(model, pieces)

    model.forward = forward
    logits = transcribe.frame_logits(model, audio, chunk_seconds=1.0)
    chunk = heard[0].shape[-1]
    assert chunk == int(rate) // (2 * hop) * 2 * hop
    starts = [int(np.argmax((audio[0] == piece[0, 0].numpy()))) for piece in heard]
    assert starts[:-1] == list(range(0, length - chunk, chunk // 2))
    assert starts[-1] == (length - chunk) // hop * hop and length - starts[-1] - chunk < hop
    for start, piece in zip(starts, heard):  # each chunk is the track's audio, no padding
        assert torch.equal(piece, torch.from_numpy(audio[:, start : start + chunk]))
    # the last frames are the last chunk's alone, as a pass over the track's tail gives them
    assert logits.shape == (model.frames(length), model.config.bins + 1)
    with torch.inference_mode():
        tail = type(model).forward(
            model, torch.from_numpy(audio[None, :, starts[-1] :][..., :chunk])
        )
    np.testing.assert_allclose(logits[-3:], tail[0, -3:].numpy(), atol=1e-4)


def test_a_melody_checkpoint_is_described_and_refused_as_a_separator(tmp_path, melody_checkpoint):
    info = cli("info", melody_checkpoint)
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    _, model, _ = transcribe.load_melody(str(melody_checkpoint))
    assert meta["architecture"] == "melody"
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())
    sf.write(tmp_path / "a.wav", np.zeros((4410, 2)), 44100)
    proc = cli("separate", tmp_path / "a.wav", "-m", melody_checkpoint, "-o", tmp_path / "o")
    assert proc.returncode == 2 and "sepcli transcribe" in proc.stderr


@pytest.mark.parametrize("hz", [220.0, 330.0])
def test_the_embedded_melody_model_hears_the_pitch_of_a_sung_tone(hz):
    """A harmonic tone with a slight vibrato: its pitch within 30 cents in every frame, and at
    220 Hz voiced. A bare five-harmonic tone is not a voice: at 330 Hz the model, whose head
    hears the spectrum's shape, gives it a voicing probability below 0.1 (real singing at that
    pitch is voiced: the MIR-1K test below), so there only the pitch is checked."""
    _, model, _ = transcribe.load_melody("melody")
    rate = 44100
    t = np.arange(3 * rate) / rate
    tone = sum(0.2 / k * np.sin(2 * np.pi * hz * k * t) for k in range(1, 6))
    tone = (tone * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))).astype(np.float32)
    times, pitch, voicing = transcribe.frame_contour(model, np.stack([tone, tone]), rate)
    assert len(times) == model.frames(len(t))
    assert np.mean(np.abs(pitch - (69 + 12 * np.log2(hz / 440))) < 0.3) > 0.9
    if hz == 220.0:
        _, midi, _ = transcribe.transcribe_audio(model, np.stack([tone, tone]), rate)
        assert np.mean(midi > 0) > 0.8


MIR1K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mir-1k"


@pytest.mark.slow
@pytest.mark.skipif(not MIR1K.exists(), reason="MIR-1K absent")
def test_the_embedded_melody_model_transcribes_held_out_singers():
    """Four clips of the validation singers (never trained on): the 0 dB mix, and the voice
    alone, where nearly nothing but the voice should count as voiced. Measured with the test-time
    transpositions +1..+4: mix raw pitch 94.3 %, overall 81.9 %; voice alone raw pitch 96.8 %,
    false alarm 3.0 % (with -2, -1, +1, +2: 93.5, 77.2, 97.2, 4.0 %; the model of stop 44,
    before the transposed training: 92.9, 81.0, 96.9, 4.5 %; the spectral model before the
    salience map: 85.0, 82.1, 94.2, 1.9 %)."""
    from eval.melody import average, melody_scores
    from sepcli.audio import load

    _, model, _ = transcribe.load_melody("melody")
    mixes, solos = [], []
    for name in ("abjones_1_01", "abjones_2_01", "annar_1_01", "annar_2_01"):
        voice, rate = load(MIR1K / name / "vocals.opus")
        backing, _ = load(MIR1K / name / "accompaniment.opus")
        ref_times, ref_midi = melody.read_pv(MIR1K / name / "pitch.pv")
        ref_hz = melody.midi_to_hz(ref_midi)
        mixes.append(
            melody_scores(
                ref_times, ref_hz, *transcribe.scoring_contour(model, voice + backing, rate)
            )
        )
        solos.append(
            melody_scores(ref_times, ref_hz, *transcribe.scoring_contour(model, voice, rate))
        )
    mix, solo = average(mixes), average(solos)
    assert mix["raw_pitch_accuracy"] > 0.88 and mix["overall_accuracy"] > 0.75
    assert solo["raw_pitch_accuracy"] > 0.93 and solo["voicing_false_alarm"] < 0.08


def test_the_python_api_transcribes_arrays_and_files(tmp_path):
    """`sepcli.load_transcriber` and `transcribe_files`: a sung-like tone at A3 comes back as
    frames at A3 and one long A3 note; files get the CLI's three outputs; bad input is refused
    with the CLI's errors."""
    import sepcli
    from sepcli.audio import AudioError
    from sepcli.checkpoints import CheckpointError

    rate = 44100
    t = np.arange(3 * rate) / rate
    tone = sum(0.2 / k * np.sin(2 * np.pi * 220.0 * k * t) for k in range(1, 6))
    tone = (tone * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))).astype(np.float32)
    full, fast = sepcli.load_transcriber(), sepcli.load_transcriber("melody", fast=True)
    assert full.model.config.test_transpositions == (1.0, 2.0, 3.0, 4.0)
    assert fast.model.config.test_transpositions == ()
    mel = full.transcribe(torch.from_numpy(np.stack([tone, tone])), rate)
    assert len(mel.times) == len(mel.f0) == len(mel.confidence) == full.model.frames(len(t))
    voiced = mel.f0 > 0
    assert voiced.mean() > 0.8
    assert np.abs(12 * np.log2(mel.f0[voiced] / 220.0)).max() < 0.3
    assert [n.pitch for n in mel.notes if n.offset - n.onset > 2.0] == [57]
    sf.write(tmp_path / "a.wav", tone, rate)
    (results,) = list(sepcli.transcribe_files([tmp_path / "a.wav"], model=fast, out=tmp_path / "o"))
    assert results["status"] == "done"
    rows = (tmp_path / "o" / "melody" / "a" / "melody.csv").read_text().splitlines()
    assert len(rows) - 1 == fast.model.frames(len(t))
    assert fast.transcribe(tone, rate).notes[0].pitch == 57  # mono [T] works too
    with pytest.raises(AudioError):
        full.transcribe(np.zeros(0, np.float32), rate)
    with pytest.raises(AudioError):
        full.transcribe(tone, 0)
    with pytest.raises(AudioError):
        full.transcribe((tone * 1000).astype(np.int16), rate)
    with pytest.raises(CheckpointError):
        sepcli.load_transcriber("default")


def test_evaluate_melody_fast_hears_each_clip_once(tmp_path, karaoke, melody_checkpoint):
    """A model with a test-time transposition: `evaluate --task melody` scores what its full
    contour scores, `--fast` what its one-pass contour scores, clip by clip, and they differ."""
    from eval.melody import evaluate_melody
    from sepcli.datasets import eval_tracks

    _, model, _ = transcribe.load_melody(str(melody_checkpoint))
    model.config = dataclasses.replace(model.config, test_transpositions=(2.0,))
    path = tmp_path / "tta.safetensors"
    transcribe.save_melody(path, model, {"note": "random weights for tests"})
    tracks = eval_tracks(karaoke, ["ann_*", "bob_*"])
    scores = {}
    for flag in ("", "--fast"):
        out = tmp_path / f"res{flag}"
        proc = cli("evaluate", "--task", "melody", "-m", path, "--data", f"stems:{karaoke}",
                   "--tracks", "ann_*", "--tracks", "bob_*", "--out", out, "-q",
                   *([flag] if flag else []))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        if flag:
            model.config = dataclasses.replace(model.config, test_transpositions=())
        expected = evaluate_melody(
            lambda mix, rate: transcribe.scoring_contour(model, mix, rate), "x", tracks,
            tmp_path / f"expected{flag}",
        )["mean"]  # fmt: skip
        scores[flag] = json.loads((out / "summary.json").read_text())["mean"]
        for key, value in expected.items():
            assert scores[flag][key] == pytest.approx(value, abs=0.02), (flag, key)
    assert max(abs(scores[""][k] - scores["--fast"][k]) for k in scores[""]) > 0.03
    proc = cli("evaluate", "--data", f"stems:{karaoke}", "--fast")
    assert proc.returncode == 2 and "--fast applies to --task melody" in proc.stderr


def write_melody_results(folder: Path, rows: dict[str, list[float]]) -> None:
    """A results folder as `evaluate --task melody` writes it, from per-clip measures."""
    from eval.melody import MEASURES, average

    folder.mkdir()
    keys = list(MEASURES.values())
    records = [dict(zip(keys, values)) for values in rows.values()]
    summary = {"model": folder.name, "task": "melody", "tracks": len(rows),
               "mean": average(records)}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    lines = ["track,input," + ",".join(keys)]
    lines += [f"{name},sum of stems," + ",".join(map(str, v)) for name, v in rows.items()]
    (folder / "scores.csv").write_text("\n".join(lines) + "\n")


def test_evaluate_compare_gives_melody_folders_clip_by_clip_differences(tmp_path):
    """Three clips in both folders (a fourth only in one): the differences' means, standard
    errors and shares of better clips, voicing false alarm better when lower."""
    from eval import melody_report

    write_melody_results(tmp_path / "old", {
        "a": [0.80, 0.82, 0.90, 0.30, 0.70], "b": [0.60, 0.70, 0.80, 0.20, 0.50],
        "c": [0.90, 0.90, 0.70, 0.10, 0.80], "d": [0.10, 0.10, 0.10, 0.90, 0.10]})  # fmt: skip
    write_melody_results(tmp_path / "new", {
        "a": [0.85, 0.85, 0.90, 0.20, 0.72], "b": [0.70, 0.75, 0.85, 0.25, 0.56],
        "c": [0.88, 0.90, 0.75, 0.10, 0.81]})  # fmt: skip
    diffs = melody_report.paired_differences(tmp_path / "old", tmp_path / "new")
    pitch = np.array([5.0, 10.0, -2.0])
    assert diffs["raw_pitch_accuracy"]["clips"] == 3
    assert diffs["raw_pitch_accuracy"]["mean"] == pytest.approx(pitch.mean())
    assert diffs["raw_pitch_accuracy"]["se"] == pytest.approx(pitch.std(ddof=1) / np.sqrt(3))
    assert diffs["raw_pitch_accuracy"]["better"] == pytest.approx(2 / 3)
    assert diffs["voicing_false_alarm"]["mean"] == pytest.approx((-10 + 5 + 0) / 3)
    assert diffs["voicing_false_alarm"]["better"] == pytest.approx(1 / 3)  # only a went down
    proc = cli("evaluate", "compare", tmp_path / "old", tmp_path / "new")
    assert proc.returncode == 0, proc.stderr
    assert "+4.33 +- 3.48" in proc.stdout  # raw pitch, points
    assert "overall accuracy" in proc.stdout and (tmp_path / "compare.png").stat().st_size > 1000
    (tmp_path / "sep").mkdir()
    (tmp_path / "sep" / "summary.json").write_text(json.dumps({"stems": {}}))
    proc = cli("evaluate", "compare", tmp_path / "old", tmp_path / "sep")
    assert proc.returncode == 2 and "cannot be compared" in proc.stderr
    assert "Traceback" not in proc.stderr
