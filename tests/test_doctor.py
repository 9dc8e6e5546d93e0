"""`sepcli doctor`: facts, problems with one-line fixes, JSON, and the exit status."""

import json

from sepcli import checkpoints
from sepcli import doctor as doctor_module
from tests.test_cli_separate import run


def test_doctor_reports_the_machine_and_the_default_run_as_json(capsys, monkeypatch, tmp_path):
    code, out, err = run(capsys, monkeypatch, "doctor", "--json", "-o", tmp_path / "stems")
    assert code == 0, err
    doc = json.loads(out)
    facts = doc["facts"]
    for key in ("torch", "torch_build", "gpus", "mps_available", "cpu_flags", "threads",
                "libsndfile", "mp3_writing", "ffmpeg", "output", "default_run"):  # fmt: skip
        assert key in facts, key
    assert facts["default_run"]["device"] == "cpu" and facts["default_run"]["batch_size"] == 4
    assert facts["output"]["writable"] and facts["output"]["free_gb"] > 0


def test_missing_ffmpeg_and_a_cpu_torch_on_an_nvidia_machine_come_with_fixes(capsys, monkeypatch):
    import shutil

    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda tool: None if tool.startswith("ff") else real_which(tool)
    )
    monkeypatch.setattr(doctor_module, "nvidia_gpu_present", lambda: True)
    code, out, _ = run(capsys, monkeypatch, "doctor")
    assert code == 0  # warnings only: separate still works on WAV and FLAC
    assert "ffmpeg/ffprobe not found" in out and "fix: install ffmpeg" in out
    assert "torch is a CPU-only build" in out and "CUDA build of torch" in out


def test_a_missing_default_model_is_broken_and_exits_1(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoints, "WEIGHTS_DIR", tmp_path)
    code, out, _ = run(capsys, monkeypatch, "doctor")
    assert code == 1 and "broken:" in out and "fix:" in out
