"""Rich progress for `sepcli separate`: a bar over tracks, a bar over each track's audio seconds,
and the summary table at the end. Everything goes to stderr, so `--json` keeps stdout clean."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sepcli.audio import AudioInfo
from sepcli.batch import Reporter, Track, TrackResult
from sepcli.messages import one_line, shown


class RichReporter(Reporter):
    def __init__(self, console: Console, quiet: bool = False, tracks: int | None = None) -> None:
        self.console, self.quiet, self.tracks = console, quiet, tracks
        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(),
            TextColumn("{task.completed:.0f} {task.fields[unit]}"),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=quiet,
        )  # fmt: skip
        self.batch_task: TaskID | None = None
        self.track_task: TaskID | None = None
        self.results: list[TrackResult | dict] = []
        self.count_tracks = True  # False when a shared queue's counter moves the batch bar

    def planned(self, tracks: int) -> None:
        self.tracks = tracks

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def note(self, message: str) -> None:
        self.console.print(f"sepcli: {one_line(message)}", soft_wrap=True, markup=False)

    def _batch_task(self) -> TaskID:
        if self.batch_task is None:
            self.batch_task = self.progress.add_task(
                "tracks", total=self.tracks, unit="tracks done"
            )
        return self.batch_task

    def track_start(self, track: Track) -> None:
        self._batch_task()
        if self.track_task is not None:
            self.progress.remove_task(self.track_task)
        self.track_task = self.progress.add_task(
            shown(track.path.name)[:40], total=None, unit="s of audio"
        )

    def track_info(self, info: AudioInfo) -> None:
        if self.track_task is not None and info.duration:
            self.progress.update(self.track_task, total=info.duration)

    def audio_progress(self, seconds: float) -> None:
        if self.track_task is not None:
            self.progress.advance(self.track_task, seconds)

    def track_done(self, result: TrackResult) -> None:
        self.results.append(result)
        if result.status == "failed":
            self.console.print(
                f"sepcli: failed: {shown(result.input)}: {result.error}",
                soft_wrap=True,
                markup=False,
            )
        # Skipped tracks count too, so a resumed batch's bar ends full.
        if self.count_tracks:
            self.progress.advance(self._batch_task(), 1)

    def advance_tracks(self, count: int) -> None:
        """Move the batch bar by tracks that any process finished."""
        self.progress.advance(self._batch_task(), count)

    def per_track(self) -> "RichReporter":
        """This reporter, with the batch bar left to `advance_tracks` (a shared queue)."""
        self.count_tracks = False
        return self

    def summary(self, results: list[TrackResult] | None = None) -> None:
        """The table of every track's outcome (by default the tracks reported so far)."""
        results = self.results if results is None else results
        if self.quiet or not results:
            return
        table = Table(title="sepcli separate")
        for column in ("track", "duration", "time", "status"):
            table.add_column(column)
        rows = [r if isinstance(r, dict) else {**vars(r)} for r in results]
        for r in rows:
            duration = f"{r['duration']:.1f} s" if r.get("duration") else "-"
            status = r["status"] if r["status"] != "failed" else f"failed: {r['error']}"
            where = f" (rank {r['rank']})" if "rank" in r else ""
            table.add_row(shown(r["input"]), duration, f"{r['seconds']:.1f} s{where}", status)
        self.console.print(table, markup=False)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
        self.console.print(", ".join(f"{n} {s}" for s, n in counts.items()))
