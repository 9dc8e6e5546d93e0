"""Separating a library on many processes, GPUs and hosts: a shared queue of tracks.

Every process (a torchrun rank, or a `--jobs` worker) discovers and plans the same sorted track
list, then takes the next track from a counter in the torch.distributed store (`store.add`), so
a rank that drew long tracks takes fewer and no track is separated twice. Each result goes into
the store; at the end rank 0 gathers them over gloo (CPU clusters need no NCCL) and prints the
one summary, the one JSON document and the one exit code. `--shard K/N` is the static
alternative for job arrays: every Nth track of the sorted list, from the Kth.

The store also records which rank holds which track, so when a worker dies the launcher can say
which tracks were in flight; a rerun separates them (their outputs are not whole).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from sepcli.batch import Track, UsageError

STORE_TIMEOUT = timedelta(hours=24)  # a rank may separate for a long time between store calls


@dataclasses.dataclass
class Place:
    """This process's place in a distributed run (from torchrun's environment variables)."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    host: str = dataclasses.field(default_factory=socket.gethostname)

    @classmethod
    def from_env(cls) -> "Place | None":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))  # fmt: skip

    def device(self, requested: str) -> str:
        """`auto` -> this rank's GPU (cuda:LOCAL_RANK) where there are GPUs; else as asked."""
        if requested == "auto" and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def share_threads(self) -> None:
        """On the CPU, split the cores between the processes of this host."""
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_world))


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1-based) -> (K, N)."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: use K/N, e.g. 3/16")
    if not 1 <= k <= n:
        raise UsageError(f"--shard {text}: K must be in 1..N")
    return k, n


def shard(tracks: list[Track], k: int, n: int) -> list[Track]:
    """Shard K of N: the tracks at positions K-1, K-1+N, ... of the sorted list. The N shards
    cover every track exactly once, and every job computes the same split."""
    ordered = sorted(tracks, key=lambda t: str(t.path))
    return ordered[k - 1 :: n]


def connect_store(place: Place) -> dist.Store:
    """The run's key-value store: torchrun's agent store (or rank 0's, without an agent),
    under a prefix of this run and restart."""
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    hosted = os.environ.get("SEPCLI_STORE_HOSTED") == "1"  # `--jobs`: the launcher hosts it
    store = dist.TCPStore(host, port, place.world, is_master=place.rank == 0 and not (agent or hosted),
                          timeout=STORE_TIMEOUT, wait_for_workers=False)  # fmt: skip
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"sepcli/{run}/{restart}/", store)


def longest_first(tracks: list[Track]) -> list[int]:
    """Track indices, largest file first: the long tracks start first, so the ranks run out of
    work together instead of one finishing a long track alone (longest processing time first)."""

    def size(track: Track) -> int:
        try:
            return track.path.stat().st_size
        except OSError:
            return 0

    return sorted(range(len(tracks)), key=lambda i: (-size(tracks[i]), i))


class TrackQueue:
    """The shared queue: claim the next track, record results, read them back. Claims follow
    `order` (track indices; rank 0 puts it in the store), results keep the track's index."""

    def __init__(
        self, store: dist.Store, count: int, place: Place, order: list[int] | None = None
    ) -> None:
        self.store, self.count, self.place, self.order = store, count, place, order

    def claims(self, tracks: list[Track]) -> Iterator[Track]:
        """This rank's tracks, claimed one at a time as it is ready for the next."""
        order = self._order()
        while True:
            position = int(self.store.add("next", 1)) - 1
            if position >= self.count:
                return
            index = order[position]
            self.store.set(f"claimed/{index}", f"{self.place.rank}@{self.place.host}")
            yield tracks[index]

    def _order(self) -> list[int]:
        if self.order is None:
            stored = self.store.check(["order"])
            self.order = json.loads(self.store.get("order")) if stored else list(range(self.count))
        return self.order

    def finish(self, index: int, result: dict[str, Any]) -> None:
        self.store.set(f"result/{index}", json.dumps(result))
        self.store.add("finished", 1)

    def finished(self) -> int:
        return int(self.store.add("finished", 0))

    def in_flight(self) -> list[int]:
        """Claimed tracks without a result (their rank died or was stopped)."""
        claimed = min(int(self.store.add("next", 0)), self.count)
        order = self._order()
        return [order[p] for p in range(claimed) if not self.store.check([f"result/{order[p]}"])]


def init_group(store: dist.Store, place: Place) -> None:
    """gloo over the same store, for the final gather (works on CPU-only clusters)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.PrefixStore("pg/", store), rank=place.rank,
                                world_size=place.world, timeout=STORE_TIMEOUT)  # fmt: skip


def gather_results(results: list[dict[str, Any]], place: Place) -> list[dict[str, Any]] | None:
    """Every rank's results, on rank 0 (None elsewhere), in track order."""
    gathered: list[Any] | None = [None] * place.world if place.rank == 0 else None
    dist.gather_object(results, gathered, dst=0)
    if gathered is None:
        return None
    merged = [r for part in gathered for r in part]
    return sorted(merged, key=lambda r: r["index"])


class StoreProgress:
    """Rank 0's one progress bar for the whole batch: a thread reads the shared counter."""

    def __init__(self, queue: TrackQueue, advance) -> None:
        self.queue, self.advance, self.stop = queue, advance, threading.Event()
        self.shown = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "StoreProgress":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self._update()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self._update()

    def _update(self) -> None:
        try:
            done = self.queue.finished()
        except Exception:  # noqa: BLE001 - a closing store must not kill the bar's thread
            return
        if done > self.shown:
            self.advance(done - self.shown)
            self.shown = done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_jobs(jobs: int, argv: Iterable[str]) -> int:
    """`--jobs N`: host a store, start N workers of this same command on it, wait for them, and
    pass signals on. Returns rank 0's exit status; if a worker dies, stops the others and names
    the tracks that were in flight."""
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, jobs + 1, is_master=True, timeout=STORE_TIMEOUT,
                          wait_for_workers=False)  # fmt: skip
    prefixed = dist.PrefixStore("sepcli/run/0/", store)
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "WORLD_SIZE": str(jobs), "LOCAL_WORLD_SIZE": str(jobs), "SEPCLI_STORE_HOSTED": "1"}  # fmt: skip
    command = [sys.executable, "-m", "sepcli", *argv]
    workers = [subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
               for r in range(jobs)]  # fmt: skip

    forwarded: set[int] = set()

    def forward(signum, frame) -> None:
        forwarded.add(signum)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    codes: dict[int, int] = {}
    died = None
    while len(codes) < jobs:
        for rank, worker in enumerate(workers):
            if rank not in codes and worker.poll() is not None:
                codes[rank] = worker.returncode
                # Killed by a signal we did not pass on: a crash or an outside kill. (A worker
                # signalled as it exits can die by the default handler Python restores then.)
                if worker.returncode < 0 and -worker.returncode not in forwarded and died is None:
                    died = rank
                    forward(signal.SIGTERM, None)
        time.sleep(0.1)
    if died is not None:
        count = int(prefixed.add("count", 0))
        queue = TrackQueue(prefixed, count, Place(0, jobs, 0, jobs))
        names = [prefixed.get(f"name/{i}").decode() for i in queue.in_flight()] if count else []
        sys.stderr.write(f"sepcli: error: worker {died} died (signal {-codes[died]}); "
                         f"in flight: {', '.join(names) or 'none'}; rerun to finish them\n")  # fmt: skip
        return 1
    if forwarded & {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} and codes[0] < 0:
        return 130  # interrupted, like a single process
    return codes[0]
