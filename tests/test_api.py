"""The Python API: load, separate arrays, files and folders, with the CLI's names and errors."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import sepcli
from sepcli import api
from sepcli.audio import AudioError
from sepcli.batch import UsageError
from tests.conftest import write_tone
from tests.test_cli_separate import run

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "stems" / "default" / "song" / "vocals.flac").exists()


def test_separate_takes_arrays_and_tensors_at_any_rate_and_returns_the_input_shape(tiny_checkpoint):
    sep = sepcli.load(tiny_checkpoint)
    assert sep.sources == ("vocals", "drums", "bass", "other") and sep.sample_rate == 44100
    rng = np.random.default_rng(0)
    for audio, rate in ((rng.uniform(-0.5, 0.5, (2, 30000)), 44100),
                        (torch.rand(22050) - 0.5, 22050),
                        (rng.uniform(-0.5, 0.5, (1, 7001)).astype(np.float32), 48000)):  # fmt: skip
        stems = sep.separate(audio, rate)
        shape = tuple(audio.shape) if audio.ndim == 2 else (1, audio.shape[0])
        assert set(stems) == set(sep.sources)
        assert all(s.shape == shape and s.dtype == np.float32 for s in stems.values())
    two = sep.separate(rng.uniform(-0.5, 0.5, (2, 30000)), 44100, two_stems="vocals")
    assert set(two) == {"vocals", "no_vocals"}


def test_a_residual_stem_is_the_sum_of_the_other_estimates(tiny_checkpoint):
    sep = sepcli.load(tiny_checkpoint)
    audio = np.random.default_rng(1).uniform(-0.3, 0.3, (2, 44100)).astype(np.float32)
    stems = sep.separate(audio, 44100, stems=["vocals", "drums", "bass", "other", "no_vocals"])
    others = stems["drums"] + stems["bass"] + stems["other"]
    np.testing.assert_allclose(stems["no_vocals"], others, atol=1e-5)


def test_separate_file_and_files_write_what_the_cli_writes(tmp_path, capsys, monkeypatch,
                                                           tiny_checkpoint):  # fmt: skip
    write_tone(tmp_path / "a.wav", 0.5)
    write_tone(tmp_path / "b.wav", 0.3)
    sep = sepcli.load(tiny_checkpoint)
    result = sep.separate_file(tmp_path / "a.wav", out=tmp_path / "api", fmt="wav")
    assert result["status"] == "done"
    code, out, _ = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m", tiny_checkpoint,
                       "-o", tmp_path / "cli", "--json")  # fmt: skip
    cli_result = json.loads(out)["tracks"][0]
    for stem, path in result["outputs"].items():
        assert Path(path).read_bytes() == Path(cli_result["outputs"][stem]).read_bytes()
    seen = []
    results = api.separate_files([tmp_path / "a.wav", tmp_path / "b.wav"], model=sep,
                                 out=tmp_path / "api", progress=lambda t, d, n: seen.append((t, d, n)))  # fmt: skip
    assert [r["status"] for r in results] == ["skipped", "done"]
    assert seen and seen[-1][0].endswith("b.wav") and seen[-1][1] == pytest.approx(0.3, abs=0.01)


def test_errors_are_the_cli_s_and_planning_fails_before_any_work(tmp_path, tiny_checkpoint):
    write_tone(tmp_path / "a.wav", 0.3)
    sep = sepcli.load(tiny_checkpoint)
    with pytest.raises(UsageError, match="one file"):
        api.separate_files([tmp_path / "a.wav"], model=sep, out=tmp_path / "o", name="{track}.wav")
    assert not (tmp_path / "o").exists()
    with pytest.raises(AudioError, match="NaN"):
        sep.separate(np.full((2, 100), np.nan), 44100)
    with pytest.raises(AudioError, match="shape"):
        sep.separate(np.zeros((2, 3, 4)), 44100)
    with pytest.raises(UsageError, match="unknown stem"):
        sep.separate(np.zeros((2, 1000)), 44100, stems=["guitar"])
