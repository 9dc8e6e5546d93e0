"""`sepcli separate`: outputs, naming, formats, resume, batch failures, JSON and exit codes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sepcli.cli import main
from tests.conftest import write_tone


def run(capsys, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["sepcli", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as done:
        code = done.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_separate_writes_every_stem_with_the_input_length(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    write_tone(tmp_path / "song.wav", 2.3)
    code, out, err = run(capsys, monkeypatch, "separate", tmp_path / "song.wav", "-m", tiny_checkpoint,
                         "-o", tmp_path / "sep", "--json")  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == "tiny"
    (track,) = doc["tracks"]
    assert track["status"] == "done" and track["error"] is None
    assert sorted(track["outputs"]) == ["bass", "drums", "other", "vocals"]
    for stem in ("vocals", "drums", "bass", "other"):
        info = sf.info(tmp_path / "sep" / "tiny" / "song" / f"{stem}.wav")
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (
            int(2.3 * 44100),
            44100,
            2,
            "PCM_16",
        )
    # A rerun skips the finished track; --overwrite redoes it.
    code, out, _ = run(capsys, monkeypatch, "separate", tmp_path / "song.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "sep", "--json")  # fmt: skip
    assert json.loads(out)["tracks"][0]["status"] == "skipped"
    code, out, _ = run(capsys, monkeypatch, "separate", tmp_path / "song.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "sep", "--json", "--overwrite")  # fmt: skip
    assert json.loads(out)["tracks"][0]["status"] == "done"


def test_tta_comes_from_the_checkpoint_and_the_flag_overrides_it(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    from sepcli import checkpoints
    from sepcli.engine import Demixer

    loaded = checkpoints.load_model(str(tiny_checkpoint))
    with_tta = tmp_path / "tta.safetensors"
    checkpoints.save_checkpoint(with_tta, loaded.model, inference={"tta": True, "overlap": 0.5})
    write_tone(tmp_path / "song.wav", 1.3)
    audio = sf.read(tmp_path / "song.wav", dtype="float32")[0].T

    def stems(*flags):
        code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "song.wav", "-m", with_tta,
                           "-o", tmp_path / "sep", "--bit-depth", "32", "--overwrite", "-q", *flags)  # fmt: skip
        assert code == 0, err
        return np.stack([sf.read(tmp_path / "sep" / "tta" / "song" / f"{s}.wav", dtype="float32")[0].T
                         for s in ("vocals", "drums", "bass", "other")])  # fmt: skip

    def engine(tta):
        return Demixer(loaded.model, overlap=0.5, tta=tta).separate(audio)

    by_default, off = stems(), stems("--no-tta")
    np.testing.assert_allclose(by_default, engine(True), atol=1e-6, rtol=0)
    np.testing.assert_allclose(off, engine(False), atol=1e-6, rtol=0)
    assert np.abs(by_default - off).max() > 1e-4


def test_two_stems_residual_plus_estimate_is_the_mixture(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    mix = write_tone(tmp_path / "a.wav", 1.5, subtype="FLOAT")
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path, "--two-stems", "vocals", "--bit-depth", "32", "--clip", "none")  # fmt: skip
    assert code == 0, err
    vocals, _ = sf.read(tmp_path / "tiny" / "a" / "vocals.wav")
    rest, _ = sf.read(tmp_path / "tiny" / "a" / "no_vocals.wav")
    assert sorted(p.name for p in (tmp_path / "tiny" / "a").iterdir()) == [
        "no_vocals.wav",
        "vocals.wav",
    ]
    # For a 4-stem model the residual is the other three estimates summed; the model's
    # estimates need not sum to the mixture, so check the residual is not just silence or a copy.
    assert np.abs(rest).max() > 0 and not np.allclose(rest, vocals)
    assert vocals.shape == mix.shape


def test_formats_bit_depths_rates_and_subsets(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    write_tone(tmp_path / "in.flac", 1.0, rate=48000, channels=1)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "in.flac", "-m", tiny_checkpoint, "-o", tmp_path,
                       "--format", "flac", "--bit-depth", "24", "--stems", "vocals,bass")  # fmt: skip
    assert code == 0, err
    files = sorted((tmp_path / "tiny" / "in").iterdir())
    assert [f.name for f in files] == ["bass.flac", "vocals.flac"]
    info = sf.info(files[0])
    assert (info.frames, info.samplerate, info.channels, info.subtype) == (
        48000,
        48000,
        1,
        "PCM_24",
    )
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "in.flac", "-m", tiny_checkpoint, "-o", tmp_path / "mp3",
                       "--format", "mp3", "--stems", "vocals", "--sample-rate", "22050")  # fmt: skip
    assert code == 0, err
    info = sf.info(tmp_path / "mp3" / "tiny" / "in" / "vocals.mp3")
    assert info.samplerate == 22050 and info.format == "MP3"


def test_mp3_stems_line_up_with_the_wav_stems_sample_for_sample(tmp_path, capsys, monkeypatch,
                                                                tiny_checkpoint):  # fmt: skip
    """MP3 encoders delay the audio (about 25 ms for LAME) and pad the end; the stems carry the
    gapless header that tells decoders to trim both, so a DAW or soundfile gets them aligned."""
    rate = 44100
    x = 0.05 * np.random.default_rng(0).standard_normal((3 * rate, 2))
    x[::11025] += 0.8  # clicks, so that a shift of even one sample shows
    sf.write(tmp_path / "in.wav", x, rate, subtype="FLOAT")
    for fmt in ("wav", "mp3"):
        code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "in.wav", "-m", tiny_checkpoint,
                           "-o", tmp_path / fmt, "--format", fmt, "--stems", "drums")  # fmt: skip
        assert code == 0, err
    wav = sf.read(tmp_path / "wav" / "tiny" / "in" / "drums.wav")[0][:, 0]
    decoded = {"soundfile": sf.read(tmp_path / "mp3" / "tiny" / "in" / "drums.mp3")[0][:, 0]}
    if shutil.which("ffmpeg"):
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", tmp_path / "mp3" / "tiny" / "in" / "drums.mp3",
                              "-f", "f32le", "-"], capture_output=True, check=True).stdout  # fmt: skip
        decoded["ffmpeg"] = np.frombuffer(raw, np.float32).reshape(-1, 2)[:, 0]
    for decoder, mp3 in decoded.items():
        assert mp3.shape == wav.shape, decoder
        lags = np.arange(-2000, 2001)
        corr = [np.dot(wav[2000:-2000], mp3[2000 + k : len(mp3) - 2000 + k]) for k in lags]
        assert lags[int(np.argmax(corr))] == 0, decoder


def kbps(path, seconds):
    return path.stat().st_size * 8 / seconds / 1000


@pytest.mark.parametrize(("rate", "asked", "expected"), [(44100, None, 320), (44100, "128", 128),
                                                         (22050, None, 160), (22050, "64", 64)])  # fmt: skip
def test_mp3_stems_have_the_constant_bitrate_asked_for(rate, asked, expected, tmp_path, capsys,
                                                       monkeypatch, tiny_checkpoint):  # fmt: skip
    write_tone(tmp_path / "in.wav", 4.0, rate=rate)
    extra = ["--mp3-bitrate", asked] if asked else []
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "in.wav", "-m", tiny_checkpoint, "-o", tmp_path,
                       "--format", "mp3", "--stems", "vocals", *extra)  # fmt: skip
    assert code == 0, err
    # A constant bitrate fixes the size whatever the audio (libsndfile's default, VBR, does not).
    assert kbps(tmp_path / "tiny" / "in" / "vocals.mp3", 4.0) == pytest.approx(expected, rel=0.03)


def test_an_mp3_bitrate_out_of_range_is_refused(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    write_tone(tmp_path / "in.wav", 0.2)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "in.wav", "-m", tiny_checkpoint, "-o", tmp_path,
                       "--format", "mp3", "--mp3-bitrate", "500")  # fmt: skip
    assert code == 2 and "--mp3-bitrate" in err and "Traceback" not in err


def test_an_input_rate_mp3_cannot_store_fails_that_track_only_and_says_what_to_set(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    # These used to fail only after the track was separated, when the encoder refused the rate.
    (tmp_path / "music").mkdir()
    write_tone(tmp_path / "music" / "hi.wav", 0.3, rate=96000)
    write_tone(tmp_path / "music" / "cd.wav", 0.3)
    code, out, err = run(capsys, monkeypatch, "separate", tmp_path / "music", "-m", tiny_checkpoint,
                         "-o", tmp_path / "out", "--format", "mp3", "--json")  # fmt: skip
    tracks = {Path(t["input"]).name: t for t in json.loads(out)["tracks"]}
    assert code == 1 and tracks["cd.wav"]["status"] == "done"
    assert tracks["hi.wav"]["error"].startswith("MP3 cannot store 96000 Hz")
    assert tracks["hi.wav"]["error"].endswith("set one with --sample-rate")
    assert not (tmp_path / "out" / "tiny" / "hi").exists()
    code, out, _ = run(capsys, monkeypatch, "separate", tmp_path / "music" / "hi.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "out", "--format", "mp3", "--sample-rate", "48000")  # fmt: skip
    assert (
        code == 0 and sf.info(tmp_path / "out" / "tiny" / "hi" / "vocals.mp3").samplerate == 48000
    )


@pytest.mark.parametrize(("flags", "named"), [(("--format", "mp3", "--bit-depth", "24"), "--bit-depth"),
                                             (("--format", "flac", "--mp3-bitrate", "128"), "--mp3-bitrate"),
                                             (("--mp3-bitrate", "128"), "--mp3-bitrate"),
                                             (("--bit-depth", "0"), "bit depth must be 16, 24 or 32"),
                                             (("--format", "mp3", "--sample-rate", "96000"), "MP3 cannot store 96000 Hz"),
                                             (("--format", "flac", "--sample-rate", "700000"), "FLAC cannot store 700000 Hz"),
                                             (("--stems", ","), "--stems names no stem"),
                                             (("--stems", ""), "--stems names no stem"),
                                             (("--stems", "", "--two-stems", "vocals"), "either --stems or --two-stems")])  # fmt: skip
def test_a_setting_the_output_format_cannot_use_is_refused(flags, named, tmp_path, capsys,
                                                                monkeypatch, tiny_checkpoint):  # fmt: skip
    write_tone(tmp_path / "in.wav", 0.2)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "in.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "out", *flags)  # fmt: skip
    assert code == 2 and named in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_folder_recursion_mirrors_the_tree_and_one_bad_file_does_not_stop_the_batch(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    music = tmp_path / "music"
    (music / "album").mkdir(parents=True)
    write_tone(music / "one.wav", 0.5)
    write_tone(music / "album" / "two.wav", 0.5)
    (music / "album" / "broken.wav").write_text("this is not audio")
    (music / "notes.txt").write_text("ignored")
    code, out, err = run(
        capsys,
        monkeypatch,
        "separate",
        music,
        "-r",
        "-m",
        tiny_checkpoint,
        "-o",
        tmp_path / "out",
        "--json",
    )
    assert code == 1
    tracks = {t["input"].split("/")[-1]: t for t in json.loads(out)["tracks"]}
    assert tracks["broken.wav"]["status"] == "failed" and "broken.wav" in err
    assert "not a readable WAV" in tracks["broken.wav"]["error"]
    assert tracks["one.wav"]["status"] == tracks["two.wav"]["status"] == "done"
    assert (tmp_path / "out" / "tiny" / "album" / "two" / "vocals.wav").exists()
    assert (tmp_path / "out" / "tiny" / "one" / "bass.wav").exists()
    assert not list((tmp_path / "out").rglob("*.part"))


def test_a_rerun_in_the_music_folder_resumes_without_separating_its_own_stems(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    """`cd ~/Music && sepcli separate . -r` puts separated/ inside the folder it walks."""
    music = tmp_path / "music"
    (music / "album").mkdir(parents=True)
    write_tone(music / "one.wav", 0.4)
    write_tone(music / "album" / "two.wav", 0.4)
    monkeypatch.chdir(music)
    code, out, err = run(
        capsys, monkeypatch, "separate", ".", "-r", "-m", tiny_checkpoint, "--json"
    )
    assert code == 0, err
    assert sorted(t["status"] for t in json.loads(out)["tracks"]) == ["done", "done"]
    stems = music / "separated" / "tiny"
    (stems / "album" / "two" / "drums.wav").unlink()  # as if interrupted before its last stem
    code, out, err = run(
        capsys, monkeypatch, "separate", ".", "-r", "-m", tiny_checkpoint, "--json"
    )
    assert code == 0, err
    tracks = {t["input"]: t["status"] for t in json.loads(out)["tracks"]}
    assert tracks == {"one.wav": "skipped", "album/two.wav": "done"}
    assert "skipping the output folder" in err
    assert len(list((music / "separated").rglob("*.wav"))) == 8
    # Globs skip the outputs too; a stem named on its own is still separated.
    code, out, err = run(
        capsys, monkeypatch, "separate", "**/*.wav", "-m", tiny_checkpoint, "--json"
    )
    assert code == 0 and "skipped 8 file(s) in the output folder" in err
    assert len(json.loads(out)["tracks"]) == 2
    vocals = "separated/tiny/one/vocals.wav"
    code, out, err = run(capsys, monkeypatch, "separate", vocals, "-m", tiny_checkpoint, "--json")
    assert code == 0 and [t["status"] for t in json.loads(out)["tracks"]] == ["done"], err


@pytest.mark.parametrize(
    "template", ["../{track}/{stem}.{ext}", "/tmp/{stem}.{ext}", "{nope}/{stem}.{ext}"]
)
def test_templates_that_escape_out_or_are_malformed_are_refused(
    tmp_path, capsys, monkeypatch, tiny_checkpoint, template
):
    write_tone(tmp_path / "s.wav", 0.2)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "s.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "o", "--name", template)  # fmt: skip
    assert code == 2
    assert err.startswith("sepcli: error:") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_two_inputs_writing_the_same_output_are_an_error_before_any_work(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_tone(tmp_path / "a" / "x.wav", 0.2)
    write_tone(tmp_path / "b" / "x.wav", 0.2)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav",
                       "-m", tiny_checkpoint, "-o", tmp_path / "o")  # fmt: skip
    assert code == 2 and "would both write" in err
    assert "give a folder that holds both, with -r" in err
    assert not (tmp_path / "o").exists()
    # The advice works: a walk of their common folder names them a/x and b/x.
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path, "-r", "-m", tiny_checkpoint,
                       "-o", tmp_path / "o", "-q")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "o" / "tiny" / "a" / "x" / "vocals.wav").exists()
    assert (tmp_path / "o" / "tiny" / "b" / "x" / "vocals.wav").exists()
    # A template without {relpath} collides within one walk too, and is told to add it.
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a", tmp_path / "b", "-m",
                       tiny_checkpoint, "-o", tmp_path / "p", "--name", "{track}_{stem}.{ext}")  # fmt: skip
    assert code == 2 and "use a --name template with {relpath}" in err


def test_same_named_files_in_one_folder_are_told_apart_by_trackext(
    tmp_path, capsys, monkeypatch, tiny_checkpoint
):
    write_tone(tmp_path / "song.wav", 0.2)
    sf.write(tmp_path / "song.flac", sf.read(tmp_path / "song.wav")[0][:4410], 44100)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path, "-m", tiny_checkpoint,
                       "-o", tmp_path / "o")  # fmt: skip
    assert code == 2 and "would both write" in err and "{trackext}" in err
    assert not (tmp_path / "o").exists()
    # The advice works, and each stem comes from its own input (the FLAC is the shorter one).
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path, "-m", tiny_checkpoint, "-o",
                       tmp_path / "o", "--name", "{model}/{relpath}_{trackext}/{stem}.{ext}", "-q")  # fmt: skip
    assert code == 0, err
    assert sf.info(tmp_path / "o" / "tiny" / "song_wav" / "vocals.wav").frames == 8820
    assert sf.info(tmp_path / "o" / "tiny" / "song_flac" / "vocals.wav").frames == 4410


def test_usage_errors_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch, tiny_checkpoint):
    write_tone(tmp_path / "s.wav", 0.2)
    for args in (["separate", tmp_path / "missing.wav", "-m", tiny_checkpoint],
                 ["separate", tmp_path / "s.wav", "-m", tmp_path / "nope.safetensors"],
                 ["separate", tmp_path / "s.wav", "-m", tiny_checkpoint, "--format", "ogg"],
                 ["separate", tmp_path / "s.wav", "-m", tiny_checkpoint, "--two-stems", "guitar"],
                 ["separate", tmp_path / "s.wav", "-m", "mel-roformer"],
                 ["separate", "--bogus"]):  # fmt: skip
        code, out, err = run(capsys, monkeypatch, *args)
        assert code == 2, (args, err)
        assert "Traceback" not in err and err.strip().count("\n") <= 2, err


@pytest.mark.parametrize(
    "flag, value, says",
    [("--segment", "0", "--segment"), ("--segment", "0.05", "--segment"),
     ("--batch-size", "0", "--batch-size"), ("--shifts", "-1", "--shifts"),
     ("--sample-rate", "0", "--sample-rate"), ("--sample-rate", "7999", "--sample-rate"),
     ("--clip", "loud", "unknown clip mode 'loud'")],
)  # fmt: skip
def test_out_of_range_settings_are_refused_before_any_work(
    tmp_path, capsys, monkeypatch, tiny_checkpoint, flag, value, says
):
    # Zero once meant "the default" here (a falsy value), and a bad --clip failed every track.
    write_tone(tmp_path / "s.wav", 0.2)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "s.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "o", flag, value)  # fmt: skip
    assert code == 2 and err.startswith("sepcli: error:") and says in err
    assert err.strip().count("\n") == 0, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flag, value, says",
    [("--steps", "0", "steps must be at least 1"), ("--batch-size", "0", "batch_size must be at least 1"),
     ("--lr", "0", "lr must be positive"), ("--segment", "-1", "segment must be positive"),
     ("--accumulate", "0", "accumulate must be at least 1"),
     ("--valid-every", "0", "valid_every must be at least 1")],
)  # fmt: skip
def test_out_of_range_training_settings_are_refused_before_any_work(
    tmp_path, capsys, monkeypatch, flag, value, says
):
    code, _, err = run(capsys, monkeypatch, "train", "mel-roformer", "--musdb", tmp_path / "db",
                       "--out", tmp_path / "run", flag, value)  # fmt: skip
    assert code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_unknown_training_loss_is_a_one_line_error_before_any_work(
    tmp_path, capsys, monkeypatch
):
    code, _, err = run(capsys, monkeypatch, "train", "mel-roformer", "--musdb", tmp_path / "db",
                       "--out", tmp_path / "run", "--loss", "l2")  # fmt: skip
    assert code == 2 and "unknown loss 'l2'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    code, _, err = run(capsys, monkeypatch, "train", "ibm-cnn", "--musdb", tmp_path / "db",
                       "--out", tmp_path / "run", "--loss", "sdr")  # fmt: skip
    assert code == 2 and "cannot train ibm-cnn" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_help_works_through_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "sepcli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("separate", "evaluate", "train", "models", "info"):
        assert command in result.stdout


def test_version_prints_alone_and_no_arguments_show_the_help_without_an_empty_error(
    capsys, monkeypatch
):
    from sepcli import __version__

    code, out, err = run(capsys, monkeypatch, "--version")
    assert (code, out, err) == (0, f"sepcli {__version__}\n", "")
    code, out, err = run(capsys, monkeypatch)
    assert code == 2 and "separate" in out and "evaluate" in out
    assert err == ""


def test_info_prints_config_and_provenance(capsys, monkeypatch, tiny_checkpoint):
    code, out, _ = run(capsys, monkeypatch, "info", tiny_checkpoint)
    meta = json.loads(out)
    assert code == 0 and meta["architecture"] == "mel-roformer"
    assert meta["sources"] == ["vocals", "drums", "bass", "other"]
    assert meta["provenance"]["note"] == "random weights for tests"


def test_readme_first_command_separates_the_generated_example_with_the_default(
    tmp_path, capsys, monkeypatch
):
    from sepcli.example import example_song, main as write_example

    write_example([str(tmp_path / "example.wav")])
    capsys.readouterr()
    code, out, err = run(
        capsys, monkeypatch, "separate", tmp_path / "example.wav", "-o", tmp_path / "sep", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["model"] == "default"
    mix, _ = sf.read(tmp_path / "example.wav")
    stems = [
        sf.read(tmp_path / "sep" / "default" / "example" / f"{s}.wav")[0]
        for s in ("vocals", "drums", "bass", "other")
    ]
    assert all(s.shape == mix.shape == example_song().shape for s in stems)
    # The trained masks split the mix: the stems add back up to it far better than any one stem.
    residual = mix - sum(stems)
    assert 10 * np.log10(np.sum(mix**2) / np.sum(residual**2)) > 10


def test_the_example_writer_takes_a_length_and_answers_help(tmp_path, capsys):
    from sepcli.example import RATE, main as write_example

    write_example([str(tmp_path / "short.wav"), "--seconds", "2.5"])
    info = sf.info(tmp_path / "short.wav")
    assert (info.frames, info.channels, info.samplerate) == (int(2.5 * RATE), 2, RATE)
    with pytest.raises(SystemExit) as exit_:
        write_example(["--help"])
    assert exit_.value.code == 0 and "--seconds" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["complex-mask", "ibm-cnn"])
def test_separate_with_the_other_architectures(tmp_path, capsys, monkeypatch, arch):
    """The IBM-CNN works at 22.05 kHz: the engine resamples in and back out to the file's rate."""
    import torch

    from sepcli import checkpoints

    torch.manual_seed(0)
    small = {"complex-mask": {"channels": [8, 16, 32]},
             "ibm-cnn": {"conv_channels": [4, 4, 8, 8], "hidden": [32, 16]}}[arch]  # fmt: skip
    model = checkpoints.build_model(arch, small)
    checkpoints.save_checkpoint(tmp_path / f"{arch}.safetensors", model, {"note": "test"})
    mix = write_tone(tmp_path / "song.wav", 1.7, subtype="FLOAT")
    code, out, err = run(capsys, monkeypatch, "separate", tmp_path / "song.wav",
                         "-m", tmp_path / f"{arch}.safetensors", "-o", tmp_path / "sep",
                         "--json", "--bit-depth", "32", "--clip", "none")  # fmt: skip
    assert code == 0, err
    outputs = json.loads(out)["tracks"][0]["outputs"]
    assert sorted(outputs) == sorted(model.sources)
    stems = [sf.read(outputs[s])[0] for s in model.sources]
    for audio in stems:
        assert audio.shape == mix.shape
    if arch == "ibm-cnn":
        # Binary mask and its complement: the two stems add back up to the mixture, up to the
        # 44.1 -> 22.05 -> 44.1 kHz round trip (worst at the file's first and last samples).
        np.testing.assert_allclose(stems[0] + stems[1], mix, atol=1e-2)
        np.testing.assert_allclose((stems[0] + stems[1])[200:-200], mix[200:-200], atol=1e-3)


def test_the_batch_bar_counts_skipped_tracks_so_a_resumed_batch_ends_full(tmp_path):
    import io
    from pathlib import Path

    from rich.console import Console

    from sepcli.batch import Track, TrackResult
    from sepcli.progress import RichReporter

    reporter = RichReporter(Console(file=io.StringIO()), tracks=3)
    with reporter:
        reporter.track_done(TrackResult("a.wav", "skipped", {}, None, 0.0))  # a resumed batch
        reporter.track_start(Track(Path("b.wav"), "b"))
        reporter.track_done(TrackResult("b.wav", "done", {}, None, 1.0))
        reporter.track_done(TrackResult("c.wav", "skipped", {}, None, 0.0))
        task = reporter.progress.tasks[0]
        assert (task.description, task.completed, task.total) == ("tracks", 3, 3)


def test_info_prints_an_embedded_model_s_card_and_json_on_request(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "info", "default")
    assert code == 0 and out.startswith("# Model card: `default`")
    assert "| vocals |" in out  # the scores table
    code, out, _ = run(capsys, monkeypatch, "info", "default", "--json")
    meta = json.loads(out)
    assert meta["architecture"] == "mel-roformer" and meta["parameters"] > 1_000_000
