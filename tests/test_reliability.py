"""Bad input, faults and interruption: one line naming the file and cause, no partial output."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sepcli import audio, batch, checkpoints
from sepcli.engine import Demixer
from tests.conftest import GainSeparator, write_tone
from tests.test_cli_separate import run

TEMP_MARKERS = (".part", ".tmp", ".raw")


def leftovers(folder: Path) -> list[Path]:
    """Files that look like unfinished writes."""
    return [p for p in folder.rglob("*") if p.is_file() and any(m in p.name for m in TEMP_MARKERS)]


def separate_json(capsys, monkeypatch, checkpoint, out, *inputs, extra=()):
    code, stdout, err = run(capsys, monkeypatch, "separate", *inputs, "-m", checkpoint, "-o", out,
                            "--json", *extra)  # fmt: skip
    assert "Traceback" not in err
    doc = json.loads(stdout) if stdout.strip() else None
    return code, doc, err


def one_line_failure(code, doc, err, name, cause):
    assert code == 1, err
    (track,) = doc["tracks"]
    assert track["status"] == "failed" and track["outputs"] == {}
    assert cause.lower() in track["error"].lower(), track["error"]
    lines = [line for line in err.splitlines() if name in line and "fail" in line.lower()]
    assert lines, err


# ---------------------------------------------------------------- inputs


def truncated(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


BAD_INPUTS = {
    "empty.wav": lambda p: p.write_bytes(b""),
    "text.wav": lambda p: p.write_text("this is not audio\n" * 50),
    "image.wav": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20),
    "noframes.wav": lambda p: sf.write(p, np.zeros((0, 2), np.float32), 44100),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_unreadable_inputs_fail_cleanly_and_name_the_file(name, tmp_path, capsys, monkeypatch,
                                                          tiny_checkpoint):  # fmt: skip
    path = tmp_path / name
    BAD_INPUTS[name](path)
    before = path.read_bytes()
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out", path)
    assert code == 1, err
    (track,) = doc["tracks"]
    assert track["status"] == "failed" and track["error"]
    assert name in err and "Traceback" not in err
    assert path.read_bytes() == before  # the input is never touched
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


needs_ffmpeg = pytest.mark.skipif(not audio.ffmpeg_available(), reason="needs ffmpeg")


@needs_ffmpeg
def test_aac_decodes_through_ffmpeg_even_when_named_mp3_or_wav(tmp_path, capsys, monkeypatch,
                                                               tiny_checkpoint):  # fmt: skip
    tone = write_tone(tmp_path / "tone.wav", 2.0)
    subprocess.run(["ffmpeg", "-v", "error", "-i", tmp_path / "tone.wav", "-c:a", "aac", "-b:a",
                    "192k", tmp_path / "song.m4a"], check=True)  # fmt: skip
    for name in ("song.mp3", "song.wav"):  # as downloaders often name it
        shutil.copy(tmp_path / "song.m4a", tmp_path / name)
    decoded, rate = audio.load(tmp_path / "song.m4a")
    assert rate == 44100 and decoded.shape[0] == 2
    # AAC is lossy, but a 2 s tone at 192 kb/s comes back within a few percent.
    frames = len(tone)
    error = decoded[:, :frames] - tone.T
    assert decoded.shape[1] >= frames and np.sqrt(np.mean(error**2)) < 0.02
    for name in ("song.mp3", "song.wav"):
        info = audio.probe(tmp_path / name)
        assert info.decoder == "ffmpeg" and info.sample_rate == 44100
        assert np.array_equal(audio.load(tmp_path / name)[0], decoded)
    stems = []
    for name in ("song.mp3", "song.m4a"):
        code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / name[5:],
                                       tmp_path / name)  # fmt: skip
        assert code == 0, err
        stems.append(sf.read(doc["tracks"][0]["outputs"]["vocals"], always_2d=True)[0])
    assert stems[0].shape == (decoded.shape[1], 2) and np.array_equal(stems[0], stems[1])


@pytest.mark.parametrize(("head", "ffmpeg"), [(b"", True), (b"", False), (b"\xff\xfb", True)])
def test_an_mp3_without_mp3_frames_says_so(head, ffmpeg, tmp_path, capfd, monkeypatch,
                                           tiny_checkpoint):  # fmt: skip
    if ffmpeg and not audio.ffmpeg_available():
        pytest.skip("needs ffmpeg")
    monkeypatch.setattr(audio, "ffmpeg_available", lambda: ffmpeg)
    path = tmp_path / "noise.mp3"
    noise = np.random.default_rng(0).integers(1, 0xFF, 4000, dtype=np.uint8)
    path.write_bytes(head + bytes(noise))
    # capfd, not capsys: libmpg123 writes its notes to file descriptor 2, past sys.stderr.
    code, doc, err = separate_json(capfd, monkeypatch, tiny_checkpoint, tmp_path / "out", path)
    one_line_failure(
        code, doc, err, "noise.mp3", "not a readable MP3 file (no audio data recognised)"
    )
    assert "resync" not in err.lower() and "Note:" not in err, err
    # libsndfile's own words for this ("File does not exist ...") would send the user looking
    # for a file that is right there.
    assert "does not exist" not in doc["tracks"][0]["error"]


@pytest.mark.parametrize(("fmt", "subtype"), [("wav", "PCM_16"), ("flac", "PCM_16"), ("mp3", None)])
def test_truncated_files_separate_what_is_there_or_fail_cleanly(fmt, subtype, tmp_path, capsys,
                                                                monkeypatch, tiny_checkpoint):  # fmt: skip
    path = tmp_path / f"cut.{fmt}"
    t = np.arange(3 * 44100) / 44100
    sf.write(path, np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2, 1), 44100,
             format=fmt.upper(), subtype=subtype)  # fmt: skip
    truncated(path, 0.5)
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out", path)
    (track,) = doc["tracks"]
    if code == 0:
        # Decoders that recover give whole stems of the audio that survived.
        for stem in track["outputs"].values():
            frames = sf.info(stem).frames
            assert 0.3 * 44100 < frames <= 3 * 44100
    else:
        assert code == 1 and track["status"] == "failed" and "cut." in err
    assert leftovers(tmp_path) == []


def test_nan_and_inf_samples_are_refused_with_the_cause(tmp_path, capsys, monkeypatch,
                                                        tiny_checkpoint):  # fmt: skip
    audio_ = np.zeros((44100, 2), np.float32)
    audio_[1000, 0] = np.nan
    sf.write(tmp_path / "nan.wav", audio_, 44100, subtype="FLOAT")
    audio_[1000, 0] = np.inf
    sf.write(tmp_path / "inf.wav", audio_, 44100, subtype="FLOAT")
    for name in ("nan.wav", "inf.wav"):
        code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                       tmp_path / name)  # fmt: skip
        one_line_failure(code, doc, err, name, "NaN")


SIGNALS = {
    "silent": lambda n: np.zeros((n, 2)),
    "dc": lambda n: np.full((n, 2), 0.4) + 0.1 * np.sin(np.arange(n) / 20)[:, None],
    "one_sample": lambda n: np.full((1, 2), 0.5),
    "short": lambda n: np.random.default_rng(0).uniform(-0.5, 0.5, (300, 2)),
}


@pytest.mark.parametrize("kind", sorted(SIGNALS))
def test_degenerate_signals_give_finite_stems_of_the_same_length(kind, tmp_path, capsys,
                                                                 monkeypatch, tiny_checkpoint):  # fmt: skip
    data = SIGNALS[kind](44100)
    sf.write(tmp_path / "x.wav", data, 44100, subtype="FLOAT")
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                   tmp_path / "x.wav", extra=("--bit-depth", "32"))  # fmt: skip
    assert code == 0, err
    for stem in doc["tracks"][0]["outputs"].values():
        out, rate = sf.read(stem)
        assert out.shape == data.shape and rate == 44100
        assert np.isfinite(out).all()
        if kind == "silent":
            assert np.abs(out).max() < 1e-6


@pytest.mark.parametrize(("subtype", "rate", "channels"), [
    ("PCM_U8", 44100, 2), ("PCM_24", 44100, 2), ("FLOAT", 44100, 2), ("PCM_16", 44100, 1),
    ("PCM_16", 8000, 2), ("PCM_24", 192000, 2)])  # fmt: skip
def test_sample_formats_rates_and_mono_round_trip(subtype, rate, channels, tmp_path, capsys,
                                                  monkeypatch, tiny_checkpoint):  # fmt: skip
    mix = write_tone(tmp_path / "x.wav", 0.7, rate=rate, channels=channels, subtype=subtype)
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                   tmp_path / "x.wav")  # fmt: skip
    assert code == 0, err
    for stem in doc["tracks"][0]["outputs"].values():
        info = sf.info(stem)
        assert (info.frames, info.samplerate, info.channels) == (len(mix), rate, channels)


def test_six_channels_fail_without_downmix_and_work_with_it(tmp_path, capsys, monkeypatch,
                                                            tiny_checkpoint):  # fmt: skip
    write_tone(tmp_path / "surround.wav", 0.5, channels=6)
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                   tmp_path / "surround.wav")  # fmt: skip
    one_line_failure(code, doc, err, "surround.wav", "--downmix")
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                   tmp_path / "surround.wav", extra=("--downmix",))  # fmt: skip
    assert code == 0 and sf.info(doc["tracks"][0]["outputs"]["vocals"]).channels == 2


def test_odd_names_work(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    names = ["with space.wav", "ünïcødé 歌.wav", 'quote\'s "double".wav', "-dash.wav"]
    folder = _mkdir(tmp_path / "in")
    for name in names:
        write_tone(folder / name, 0.3)
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                   tmp_path / "in", extra=("-r",))  # fmt: skip
    assert code == 0, err
    done = {Path(t["input"]).name for t in doc["tracks"] if t["status"] == "done"}
    assert done == set(names)
    # A leading dash is a file, not an option, after `--` or as ./-dash.wav.
    os.chdir(tmp_path / "in")
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out2",
                                   "./-dash.wav")  # fmt: skip
    assert code == 0, err


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_folder_without_audio_and_the_same_file_twice(tmp_path, capsys, monkeypatch,
                                                      tiny_checkpoint):  # fmt: skip
    _mkdir(tmp_path / "docs")
    (tmp_path / "docs" / "notes.txt").write_text("no audio here")
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "docs", "-r", "-m",
                            tiny_checkpoint, "-o", tmp_path / "out")  # fmt: skip
    assert code == 2 and "no audio" in err.lower() and "Traceback" not in err
    write_tone(tmp_path / "a.wav", 0.3)
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                   tmp_path / "a.wav", tmp_path / "." / "a.wav")  # fmt: skip
    assert code == 0 and len(doc["tracks"]) == 1


def test_symlink_loops_under_recursion_end(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    root = _mkdir(tmp_path / "music" / "album")
    write_tone(root / "song.wav", 0.3)
    (root / "loop").symlink_to(tmp_path / "music")
    (root / "self").symlink_to(root)
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                   tmp_path / "music", extra=("-r",))  # fmt: skip
    assert code == 0, err
    assert [Path(t["input"]).name for t in doc["tracks"]] == ["song.wav"]


class _Recorder(batch.Reporter):
    def __init__(self, on_start=None):
        self.on_start, self.notes = on_start, []

    def note(self, message):
        self.notes.append(message)

    def track_start(self, track):
        if self.on_start:
            self.on_start(track)


def _plan(tmp_path, names, model, template=batch.DEFAULT_TEMPLATE):
    for name in names:
        write_tone(tmp_path / name, 0.4)
    tracks, _ = batch.discover([str(tmp_path / n) for n in names], False)
    stems = batch.output_stems(model.sources, None, None)
    batch.plan_outputs(tracks, tmp_path / "out", template, "gain", stems, "wav")
    return tracks, batch.SeparationOptions(stems, "wav", 16, "rescale", None, False, False)


def test_a_file_that_vanishes_mid_batch_fails_alone(tmp_path):
    model = GainSeparator()
    tracks, options = _plan(tmp_path, ["a.wav", "b.wav", "c.wav"], model)

    def vanish(track):
        if track.path.name == "a.wav":
            (tmp_path / "b.wav").unlink()

    results = batch.run_batch(tracks, Demixer(model), options, _Recorder(vanish))
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert "b.wav" in results[1].input and results[1].error
    assert leftovers(tmp_path) == []


def test_a_file_that_loses_read_permission_mid_batch_fails_alone(tmp_path):
    def revoke(track):
        if track.path.name == "a.wav":
            os.chmod(folder / "b.wav", 0)

    def separate_both() -> list[list]:
        model = GainSeparator()
        tracks, options = _plan(folder, ["a.wav", "b.wav"], model)
        results = batch.run_batch(tracks, Demixer(model), options, _Recorder(revoke))
        return [[r.status, r.error] for r in results]

    if os.geteuid() != 0:
        folder = tmp_path
        outcome = separate_both()
    else:  # root reads anything: run the batch as `nobody`, where permissions bind
        warm_up = tmp_path / "warm"
        warm_up.mkdir()
        tracks, options = _plan(warm_up, ["w.wav"], GainSeparator())
        batch.run_batch(tracks, Demixer(GainSeparator()), options, _Recorder())
        folder = Path(tempfile.mkdtemp(dir="/tmp"))
        os.chmod(folder, 0o777)
        try:
            outcome = _as_nobody(separate_both)
        finally:
            shutil.rmtree(folder)
    assert [status for status, _ in outcome] == ["done", "failed"]
    assert "permission" in outcome[1][1].lower()


def _as_nobody(function):
    """Run `function` in a forked child with uid/gid 65534 and return its JSON-able result.

    The caller must have imported everything `function` needs (by running it once): as nobody,
    the child cannot read the Python installation under /root to import lazily.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        signal.alarm(120)
        try:
            torch.set_num_threads(1)
            os.setgid(65534)
            os.setuid(65534)
            message = {"result": function()}
        except BaseException:  # noqa: BLE001 (a forked child must never return into pytest)
            message = {"error": traceback.format_exc()}
        os.write(write, json.dumps(message).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = json.loads(pipe.read() or '{"error": "the child died without a word"}')
    os.waitpid(pid, 0)
    assert "error" not in message, message["error"]
    return message["result"]


# ---------------------------------------------------------------- outputs


def test_an_output_folder_that_cannot_be_created(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    write_tone(tmp_path / "a.wav", 0.3)
    (tmp_path / "blocker").write_text("a file where a folder should go")
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "blocker" / "x",
                                   tmp_path / "a.wav")  # fmt: skip
    assert code == 1 and doc["tracks"][0]["status"] == "failed", err
    assert "a.wav" in err and "directory" in doc["tracks"][0]["error"].lower()
    assert (tmp_path / "blocker").read_text() == "a file where a folder should go"


def test_disk_full_mid_write_leaves_no_partial_file(tmp_path, monkeypatch):
    model = GainSeparator()
    tracks, options = _plan(tmp_path, ["a.wav", "b.wav"], model)
    real_write = audio.StemWriter.write
    calls = {"n": 0}

    def full_disk(self, block):
        calls["n"] += 1
        if calls["n"] == 3:  # in the middle of the first track
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, block)

    monkeypatch.setattr(audio.StemWriter, "write", full_disk)
    results = batch.run_batch(tracks, Demixer(model, segment=2000), options, _Recorder())
    assert results[0].status == "failed" and "no space left" in results[0].error.lower()
    assert results[1].status == "done"
    assert not any(p.exists() for p in tracks[0].outputs.values())
    assert not tracks[0].outputs[options.stems[0]].parent.exists()  # nor the folder it made
    assert all(sf.info(p).frames == int(0.4 * 44100) for p in tracks[1].outputs.values())
    assert leftovers(tmp_path) == []


def test_a_stem_folder_that_cannot_be_created_leaves_no_temp_file_of_the_others(tmp_path):
    model = GainSeparator()
    tracks, options = _plan(tmp_path, ["a.wav", "b.wav"], model, "{stem}/{track}.{ext}")
    stems, out = options.stems, _mkdir(tmp_path / "out")
    (out / stems[0]).mkdir()
    (out / stems[0] / "keep.txt").write_text("the user's")
    (out / stems[1]).write_text("a file where a stem folder should go")
    results = batch.run_batch(tracks, Demixer(model, segment=2000), options, _Recorder())
    assert [r.status for r in results] == ["failed", "failed"]
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(stems)
    assert [p.name for p in (out / stems[0]).iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_stems_and_checkpoints_get_the_mode_a_plain_open_gives(umask, tmp_path, capsys,
                                                                monkeypatch, tiny_checkpoint):  # fmt: skip
    """The temp files behind atomic writes are 0600; finished files must not stay that way."""
    write_tone(tmp_path / "a.wav", 0.3)
    previous = os.umask(umask)
    try:
        code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m",
                           tiny_checkpoint, "-o", tmp_path / "sep", "-q")  # fmt: skip
        loaded = checkpoints.load_model(str(tiny_checkpoint))
        checkpoints.save_checkpoint(tmp_path / "copy.safetensors", loaded.model)
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(previous)
    assert code == 0, err
    expected = 0o666 & ~umask
    assert (tmp_path / "plain").stat().st_mode & 0o777 == expected
    stems = sorted((tmp_path / "sep").rglob("*.wav"))
    assert len(stems) == 4
    for path in [*stems, tmp_path / "copy.safetensors"]:
        assert path.stat().st_mode & 0o777 == expected, path


def test_an_output_that_would_overwrite_its_input_is_refused(tmp_path, capsys, monkeypatch,
                                                             tiny_checkpoint):  # fmt: skip
    write_tone(tmp_path / "vocals.wav", 0.3)
    before = (tmp_path / "vocals.wav").read_bytes()
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "vocals.wav", "-m",
                       tiny_checkpoint, "-o", tmp_path, "--name", "{stem}.{ext}")  # fmt: skip
    assert code == 2 and "input" in err.lower() and "Traceback" not in err
    assert (tmp_path / "vocals.wav").read_bytes() == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupt_mid_batch_keeps_finished_tracks_and_a_rerun_completes(sig, tmp_path,
                                                                         tiny_checkpoint):  # fmt: skip
    folder = _mkdir(tmp_path / "in")
    # Eight tracks, so that the signal 0.3 s into the second one cannot come after the last one.
    for i in range(8):
        write_tone(folder / f"t{i}.wav", 6.0)
    cmd = [sys.executable, "-m", "sepcli", "separate", str(tmp_path / "in"), "-r", "-m",
           str(tiny_checkpoint), "-o", str(tmp_path / "out"), "-q", "--segment", "0.5"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    first = tmp_path / "out" / "tiny" / "t0"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(first.glob("*.wav"))) < 4:
        time.sleep(0.05)
    time.sleep(0.3)  # now inside the second track
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "finished tracks are kept" in err
    finished = sorted(p.name for p in first.glob("*.wav"))
    assert finished == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert all(sf.info(p).frames == 6 * 44100 for p in first.glob("*.wav"))
    assert leftovers(tmp_path / "out") == []
    # A track the signal caught while its stems were being written has some of them (each one
    # whole); it counts as unfinished, and the rerun separates it again.
    folders = [p for p in (tmp_path / "out" / "tiny").iterdir() if p.is_dir()]
    done_after_signal = [p.name for p in folders if len(list(p.glob("*.wav"))) == 4]
    assert len(done_after_signal) < 8
    rerun = subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr
    statuses = {Path(t["input"]).name: t["status"] for t in json.loads(rerun.stdout)["tracks"]}
    assert statuses["t0.wav"] == "skipped"
    assert sorted(statuses.values()).count("done") == 8 - len(done_after_signal)


# ---------------------------------------------------------------- checkpoints


def test_missing_and_truncated_checkpoints(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    write_tone(tmp_path / "a.wav", 0.3)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    for path, cause in ((tmp_path / "missing.safetensors", "not found"), (cut, "cut.safetensors")):
        code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", path)
        assert code == 2 and cause in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_wrong_architecture_for_the_weights_names_the_first_mismatch(tmp_path):
    torch.manual_seed(0)
    model = checkpoints.build_model("complex-mask", {"channels": [8, 16, 32]})
    path = tmp_path / "m.safetensors"
    checkpoints.save_checkpoint(path, model, {})
    other = checkpoints.build_model("complex-mask", {"channels": [8, 16, 64]})
    with pytest.raises(checkpoints.CheckpointError, match=r"encoders\.2\.conv\.weight"):
        checkpoints.load_state_strict(other, model.state_dict(), str(path))
    # Weights of one architecture under another's config: the keys are named.
    roformer = checkpoints.build_model("mel-roformer", {"dim": 16, "depth": 1, "num_bands": 8})
    with pytest.raises(checkpoints.CheckpointError, match="encoders"):
        checkpoints.load_state_strict(roformer, model.state_dict(), str(path))


# ---------------------------------------------------------------- devices


class OOMUnlessShort(GainSeparator):
    """Runs out of memory for chunks longer than `limit` samples, whatever the batch size."""

    def __init__(self, limit: int) -> None:
        super().__init__(gains=(1.0, 0.5), segment=40000)
        self.limit = limit

    def forward(self, mix):
        if mix.shape[-1] > self.limit:
            raise torch.OutOfMemoryError("simulated")
        return super().forward(mix)


def test_out_of_memory_falls_back_to_a_smaller_batch_then_a_smaller_segment(tmp_path):
    model = OOMUnlessShort(limit=12000)
    tracks, options = _plan(tmp_path, ["a.wav"], model)
    reporter = _Recorder()
    demixer = Demixer(model, batch_size=4, on_retry=reporter.note)
    (result,) = batch.run_batch(tracks, demixer, options, reporter)
    assert result.status == "done", result.error
    assert any("batch size 1" in n for n in reporter.notes)
    assert any("segment 10000" in n for n in reporter.notes)
    mix, _ = sf.read(tmp_path / "a.wav")
    out, _ = sf.read(tracks[0].outputs["s0"])
    np.testing.assert_allclose(out, mix, atol=1e-4)


def test_out_of_memory_at_every_segment_fails_the_track_with_a_message(tmp_path):
    model = OOMUnlessShort(limit=10)
    tracks, options = _plan(tmp_path, ["a.wav"], model)
    (result,) = batch.run_batch(tracks, Demixer(model), options, _Recorder())
    assert result.status == "failed" and "out of memory" in result.error
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- fuzz


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=3000), header=st.booleans(), rate=st.integers(1, 400000),
       channels=st.integers(1, 8), bits=st.sampled_from([8, 16, 24, 32]))  # fmt: skip
def test_fuzz_random_bytes_separate_or_fail_cleanly(tmp_path_factory, data, header, rate, channels,
                                                    bits):  # fmt: skip
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "fuzz.wav"
    if header:  # a valid RIFF/WAVE header with random parameters over random frames
        block = channels * bits // 8
        fmt = (b"fmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little")
               + channels.to_bytes(2, "little") + rate.to_bytes(4, "little")
               + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little")
               + bits.to_bytes(2, "little"))  # fmt: skip
        body = fmt + b"data" + len(data).to_bytes(4, "little") + data
        path.write_bytes(b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WAVE" + body)
    else:
        path.write_bytes(data)
    model = GainSeparator(segment=4000)
    tracks, _ = batch.discover([str(path)], False)
    stems = batch.output_stems(model.sources, None, None)
    batch.plan_outputs(tracks, folder / "out", batch.DEFAULT_TEMPLATE, "gain", stems, "wav")
    options = batch.SeparationOptions(stems, "wav", 16, "rescale", None, True, False)
    start = time.perf_counter()
    (result,) = batch.run_batch(tracks, Demixer(model), options, _Recorder())
    assert time.perf_counter() - start < 30
    if result.status == "done":
        for output in result.outputs.values():
            assert sf.info(output).frames >= 0
    else:
        assert result.status == "failed" and result.error and "\n" not in result.error
        assert not any(Path(p).exists() for p in tracks[0].outputs.values())
    assert leftovers(folder) == []


LONG_INPUT = """
import sys
from pathlib import Path
import numpy as np, soundfile as sf
sys.path.insert(0, sys.argv[2])
from sepcli import batch
from sepcli.engine import Demixer
from tests.conftest import GainSeparator

folder = Path(sys.argv[1])
rate, seconds = 8000, int(sys.argv[3])
with sf.SoundFile(folder / "long.wav", "w", rate, 1, "PCM_16") as f:
    rng = np.random.default_rng(0)
    for _ in range(seconds // 60):  # written a minute at a time: the generator stays flat too
        f.write(rng.uniform(-0.5, 0.5, rate * 60).astype(np.float32))
model = GainSeparator(segment=8000, sample_rate=rate)
tracks, _ = batch.discover([str(folder / "long.wav")], False)
stems = batch.output_stems(model.sources, None, None)
batch.plan_outputs(tracks, folder / "out", batch.DEFAULT_TEMPLATE, "gain", stems, "wav")
options = batch.SeparationOptions(stems, "wav", 16, "none", None, False, False)
(result,) = batch.run_batch(tracks, Demixer(model, batch_size=8), options, batch.Reporter())
frames = [sf.info(p).frames for p in tracks[0].outputs.values()]
# VmHWM, not ru_maxrss: a child started by vfork + exec inherits its parent's ru_maxrss, so
# under pytest ru_maxrss reported the test runner's own peak (767 MB-1.8 GB), not this process's.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(result.status, frames, peak_kb // 1024)
"""


def _separate_long_input(folder: Path, seconds: int) -> tuple[list[int], int]:
    """Separate `seconds` of 8 kHz noise in a fresh process; return output frames and peak RSS (MB)."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", LONG_INPUT, str(folder), str(root), str(seconds)],
                            capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    status, rest = result.stdout.strip().splitlines()[-1].split(" ", 1)
    frames, peak_mb = rest.rsplit(" ", 1)
    assert status == "done"
    return json.loads(frames), int(peak_mb)


@pytest.mark.slow
def test_a_two_hour_input_streams_with_flat_memory(tmp_path):
    """Held whole, 2 h would need > 1.5 GB here (input, two stems, float64 sums at model rate).

    Streaming keeps the peak where a one-minute input puts it: 120x the audio costs < 100 MB.
    """
    (tmp_path / "short").mkdir()
    (tmp_path / "long").mkdir()
    short_frames, short_peak = _separate_long_input(tmp_path / "short", 60)
    long_frames, long_peak = _separate_long_input(tmp_path / "long", 2 * 3600)
    assert short_frames == [60 * 8000] * 2
    assert long_frames == [2 * 3600 * 8000] * 2
    assert long_peak - short_peak < 100, (
        f"peak RSS {short_peak} MB for 1 min, {long_peak} MB for 2 h"
    )


def test_the_interruption_message_says_what_each_command_kept():
    from sepcli.cli import interrupted_outcome

    assert "--resume" in interrupted_outcome(["sepcli", "--debug", "train", "mel-roformer"])
    assert "cached" in interrupted_outcome(["sepcli", "evaluate", "-m", "default"])
    assert "finished tracks" in interrupted_outcome(["sepcli", "separate", "song.wav"])


# ================================================================ round 2 (issue 39)
# Each test below failed on the code before that round: data loss, one file stopping the batch,
# hangs, memory bombs from tiny files, tracebacks and wrong exit codes.


def _saved_variant(tmp_path: Path, name: str, tiny_checkpoint: Path, state=None, meta=None) -> Path:
    """The tiny checkpoint with other weights (`state`: key -> tensor) and/or metadata."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tiny_checkpoint))
    tensors = {k: (state(v) if state else v).contiguous() for k, v in tensors.items()}
    metadata = checkpoints.read_metadata(tiny_checkpoint)
    if meta is not None:
        metadata = meta(metadata)
    path = tmp_path / name
    save_file(tensors, str(path), metadata={"sepcli": json.dumps(metadata)})
    return path


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("template", ["{model}/{track}.{ext}", "{model}", "{track}.{ext}"])
def test_a_template_that_puts_two_stems_in_one_file_is_refused_before_any_work(
    template, tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    write_tone(tmp_path / "a.wav", 0.3)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "out", "--name", template)  # fmt: skip
    assert code == 2 and "{stem}" in err and "one file" in err, err
    assert _files_under(tmp_path / "out") == []


@pytest.mark.parametrize("template", ["", ".", "{model}/..", "./", "{stem}/.."])
def test_a_template_must_name_a_file_below_out(template, tmp_path, capsys, monkeypatch,
                                               tiny_checkpoint):  # fmt: skip
    write_tone(tmp_path / "a.wav", 0.3)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("the user's")
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "out", "--name", template)  # fmt: skip
    assert code == 2 and "--out" in err and "Traceback" not in err, err
    assert "skipped" not in err
    assert _files_under(tmp_path / "out") == [tmp_path / "out" / "keep.txt"]
    # --out not there yet: it must not become a file either.
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "new", "--name", template)  # fmt: skip
    assert code == 2 and not (tmp_path / "new").exists()


def test_an_output_where_a_folder_is_or_must_be_is_refused(tmp_path, capsys, monkeypatch,
                                                           tiny_checkpoint):  # fmt: skip
    write_tone(tmp_path / "a.wav", 0.3)
    code, _, _ = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", tiny_checkpoint,
                     "-o", tmp_path / "out")  # fmt: skip
    assert code == 0
    before = {p: p.read_bytes() for p in _files_under(tmp_path / "out")}
    # out/tiny/a is now the folder of the first run's stems.
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "out", "--stems", "vocals", "--name", "{model}/{track}")  # fmt: skip
    assert code == 2 and "folder" in err, err
    assert {p: p.read_bytes() for p in _files_under(tmp_path / "out")} == before
    # One output named as the folder of another ('x' and 'x/vocals.wav').
    model = GainSeparator()
    tracks, _ = batch.discover([str(tmp_path / "a.wav")], False)
    with pytest.raises(batch.UsageError, match="file and a folder"):
        batch.plan_outputs(tracks, tmp_path / "o2", "{stem}", "gain", ["s0", "s0/x"], "wav")
    del model


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["{model}", "{track}", "{stem}", "{ext}", "{relpath}", "/", ".",
                                 "..", "x", "{trackext}", "{", "}", "{stem.x}", "{0}", "{}",
                                 "{stem!r}"]), max_size=8))  # fmt: skip
def test_any_template_gives_distinct_files_below_out_or_a_usage_error(parts):
    template = "".join(parts)
    root = Path("/nonexistent-sepcli-root/out")
    tracks = [
        batch.Track(Path("/music/a.wav"), "a"),
        batch.Track(Path("/music/sub/b.flac"), "sub/b"),
    ]
    try:
        batch.plan_outputs(tracks, root, template, "m", ["vocals", "drums"], "wav")
    except batch.UsageError:
        return
    targets = [p for t in tracks for p in t.outputs.values()]
    assert len(set(targets)) == len(targets) == 4
    for target in targets:
        assert root in target.parents
        assert not any(other in target.parents for other in targets)


@pytest.mark.parametrize("weights", ["nan", "1e38", "inf"])
def test_a_model_whose_output_is_not_finite_fails_the_track_and_writes_nothing(
    weights, tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    bad = _saved_variant(tmp_path, "bad.safetensors", tiny_checkpoint,
                         state=lambda v: torch.full_like(v, float(weights)))  # fmt: skip
    write_tone(tmp_path / "a.wav", 0.5)
    code, doc, err = separate_json(capsys, monkeypatch, bad, tmp_path / "out", tmp_path / "a.wav")
    one_line_failure(code, doc, err, "a.wav", "NaN or infinite")
    assert _files_under(tmp_path / "out") == []


def test_a_non_finite_block_never_reaches_a_stem_file(tmp_path):
    writer = audio.StemWriter(tmp_path / "s.wav", 44100, 2, "wav", 16, "rescale")
    writer.write(np.zeros((2, 100), np.float32))
    with pytest.raises(audio.AudioError, match="NaN"):
        writer.write(np.full((2, 100), np.nan, np.float32))
    writer.abort()
    assert _files_under(tmp_path) == []


@pytest.mark.parametrize("damage", ["empty", "cut", "text", "short"])
def test_a_rerun_redoes_a_track_whose_stem_is_not_whole_and_says_why(
    damage, tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    write_tone(tmp_path / "a.wav", 1.0)
    write_tone(tmp_path / "b.wav", 1.0)
    args = ("separate", tmp_path / "a.wav", tmp_path / "b.wav", "-m", tiny_checkpoint,
            "-o", tmp_path / "out", "--json")  # fmt: skip
    code, _, _ = run(capsys, monkeypatch, *args)
    assert code == 0
    drums = tmp_path / "out" / "tiny" / "a" / "drums.wav"
    whole = drums.read_bytes()
    if damage == "empty":
        drums.write_bytes(b"")
    elif damage == "cut":
        drums.write_bytes(whole[: len(whole) // 2])
    elif damage == "text":
        drums.write_text("not audio")
    else:  # a whole file, but of another length
        sf.write(drums, np.zeros((100, 2)), 44100, subtype="PCM_16")
    code, out, err = run(capsys, monkeypatch, *args)
    statuses = [t["status"] for t in json.loads(out)["tracks"]]
    assert code == 0 and statuses == ["done", "skipped"], err
    assert "drums.wav" in err and "again" in err
    assert drums.read_bytes() == whole


def test_a_file_name_that_is_not_utf8_is_separated_and_shown_escaped(tmp_path, capfd,
                                                                      tiny_checkpoint):  # fmt: skip
    folder = _mkdir(tmp_path / "in")
    good, bad = os.fsdecode(b"\xff\xfe good.wav"), os.fsdecode(b"\xfe\xff bad.wav")
    write_tone(folder / "a.wav", 0.3)
    write_tone(os.fsencode(folder / good), 0.3)  # soundfile encodes str names strictly
    (folder / bad).write_text("not audio")
    write_tone(folder / "z.wav", 0.3)
    proc = subprocess.run([sys.executable, "-m", "sepcli", "separate", os.fsencode(folder), "-r",
                           "-m", str(tiny_checkpoint), "-o", str(tmp_path / "out"), "--json"],
                          capture_output=True, timeout=120)  # fmt: skip
    err = proc.stderr.decode("utf-8")  # the messages are valid UTF-8 whatever the names hold
    assert proc.returncode == 1 and "Traceback" not in err, err
    statuses = {
        t["input"].rsplit("/", 1)[-1]: t["status"] for t in json.loads(proc.stdout)["tracks"]
    }
    assert statuses == {"a.wav": "done", good: "done", bad: "failed", "z.wav": "done"}
    assert "\\xfe\\xff bad.wav" in err
    stem = tmp_path / "out" / "tiny" / os.fsdecode(b"\xff\xfe good") / "vocals.wav"
    assert sf.info(os.fsencode(stem)).frames == int(0.3 * 44100)


def test_a_newline_in_a_file_name_keeps_the_message_on_one_line(tmp_path, capsys, monkeypatch,
                                                                 tiny_checkpoint):  # fmt: skip
    path = tmp_path / "two\nlines.wav"
    path.write_text("not audio")
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out", path)
    assert code == 1 and doc["tracks"][0]["status"] == "failed"
    (line,) = [line for line in err.splitlines() if "failed" in line and "lines.wav" in line]
    assert "two\\x0alines.wav" in line


def test_a_glob_through_symlink_loops_ends(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    root = _mkdir(tmp_path / "d")
    write_tone(root / "top.wav", 0.2)
    write_tone(_mkdir(root / "sub") / "deep.wav", 0.2)
    (root / "x").symlink_to(".")
    (root / "y").symlink_to(".")
    (root / "sub" / "up").symlink_to("..")
    monkeypatch.chdir(tmp_path)
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the glob did not end"))
    signal.alarm(30)
    try:
        tracks, _ = batch.discover(["d/**/*.wav"], False)
        code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                       "d/**/*.wav")  # fmt: skip
    finally:
        signal.alarm(0)
    assert sorted(str(t.path) for t in tracks) == ["d/sub/deep.wav", "d/top.wav"]
    assert code == 0 and len(doc["tracks"]) == 2, err
    # glob's own rules hold: ** spans zero folders, wildcards skip dot-names.
    (root / ".hidden").mkdir()
    write_tone(root / ".hidden" / "h.wav", 0.2)
    assert sorted(map(str, batch._glob("d/**/*.wav"))) == ["d/sub/deep.wav", "d/top.wav"]
    assert sorted(map(str, batch._glob("d/.hidden/*.wav"))) == ["d/.hidden/h.wav"]


@pytest.mark.parametrize("where", ["model", "info", "config", "input", "resume"])
def test_a_fifo_where_a_file_is_expected_fails_at_once(where, tmp_path, tiny_checkpoint):
    fifo = tmp_path / {"model": "m.safetensors", "info": "m.safetensors", "config": "c.yaml",
                       "input": "in.wav", "resume": "run/state.pt"}[where]  # fmt: skip
    fifo.parent.mkdir(exist_ok=True)
    os.mkfifo(fifo)
    write_tone(tmp_path / "a.wav", 0.2)
    (tmp_path / "x.ckpt").write_bytes(b"")
    out = ["-o", tmp_path / "out"]
    args = {
        "model": ["separate", tmp_path / "a.wav", "-m", fifo, *out],
        "info": ["info", fifo],
        "config": ["separate", tmp_path / "a.wav", "-m", tmp_path / "x.ckpt", "--config", fifo,
                   *out],
        "input": ["separate", fifo, "-m", tiny_checkpoint, *out],
        "resume": ["train", "mel-roformer", "--musdb", tmp_path, "--out", tmp_path / "run",
                   "--resume"],
    }[where]  # fmt: skip
    # Before the fix these blocked in open() for ever, deaf to SIGINT and SIGTERM.
    proc = subprocess.run([sys.executable, "-m", "sepcli", *map(str, args)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert "FIFO" in proc.stderr, proc.stderr
    assert proc.returncode == (1 if where == "input" else 2)


def test_a_rerun_removes_the_temp_files_a_killed_run_left_but_not_a_live_ones(tmp_path):
    from sepcli import files

    model = GainSeparator()
    tracks, options = _plan(tmp_path, ["a.wav"], model)
    target = tracks[0].outputs["s0"]
    target.parent.mkdir(parents=True)
    # What SIGKILL leaves: temp files of our naming, whose lock died with their process.
    dead = [files.temp_beside(target, suffix) for suffix in (".raw.part", ".wav.part")]
    for fd, _ in dead:
        os.close(fd)
    live_fd, live = files.temp_beside(target, ".raw.part")  # a writer that is still running
    lookalike = target.parent / ".s0.wav.notours.raw.part"
    lookalike.write_text("the user's")
    try:
        (result,) = batch.run_batch(tracks, Demixer(model), options, _Recorder())
        assert result.status == "done"
        assert not any(path.exists() for _, path in dead)
        assert live.exists() and lookalike.exists()
    finally:
        os.close(live_fd)
    assert [p for p in files.stale_temps(target)] == [live]


def test_temp_names_stay_within_the_file_name_limit(tmp_path, capsys, monkeypatch,
                                                     tiny_checkpoint):  # fmt: skip
    write_tone(tmp_path / "a.wav", 0.3)
    name = "n" * 247 + ".wav"  # 251 bytes: legal, but not with 20 more for a temp name
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out",
                                   tmp_path / "a.wav", extra=("--name", "{stem}/" + name))  # fmt: skip
    assert code == 0, err
    assert sf.info(tmp_path / "out" / "vocals" / name).frames == int(0.3 * 44100)
    wide = "é" * 125 + ".wav"  # 254 bytes in UTF-8: the cut must not split a character
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out2",
                                   tmp_path / "a.wav", extra=("--name", "{stem}/" + wide))  # fmt: skip
    assert code == 0, err
    assert leftovers(tmp_path) == []


def test_duplicate_stem_names_in_a_checkpoint_are_refused(tmp_path, capsys, monkeypatch,
                                                          tiny_checkpoint):  # fmt: skip
    def duplicate(meta):
        meta["config"]["sources"] = ["a", "a", "b", "c"]
        return meta

    bad = _saved_variant(tmp_path, "dup.safetensors", tiny_checkpoint, meta=duplicate)
    write_tone(tmp_path / "a.wav", 0.3)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", bad, "-o",
                       tmp_path / "out")  # fmt: skip
    assert code == 2 and "more than once" in err, err
    assert leftovers(tmp_path) == [] and _files_under(tmp_path / "out") == []


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefg", "bcdefgh")),
    ]
)


@pytest.mark.parametrize("where", ["model:\n  dim: *h", "training:\n  instruments: *h"])
def test_a_yaml_alias_bomb_is_refused_quickly_with_a_short_message(where, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    config = tmp_path / "bomb.yaml"
    config.write_text(BILLION_LAUGHS + "\n" + where + "\n")
    (tmp_path / "x.ckpt").write_bytes(b"")
    write_tone(tmp_path / "a.wav", 0.2)
    start = time.perf_counter()
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m",
                       tmp_path / "x.ckpt", "--config", config)  # fmt: skip
    assert code == 2 and "aliases" in err and len(err) < 1000, err[:2000]
    code, _, err = run(capsys, monkeypatch, "train", "mel-roformer", "--musdb", tmp_path,
                       "--out", tmp_path / "run", "--config", config)  # fmt: skip
    assert code == 2 and "aliases" in err and len(err) < 1000, err[:2000]
    assert time.perf_counter() - start < 20
    recursive = tmp_path / "loop.yaml"
    recursive.write_text("model: &m\n  dim: *m\n")
    with pytest.raises(checkpoints.CheckpointError, match="recursive"):
        checkpoints.read_yaml(recursive)


def test_a_huge_yaml_is_refused_by_its_size(tmp_path):
    config = tmp_path / "big.yaml"
    with open(config, "w") as f:
        f.write("model:\n  dim: 8\n")
        f.write("# padding\n" * 200_000)
    start = time.perf_counter()
    with pytest.raises(checkpoints.CheckpointError, match="KB"):
        checkpoints.read_yaml(config)
    assert time.perf_counter() - start < 2


# VmHWM, not ru_maxrss: a child started by vfork + exec inherits its parent's ru_maxrss.
PEAK_OF = """
import sys
from sepcli.cli import main
sys.argv = ["sepcli", *sys.argv[1:]]
try:
    main()
except SystemExit as done:
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print("peak", int(hwm.split()[1]) // 1024, file=sys.stderr)
    raise
"""


def test_a_small_checkpoint_whose_config_asks_for_a_huge_model_is_refused_from_its_header(
    tmp_path, tiny_checkpoint
):
    def huge(meta):
        meta["config"].update(dim=4096, depth=32)
        return meta

    bad = _saved_variant(tmp_path, "huge.safetensors", tiny_checkpoint, meta=huge)
    assert bad.stat().st_size < 8_000_000  # the config it names would take gigabytes
    write_tone(tmp_path / "a.wav", 0.2)
    for args in (["info", bad], ["separate", tmp_path / "a.wav", "-m", bad, "-o", tmp_path / "o"]):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PEAK_OF, *map(str, args)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2 and "shape mismatch" in proc.stderr, proc.stderr
        peak_mb = int(proc.stderr.split("peak ")[-1])
        assert peak_mb < 1000 and time.perf_counter() - start < 60, (peak_mb, proc.stderr)


@pytest.mark.parametrize("metadata", ["null", "[]", '"text"', '{"architecture": 5}'])
def test_checkpoint_metadata_of_the_wrong_shape_is_a_one_line_error(metadata, tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"sepcli": metadata})
    write_tone(tmp_path / "a.wav", 0.2)
    for args in (["info", path], ["separate", tmp_path / "a.wav", "-m", path]):
        code, _, err = run(capsys, monkeypatch, *args)
        assert code == 2 and "metadata" in err and "unexpected" not in err, err


@pytest.mark.parametrize("field", ["meta", "config", "inference"])
def test_a_checkpoint_rate_of_zero_or_a_wild_engine_default_is_refused(field, tmp_path, capsys,
                                                                       monkeypatch, tiny_checkpoint):  # fmt: skip
    def broken(meta):
        if field == "meta":
            meta["sample_rate"] = 0
        elif field == "config":
            meta["config"]["sample_rate"] = 0
        else:
            meta["inference"] = {"segment": 10**12}
        return meta

    bad = _saved_variant(tmp_path, "bad.safetensors", tiny_checkpoint, meta=broken)
    write_tone(tmp_path / "a.wav", 0.2)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", bad, "-o",
                       tmp_path / "o")  # fmt: skip
    assert (
        code == 2 and "unexpected" not in err and "bad.safetensors" in err or "sample_rate" in err
    ), err


@pytest.mark.parametrize("name", ["x[/]y.wav", "song [live].wav", "[bold]b.wav"])
def test_brackets_in_names_are_shown_as_they_are(name, tmp_path, capsys, monkeypatch,
                                                  tiny_checkpoint):  # fmt: skip
    path = tmp_path / name  # "x[/]y.wav" is "]y.wav" in a folder "x["
    _mkdir(path.parent)
    write_tone(path, 0.2)
    code, out, err = run(capsys, monkeypatch, "separate", path, "-m", tiny_checkpoint, "-o",
                         tmp_path / "out", "--json")  # fmt: skip
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out)["tracks"][0]["status"] == "done"
    bad = tmp_path / name.replace(".wav", " bad.wav")
    bad.write_text("not audio")
    code, out, err = run(capsys, monkeypatch, "separate", bad, "-m", tiny_checkpoint, "-o",
                         tmp_path / "out")  # fmt: skip
    assert code == 1 and bad.name in err and "Traceback" not in err, err
    code, _, err = run(capsys, monkeypatch, "separate", path, "-m", tmp_path / "[/]m.safetensors")
    assert code == 2 and "[/]m.safetensors" in err and "Traceback" not in err, err


@pytest.mark.parametrize("args", [
    ("--name", "{track.foo}/{stem}.{ext}"), ("--name", "{stem[0]}.{ext}"),
    ("--name", "{stem!r}.{ext}"), ("--name", "{stem:>300}.{ext}"), ("--segment", "1e9"),
    ("--segment", "inf"), ("--segment", "nan"), ("--sample-rate", "3000000000"),
    ("--overlap", "0.9999"), ("--batch-size", "1000000000"), ("--shifts", "100000")])  # fmt: skip
def test_wild_options_are_usage_errors(args, tmp_path, capsys, monkeypatch, tiny_checkpoint):
    write_tone(tmp_path / "a.wav", 0.2)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "out", *args)  # fmt: skip
    assert code == 2 and "unexpected" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rate", [1, 999, 2_000_000_000])
def test_an_input_whose_header_claims_a_wild_rate_fails_alone(rate, tmp_path, capsys, monkeypatch,
                                                              tiny_checkpoint):  # fmt: skip
    path = tmp_path / "odd.wav"
    sf.write(path, np.zeros((8000, 1), np.int16), 8000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = rate.to_bytes(4, "little")  # the fmt chunk's sample rate
    path.write_bytes(bytes(data))
    start = time.perf_counter()
    code, doc, err = separate_json(capsys, monkeypatch, tiny_checkpoint, tmp_path / "out", path)
    one_line_failure(code, doc, err, "odd.wav", "sample rate")
    assert time.perf_counter() - start < 30


def _musdb_like(root: Path) -> None:
    (root / "test").mkdir(parents=True)
    (root / "train").mkdir()
    (root / "test" / "broken.stem.mp4").write_text("not a video\n")


@needs_ffmpeg
def test_evaluate_names_a_track_it_cannot_read(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    _musdb_like(tmp_path / "musdb")
    code, _, err = run(capsys, monkeypatch, "evaluate", "-m", tiny_checkpoint, "--musdb",
                       tmp_path / "musdb", "--out", tmp_path / "res", "-q")  # fmt: skip
    assert code == 1 and "broken.stem.mp4" in err and "unexpected" not in err, err


@pytest.mark.parametrize("content", ["{}", '{"stems": ', "[1, 2]", '{"stems": {"v": 1}}', ""])
def test_evaluate_compare_names_a_summary_that_is_not_one(content, tmp_path, capsys,
                                                          monkeypatch):  # fmt: skip
    _mkdir(tmp_path / "r1")
    (tmp_path / "r1" / "summary.json").write_text(content)
    code, _, err = run(capsys, monkeypatch, "evaluate", "compare", tmp_path / "r1")
    assert code == 2 and "summary.json" in err and "unexpected" not in err, err


def test_train_refuses_a_wild_segment_and_leaves_no_run_behind(tmp_path, capsys, monkeypatch):
    for value in ("1e9", "inf", "nan"):
        code, _, err = run(capsys, monkeypatch, "train", "mel-roformer", "--musdb", tmp_path,
                           "--out", tmp_path / "run", "--segment", value)  # fmt: skip
        assert code == 2 and "segment" in err and "unexpected" not in err, err
        assert not (tmp_path / "run" / "state.pt").exists()


@pytest.mark.parametrize("state", ["truncated", "garbage", "other-architecture", "not-a-dict"])
def test_train_resume_from_a_bad_state_is_one_line(state, tmp_path, capsys, monkeypatch):
    from sepcli import train as training

    run_dir = _mkdir(tmp_path / "run")
    path = run_dir / "state.pt"
    if state == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif state == "not-a-dict":
        torch.save([torch.zeros(1)], path)
    else:
        model = checkpoints.build_model("complex-mask", {"channels": [8, 16, 32]})
        optimizer = torch.optim.AdamW(model.parameters())
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        ema = training.EMA(model, 0.9)
        training._save_state(path, model, optimizer, schedule, ema,
                             np.random.default_rng(0).bit_generator.state,
                             3, 1.0, {"valid": []})  # fmt: skip
        if state == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
    code, _, err = run(capsys, monkeypatch, "train", "mel-roformer", "--musdb", tmp_path,
                       "--out", run_dir, "--resume")  # fmt: skip
    assert code == 2 and "state.pt" in err and "unexpected" not in err, err
    assert len(err.strip().splitlines()) == 1 and len(err) < 800, err


def test_models_import_refuses_to_write_over_its_own_input(tmp_path, capsys, monkeypatch,
                                                           tiny_checkpoint):  # fmt: skip
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"the user's checkpoint")
    config = tmp_path / "x.yaml"
    config.write_text("model:\n  dim: 8\n")
    for out in (ckpt, config, tmp_path / "." / "x.ckpt"):
        code, _, err = run(capsys, monkeypatch, "models", "import", ckpt, "--config", config,
                           "-o", out)  # fmt: skip
        assert code == 2 and "itself" in err, err
    assert ckpt.read_bytes() == b"the user's checkpoint"


def test_an_interrupted_run_removes_the_temp_files_it_made_and_only_those(tmp_path):
    """A signal can land after a temp file is made but before its writer records it; the CLI's
    last step on an interrupt removes every temp file the process still has, and never a file
    already renamed into place."""
    from sepcli import files

    target, kept = tmp_path / "a.wav", tmp_path / "b.wav"
    fd, orphan = files.temp_beside(target, ".wav.part")  # its writer never learnt its name
    os.close(fd)
    fd, done = files.temp_beside(kept, ".wav.part")
    os.write(fd, b"whole")
    os.close(fd)
    files.replace_into_place(done, kept)
    other = tmp_path / ".c.wav.12345678.wav.part"  # not this process's: left to stale_temps
    other.write_bytes(b"")
    files.remove_live_temps()
    assert not orphan.exists() and kept.read_bytes() == b"whole" and other.exists()
    files.remove_live_temps()  # nothing left to do
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.wav.12345678.wav.part", "b.wav"]
