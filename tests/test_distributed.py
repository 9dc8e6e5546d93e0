"""A library shared by processes (CPU, gloo): `--jobs`, torchrun, `--shard`, faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import soundfile as sf

from sepcli import batch, distributed
from tests.conftest import write_tone

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def library(folder: Path, seconds=(0.3, 2.5, 0.5, 1.5, 0.2, 1.0)) -> dict[str, float]:
    """Tracks of very different lengths, and one corrupt file."""
    folder.mkdir(parents=True)
    lengths = {}
    for i, length in enumerate(seconds):
        write_tone(folder / f"t{i}.wav", length)
        lengths[f"t{i}.wav"] = length
    (folder / "corrupt.wav").write_text("not audio at all")
    return lengths


def separate(args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sepcli", "separate", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=timeout)  # fmt: skip


def check_outputs(out: Path, lengths: dict[str, float]) -> None:
    for name, seconds in lengths.items():
        stems = sorted((out / "tiny" / name[:-4]).glob("*.wav"))
        assert [p.name for p in stems] == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
        assert all(sf.info(p).frames == int(seconds * 44100) for p in stems)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files


def test_two_jobs_separate_every_track_once_and_report_once(tmp_path, tiny_checkpoint):
    lengths = library(tmp_path / "in")
    args = [tmp_path / "in", "-r", "-m", tiny_checkpoint, "-o", tmp_path / "out", "--json",
            "--jobs", "2"]  # fmt: skip
    proc = separate(args)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)  # one JSON document, from rank 0
    by_name = {Path(t["input"]).name: t for t in doc["tracks"]}
    assert len(doc["tracks"]) == len(by_name) == 7  # each track listed once
    assert by_name["corrupt.wav"]["status"] == "failed"
    assert {t["status"] for n, t in by_name.items() if n != "corrupt.wav"} == {"done"}
    assert {t["rank"] for t in doc["tracks"]} == {0, 1} and all(t["host"] for t in doc["tracks"])
    assert proc.stderr.count("corrupt.wav") == 1  # one report, not one per rank
    check_outputs(tmp_path / "out", lengths)
    rerun = separate(args)
    statuses = {Path(t["input"]).name: t["status"] for t in json.loads(rerun.stdout)["tracks"]}
    assert statuses.pop("corrupt.wav") == "failed"
    assert set(statuses.values()) == {"skipped"}


@pytest.mark.slow
def test_torchrun_shares_the_tracks_the_same_way(tmp_path, tiny_checkpoint):
    lengths = library(tmp_path / "in", seconds=(0.3, 1.2, 0.5))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "-m", "sepcli", "separate", str(tmp_path / "in"), "-r", "-m", str(tiny_checkpoint),
           "-o", str(tmp_path / "out"), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    doc = json.loads(proc.stdout)
    statuses = sorted(t["status"] for t in doc["tracks"])
    assert statuses == ["done", "done", "done", "failed"], proc.stderr
    check_outputs(tmp_path / "out", lengths)


def test_shards_cover_the_sorted_list_exactly_once(tmp_path, tiny_checkpoint):
    tracks = [batch.Track(Path(f"/m/{c}.wav"), c) for c in "dbcaegf"]
    parts = [distributed.shard(tracks, k, 3) for k in (1, 2, 3)]
    names = [t.relpath for part in parts for t in part]
    assert sorted(names) == sorted("abcdefg") and len(names) == 7
    assert [t.relpath for t in parts[0]] == ["a", "d", "g"]
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(batch.UsageError):
            distributed.parse_shard(bad)
    lengths = library(tmp_path / "in", seconds=(0.2, 0.3, 0.2))
    seen = []
    for k in (1, 2):
        proc = separate([tmp_path / "in", "-r", "-m", tiny_checkpoint, "-o", tmp_path / "out",
                         "--json", "--shard", f"{k}/2"])  # fmt: skip
        seen += [Path(t["input"]).name for t in json.loads(proc.stdout)["tracks"]]
    assert sorted(seen) == sorted([*lengths, "corrupt.wav"])
    check_outputs(tmp_path / "out", lengths)


def _workers(launcher: subprocess.Popen) -> list[psutil.Process]:
    return [p for p in psutil.Process(launcher.pid).children() if "sepcli" in " ".join(p.cmdline())]


def start_two_jobs(tmp_path: Path, checkpoint: Path) -> tuple[list, subprocess.Popen]:
    """`--jobs 2` on tmp_path/in, in the background, once its first track is written."""
    args = [tmp_path / "in", "-r", "-m", checkpoint, "-o", tmp_path / "out", "--jobs", "2",
            "--segment", "0.5", "-q"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sepcli", "separate", *map(str, args)],
                            stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out").rglob("vocals.wav")):
        time.sleep(0.05)
    return args, proc


def test_sigint_stops_every_worker_with_no_partial_files_and_a_rerun_resumes(tmp_path,
                                                                            tiny_checkpoint):  # fmt: skip
    # Enough work that the signal lands mid-run even on a fast machine.
    lengths = library(tmp_path / "in", seconds=(6.0,) * 16)
    args, proc = start_two_jobs(tmp_path, tiny_checkpoint)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert len(list((tmp_path / "out").rglob("vocals.wav"))) < 16  # it really stopped early
    assert "Traceback" not in err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]
    for stem in (tmp_path / "out").rglob("*.wav"):
        assert sf.info(stem).frames == 6 * 44100  # every file there is whole
    rerun = separate([*args[:-1], "--json"], timeout=300)
    assert rerun.returncode == 1  # the corrupt file
    check_outputs(tmp_path / "out", lengths)


def test_a_worker_that_dies_is_named_with_the_tracks_it_held(tmp_path, tiny_checkpoint):
    lengths = library(tmp_path / "in", seconds=(6.0,) * 4)
    args, proc = start_two_jobs(tmp_path, tiny_checkpoint)
    workers = _workers(proc)
    assert len(workers) == 2
    workers[1].kill()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "worker 1 died" in err and "in flight" in err, err
    assert ".wav" in err.split("in flight:")[1]  # names the track it held
    separate([*args[:-1]], timeout=300)
    check_outputs(tmp_path / "out", lengths)


def test_the_queue_hands_out_the_largest_files_first_and_results_keep_their_index(tmp_path):
    import torch.distributed as dist

    sizes = {"a.wav": 10, "b.wav": 300, "c.wav": 20, "d.wav": 300, "e.wav": 5}
    tracks = []
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
        tracks.append(batch.Track(tmp_path / name, name[:-4]))
    order = distributed.longest_first(tracks)
    assert [tracks[i].path.name for i in order] == ["b.wav", "d.wav", "c.wav", "a.wav", "e.wav"]
    store = dist.HashStore()
    store.set("order", json.dumps(order))
    ranks = [distributed.TrackQueue(store, len(tracks), distributed.Place(r, 2, r, 2))
             for r in range(2)]  # fmt: skip
    first, second = ranks[0].claims(tracks), ranks[1].claims(tracks)
    got = [next(first).path.name, next(second).path.name, next(second).path.name]
    assert got == ["b.wav", "d.wav", "c.wav"]  # claimed largest first, whoever asks
    ranks[0].finish(1, {"index": 1})
    assert sorted(ranks[0].in_flight()) == [2, 3]  # d and c: claimed, no result yet
