"""The `sepcli` command line: separate, evaluate, train, models, info.

Commands only parse, call and report. Every error a user can cause becomes one line on stderr
and an exit code here, in `main`: 0 all done or skipped, 1 some inputs failed, 2 usage,
130 interrupted. `--debug` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from sepcli import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Music source separation: split songs into stems, in batches, and score separators on MUSDB18.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(help="List separators and checkpoints, or import a community checkpoint.")
app.add_typer(models_app, name="models")
# Markup off: file names and messages are shown as they are ("song [live].wav", "x[/]y.wav").
err_console = Console(stderr=True, highlight=False, markup=False)
out_console = Console(highlight=False, markup=False)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG = {"on": False}
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps."
PRECISION_HELP = (
    "auto (bf16/fp16 on CUDA; bf16 on a CPU with native bf16 for models measured to gain; "
    "else fp32), fp32, bf16 or fp16."
)
# A round floor above the spectral models' STFT window (2048 samples, 46 ms): shorter chunks
# separate nothing useful. The ceilings keep a typo from asking for terabytes or days.
MIN_SEGMENT_SECONDS, MAX_SEGMENT_SECONDS = 0.1, 300.0
MAX_OVERLAP = 0.95
MAX_BATCH, MAX_SHIFTS = 1024, 32
MIN_OUTPUT_RATE, MAX_OUTPUT_RATE = 8000, 768000


class Interrupted(BaseException):
    """SIGINT or SIGTERM: stop, clean up temp files, exit 130."""


def _on_signal(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _print_version(value: bool) -> None:
    # Eager, so it runs while the options are parsed: a plain flag would only be seen once a
    # command was given, and `sepcli --version` alone failed with "Missing command".
    if value:
        typer.echo(f"sepcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    DEBUG["on"] = debug


def _split_csv(value: Optional[str]) -> Optional[list[str]]:
    """The comma-separated names; an option given empty is [], not None (= not given)."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


ENSEMBLE_HELP = (
    "Combine several -m models: avg_wave (default with several -m), median_wave, avg_fft, "
    "max_fft (fuller stems, more bleed) or min_fft (less bleed, thinner stems)."
)


@app.command()
def separate(
    inputs: list[str] = typer.Argument(
        ..., help="Audio files, folders or glob patterns.", show_default=False
    ),
    model: list[str] = typer.Option(
        ["default"],
        "-m",
        "--model",
        help="Embedded model name or checkpoint path; repeat it for an ensemble.",
    ),
    config: Optional[list[Path]] = typer.Option(
        None,
        "--config",
        help="YAML config of a community .ckpt checkpoint (Mel- or BS-RoFormer, told apart by "
        "it); one per .ckpt, in order.",
    ),
    ensemble: Optional[str] = typer.Option(None, "--ensemble", help=ENSEMBLE_HELP),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Comma-separated weight per model for the averages, e.g. 2,1."
    ),
    out: Path = typer.Option(Path("separated"), "-o", "--out", help="Output folder."),
    name: str = typer.Option(
        "{model}/{relpath}/{stem}.{ext}",
        "--name",
        help=(
            "Output path template below --out. Keys: {model}; {track}, the input's name without"
            " its extension; {trackext}, that extension; {relpath}, its path below the folder"
            " given, without the extension; {stem}; {ext}, the output format."
        ),
    ),
    fmt: str = typer.Option("wav", "--format", help="wav, flac or mp3."),
    bit_depth: Optional[int] = typer.Option(
        None, "--bit-depth", help="16, 24 or 32 (32 = float, WAV only); WAV and FLAC (default 16)."
    ),
    mp3_bitrate: Optional[int] = typer.Option(
        None,
        "--mp3-bitrate",
        min=8,
        max=320,
        help="Constant MP3 bitrate in kb/s (at most 160 below 32 kHz, 64 below 16 kHz). "
        "Default 320.",
    ),
    clip: str = typer.Option(
        "rescale", "--clip", help="rescale (divide by the peak if above 1), clamp or none."
    ),
    stems: Optional[str] = typer.Option(
        None, "--stems", help="Comma-separated stems to write, e.g. vocals,bass."
    ),
    two_stems: Optional[str] = typer.Option(
        None, "--two-stems", help="Write STEM and no_STEM only."
    ),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Recurse into folders."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo tracks whose outputs exist (default: skip them)."
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    segment: Optional[float] = typer.Option(
        None,
        "--segment",
        min=MIN_SEGMENT_SECONDS,
        max=MAX_SEGMENT_SECONDS,
        help="Chunk length in seconds (default: the model's).",
    ),
    overlap: Optional[float] = typer.Option(
        None,
        "--overlap",
        min=0.0,
        max=MAX_OVERLAP,
        help="Overlap between chunks, fraction in [0, 0.95] (default: the model's, else 0.25).",
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, max=MAX_BATCH, help="Chunks per forward pass (default 4)."
    ),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    shifts: int = typer.Option(
        0,
        "--shifts",
        min=0,
        max=MAX_SHIFTS,
        help="Average N passes at random time shifts (slower, a bit better).",
    ),
    tta: Optional[bool] = typer.Option(
        None,
        "--tta/--no-tta",
        help="Also separate channel-swapped and polarity-inverted copies and average (3x slower; "
        "default: the model's).",
    ),
    sample_rate: Optional[int] = typer.Option(
        None,
        "--sample-rate",
        min=MIN_OUTPUT_RATE,
        max=MAX_OUTPUT_RATE,
        help="Output rate in Hz, 8000 to 768000 (default: the input's).",
    ),
    downmix: bool = typer.Option(
        False, "--downmix", help="Downmix inputs with more than 2 channels."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON summary on stdout; everything else goes to stderr."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars or summary table."),
    jobs: int = typer.Option(
        1, "--jobs", min=1, max=256, help="Worker processes sharing the tracks (CPU cores split)."
    ),
    shard: Optional[str] = typer.Option(
        None,
        "--shard",
        help="K/N: only every Nth track of the sorted list, from the Kth (job arrays).",
    ),
) -> None:
    """Separate songs into stems: separated/<model>/<track>/<stem>.wav by default.

    Under torchrun (or with --jobs) the processes share one queue of tracks; rank 0 reports."""
    from sepcli import api, distributed, progress

    place = distributed.Place.from_env()
    if jobs > 1 and place is None:
        raise typer.Exit(distributed.launch_jobs(jobs, _without_jobs(sys.argv[1:])))
    shard_of = distributed.parse_shard(shard) if shard else None
    if place is not None:
        device = place.device(device)
        if device in ("auto", "cpu"):
            place.share_threads()
    main_rank = place is None or place.rank == 0
    reporter = progress.RichReporter(
        err_console, quiet=quiet or not main_rank or (as_json and not sys.stderr.isatty())
    )
    separator = _load_separator(model, config, ensemble, weights, device, precision, segment,
                                overlap, batch_size, shifts, tta, reporter.note)  # fmt: skip
    planned = api.plan(inputs, separator, out, name, fmt, _split_csv(stems), two_stems, recursive,
                       overwrite, bit_depth, mp3_bitrate, clip, sample_rate, downmix)  # fmt: skip
    tracks = planned.tracks
    if shard_of is not None:
        tracks = distributed.shard(tracks, *shard_of)
    if place is None:
        reporter.planned(len(tracks))
        with reporter:
            done = list(api.run(planned, tracks, reporter=reporter, raise_unexpected=DEBUG["on"]))
    else:
        done = _separate_shared(planned, tracks, place, reporter)
        if done is None:  # not rank 0: rank 0 reports
            return
    reporter.summary()
    if as_json:
        _print_json({"model": separator.name, "tracks": done})
    if any(r["status"] == "failed" for r in done):
        raise typer.Exit(EXIT_FAILED)


def _load_separator(models, configs, ensemble, weights, device, precision, segment, overlap,
                    batch_size, shifts, tta, on_retry=None):  # fmt: skip
    """One model, or an ensemble of several (or of one, with --ensemble)."""
    from sepcli import api
    from sepcli.batch import UsageError

    parsed = _parse_weights(weights)
    if ensemble is None and len(models) == 1:
        if parsed is not None:
            raise UsageError("--weights needs several -m models (or --ensemble)")
        if configs and len(configs) > 1:
            raise UsageError(f"{len(configs)} --config for one model")
        return api.load(models[0], configs[0] if configs else None, device, precision, segment,
                        overlap, batch_size, shifts, tta, on_retry=on_retry)  # fmt: skip
    return api.load_ensemble(models, configs, ensemble or "avg_wave", parsed, device, precision,
                             segment, overlap, batch_size, shifts, tta, on_retry)  # fmt: skip


def _parse_weights(weights: Optional[str]) -> Optional[list[float]]:
    from sepcli.batch import UsageError

    if weights is None:
        return None
    try:
        return [float(w) for w in weights.split(",")]
    except ValueError:
        raise UsageError(f"--weights {weights}: give numbers separated by commas, e.g. 2,1")


@app.command()
def transcribe(
    inputs: list[str] = typer.Argument(
        ..., help="Audio files, folders or glob patterns.", show_default=False
    ),
    model: str = typer.Option(
        "melody", "-m", "--model", help="Melody model: the embedded 'melody' or a checkpoint."
    ),
    out: Path = typer.Option(Path("transcribed"), "-o", "--out", help="Output folder."),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Recurse into folders."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo tracks whose outputs exist (default: skip them)."
    ),
    min_note: float = typer.Option(
        0.1, "--min-note", min=0.01, max=10.0, help="Shortest note kept, in seconds."
    ),
    voicing_threshold: Optional[float] = typer.Option(
        None,
        "--voicing-threshold",
        min=0.01,
        max=0.99,
        help="Voicing probability from which a frame counts as sung: lower finds more melody "
        "and more false notes (default: the model's own; 0.55 for the embedded one).",
    ),
    fast: bool = typer.Option(
        False,
        "--fast",
        help="One pass of the network: skip the model's test-time transpositions (the "
        "embedded model hears each track 5 times, up to 2 semitones either way; --fast is "
        "about 4x faster and finds a little less melody).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON summary on stdout; everything else goes to stderr."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Transcribe the sung melody: transcribed/<model>/<track>/{melody.csv,notes.csv,notes.mid}.

    melody.csv: time, f0 in Hz (0 when unvoiced), confidence; notes.csv and notes.mid: the notes
    (onset, offset, MIDI pitch) segmented from the contour. Runs on the CPU."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from sepcli import transcribe as runner
    from sepcli.api import load_transcriber
    from sepcli.messages import shown

    loaded = load_transcriber(model, fast)
    name, melody_model = loaded.name, loaded.model
    tracks, notes = runner.plan(inputs, name, out, recursive)
    for note in notes:
        err_console.print(f"sepcli: {note}")
    progress = Progress(TextColumn("transcribe"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), console=err_console, transient=True,
                        disable=quiet or not err_console.is_terminal)  # fmt: skip
    with progress:
        task = progress.add_task("transcribe", total=len(tracks), info="")

        def on_track(result):
            progress.update(task, advance=1, info=Path(result["input"]).name)
            if result["status"] == "failed":
                err_console.print(f"sepcli: failed: {shown(result['input'])}: {result['error']}")

        done = list(runner.run(tracks, melody_model, overwrite, min_note, on_track, DEBUG["on"],
                               voicing_threshold))  # fmt: skip
    counts = {s: sum(r["status"] == s for r in done) for s in ("done", "skipped", "failed")}
    if not quiet:
        err_console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; outputs in {out}")
    if as_json:
        _print_json({"model": name, "tracks": done})
    if counts["failed"]:
        raise typer.Exit(EXIT_FAILED)


def _without_jobs(argv: list[str]) -> list[str]:
    """The command line again, for the workers, without --jobs N."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--jobs":
            skip = True
        elif not arg.startswith("--jobs="):
            out.append(arg)
    return out


def _separate_shared(planned, tracks, place, reporter) -> list[dict] | None:
    """One rank's part of a shared batch: claim tracks from the store's queue until none are
    left, then gather every rank's results on rank 0 (None on the other ranks)."""
    from sepcli import api, distributed

    store = distributed.connect_store(place)
    distributed.init_group(store, place)
    index = {str(t.path): i for i, t in enumerate(tracks)}
    if place.rank == 0:
        store.set("count", str(len(tracks)))
        for i, track in enumerate(tracks):
            store.set(f"name/{i}", str(track.path))
        store.set("order", json.dumps(distributed.longest_first(tracks)))
    # Every rank claims in rank 0's order (another host may see other file sizes).
    order = json.loads(store.get("order"))
    queue = distributed.TrackQueue(store, len(tracks), place, order)
    reporter.planned(len(tracks))
    mine = []
    with reporter:
        # One bar for the whole batch on rank 0, fed by the store's counter.
        shared = (
            distributed.StoreProgress(queue, reporter.advance_tracks) if place.rank == 0 else None
        )
        with shared or contextlib.nullcontext():
            for result in api.run(planned, queue.claims(tracks), reporter=reporter.per_track(),
                                  raise_unexpected=DEBUG["on"]):  # fmt: skip
                result = {**result, "rank": place.rank, "host": place.host,
                          "index": index[result["input"]]}  # fmt: skip
                queue.finish(result["index"], result)
                mine.append(result)
    gathered = distributed.gather_results(mine, place)
    if gathered is None:
        return None
    for result in gathered:
        del result["index"]
    reporter.results = gathered
    return gathered


def _print_json(doc: dict) -> None:
    """One JSON line on stdout (ASCII: undecodable file-name bytes stay escaped)."""
    try:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader left; the outputs are written all the same
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


evaluate_app = typer.Typer(
    help="Score a separator on MUSDB18 with museval (BSSEval v4) and global SDR."
)
app.add_typer(evaluate_app, name="evaluate")


@evaluate_app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    model: Optional[list[str]] = typer.Option(
        None, "-m", "--model", help="Model name or checkpoint path; repeat it for an ensemble."
    ),
    config: Optional[list[Path]] = typer.Option(
        None, "--config", help="YAML config of a community .ckpt (one per .ckpt, in order)."
    ),
    ensemble: Optional[str] = typer.Option(None, "--ensemble", help=ENSEMBLE_HELP),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Comma-separated weight per model for the averages."
    ),
    oracle: Optional[str] = typer.Option(
        None, "--oracle", help="Score an oracle instead: irm2, irm1, ibm or mix."
    ),
    musdb: Optional[Path] = typer.Option(
        None, "--musdb", help="MUSDB18 root (train/ and test/ inside)."
    ),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="Score on a dataset instead: stems:ROOT (ROOT/<track>/<stem>.<ext>; a mixture file, "
        "where present, is the input) or musdb:ROOT.",
    ),
    score_rate: Optional[int] = typer.Option(
        None,
        "--score-rate",
        min=1000,
        max=768000,
        help="Score at this rate (default: the references' own; MIR-1K's measure uses 16000).",
    ),
    is_wav: bool = typer.Option(False, "--is-wav", help="MUSDB18-HQ layout (wav stems)."),
    subset: str = typer.Option("test", "--subset", help="test or train."),
    split: Optional[str] = typer.Option(
        None, "--split", help="train or valid (train subset only)."
    ),
    tracks: Optional[list[str]] = typer.Option(
        None,
        "--tracks",
        help="Only these track names (repeatable; glob patterns for stem folders, e.g. 'bug_*').",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Results folder (default results/<model>)."
    ),
    jobs: int = typer.Option(
        os.cpu_count() or 1, "--jobs", min=1, help="Scoring processes (default: cores)."
    ),
    segment: Optional[float] = typer.Option(
        None,
        "--segment",
        min=MIN_SEGMENT_SECONDS,
        max=MAX_SEGMENT_SECONDS,
        help="Chunk length in seconds (default: the model's).",
    ),
    overlap: Optional[float] = typer.Option(
        None,
        "--overlap",
        min=0.0,
        max=MAX_OVERLAP,
        help="Overlap between chunks (default: the model's, else 0.25).",
    ),
    shifts: int = typer.Option(
        0, "--shifts", min=0, max=MAX_SHIFTS, help="Average N passes at random time shifts."
    ),
    tta: Optional[bool] = typer.Option(
        None, "--tta/--no-tta", help="Channel-swap and polarity test-time augmentation."
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    task: str = typer.Option(
        "separation",
        "--task",
        help="separation, or melody: score a melody model (-m) on stem folders with pitch.pv "
        "labels (MIR-1K) with mir_eval's melody measures.",
    ),
    fast: bool = typer.Option(
        False,
        "--fast",
        help="--task melody: hear each clip once, without the model's test-time transpositions "
        "(as 'sepcli transcribe --fast').",
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Separate and score MUSDB or stem-folder tracks: museval median and global SDR (and GNSDR
    for vocals + accompaniment folders); writes summary.json, scores.csv, museval JSON, a plot.
    With --task melody, score vocal melody transcription instead."""
    if ctx.invoked_subcommand is not None:
        return
    if task == "melody":
        _evaluate_melody(model, data, tracks, out, fast, quiet)
        return
    if task != "separation":
        from sepcli.batch import UsageError

        raise UsageError(f"unknown --task {task} (use separation or melody)")
    import numpy as np

    from eval import musdb as runner
    from eval import report
    from eval.oracle import oracle_estimates
    from sepcli.batch import UsageError

    if fast:
        raise UsageError("--fast applies to --task melody (separation has --shifts)")
    if (musdb is None) == (data is None):
        raise UsageError("give the data to score: --musdb ROOT or --data stems:ROOT")
    if (model is None) == (oracle is None):
        raise UsageError("give either -m MODEL or --oracle irm2|irm1|ibm|mix")
    eval_tracks, settings = _eval_tracks(musdb, data, is_wav, subset, split, tracks)
    if oracle is not None:
        label = f"oracle-{oracle}"
        sources = ("vocals", "drums", "bass", "other")

        def separate_fn(mix, references, rate):
            missing = [s for s in sources if s not in references]
            if missing:
                raise UsageError(f"--oracle needs the four MUSDB stems; this data lacks {missing}")
            return oracle_estimates(oracle, {s: references[s] for s in sources})
    else:
        separator = _load_separator(model, config, ensemble, weights, device, precision, segment,
                                    overlap, None, shifts, tta)  # fmt: skip
        label = separator.name
        settings.update(_engine_settings(separator, model, ensemble, precision, shifts))

        def separate_fn(mix, references, mix_rate):
            # The API resamples to each model's rate and back, and matches the channels.
            stems = separator.separate(mix.T.astype(np.float32), mix_rate)
            return {s: stems[s].T.astype(np.float64) for s in separator.sources}

    out = out or Path("results") / label
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    # Off on a pipe: there rich draws nothing until it stops, and then a stray blank line.
    progress = Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        console=err_console, transient=True,
                        disable=quiet or not err_console.is_terminal)  # fmt: skip
    sdrs: list[float] = []
    with progress:
        task = progress.add_task("evaluate", total=None, info="")

        def on_track(record):
            values = [v["SDR"] for v in record["scores"].values() if np.isfinite(v["SDR"])]
            sdrs.append(float(np.mean(values)) if values else float("nan"))
            progress.update(task, advance=1, info=f"running median SDR {np.nanmedian(sdrs):.2f} dB")

        records = runner.evaluate(separate_fn, label, eval_tracks, out, settings, jobs, on_track,
                                  score_rate)  # fmt: skip
    summary = report.write_outputs(out, label, settings, records)
    report.boxplot({label: out}, out / "boxplot.png")
    inputs = sorted({r.get("input", "") for r in records})
    err_console.print(report.summary_table({label: summary}))
    err_console.print(f"{len(records)} tracks; model input: {', '.join(inputs)}; results in {out}")


def _evaluate_melody(models, data, patterns, out, fast, quiet) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from eval.melody import evaluate_melody
    from sepcli import datasets
    from sepcli import transcribe as runner
    from sepcli.api import load_transcriber
    from sepcli.batch import UsageError

    if not models or len(models) != 1:
        raise UsageError("--task melody scores one melody model: give -m MODEL once")
    if data is None or not data.startswith("stems:"):
        raise UsageError("--task melody needs --data stems:ROOT (track folders with pitch.pv)")
    transcriber = load_transcriber(models[0], fast)
    name, model = transcriber.name, transcriber.model
    tracks = datasets.eval_tracks(datasets.DataSpec.parse(data).root, patterns)
    out = out or Path("results") / f"{name}-melody"
    progress = Progress(TextColumn("evaluate melody"), BarColumn(), MofNCompleteColumn(),
                        console=err_console, transient=True,
                        disable=quiet or not err_console.is_terminal)  # fmt: skip

    def transcribe_fn(mix, rate):
        return runner.scoring_contour(model, mix, rate)

    with progress:
        task = progress.add_task("melody", total=len(tracks))
        try:
            summary = evaluate_melody(transcribe_fn, name, tracks, out,
                                      lambda _: progress.advance(task))  # fmt: skip
        except ValueError as err:
            raise UsageError(str(err))
    err_console.print(f"{summary['tracks']} clips: " + _melody_line(summary["mean"]))
    err_console.print(f"results in {out}")


def _engine_settings(separator, models, ensemble, precision, shifts) -> dict:
    """What keys the evaluation cache besides the tracks: every model's weights (their digest,
    not the path: the same path may hold new weights), engine settings, and the combination."""
    from sepcli import checkpoints
    from sepcli.engine import resolve_precision
    from sepcli.ensemble import Ensemble

    engine = separator.demixer
    members = engine.members if isinstance(engine, Ensemble) else [engine]
    per_model = [{"weights": checkpoints.weights_digest(m.model), "segment": m.segment,
                  "hop": m.hop, "tta": m.tta,
                  "runs_in": resolve_precision(m.device, precision, m.cpu_bf16)}
                 for m in members]  # fmt: skip
    settings = {"checkpoint": ",".join(models), "precision": precision, "shifts": shifts,
                **per_model[0]}  # fmt: skip
    if isinstance(engine, Ensemble) or ensemble is not None:
        settings.update(ensemble=engine.algorithm, ensemble_weights=engine.weights,
                        models=per_model)  # fmt: skip
    return settings


def _eval_tracks(musdb, data, is_wav, subset, split, names):
    """The tracks to score and the settings that key their cache."""
    from eval import musdb as runner
    from sepcli import datasets

    spec = datasets.DataSpec("musdb", musdb, is_wav=is_wav) if musdb else datasets.DataSpec.parse(
        data, is_wav=is_wav
    )  # fmt: skip
    if spec.kind == "musdb":
        runner.check_subset(subset, split)
        settings = {"subset": subset, "split": split, "is_wav": spec.is_wav}
        found = runner.musdb_eval_tracks(spec.root, subset, split, spec.is_wav,
                                         list(names) if names else None)  # fmt: skip
        return found, settings
    found = datasets.eval_tracks(spec.root, list(names) if names else None)
    return found, {"data": f"stems:{spec.root.resolve()}", "tracks": sorted(t.name for t in found)}


@evaluate_app.command("compare")
def evaluate_compare(
    folders: list[Path] = typer.Argument(..., help="Results folders written by 'sepcli evaluate'."),
    plot: Optional[Path] = typer.Option(
        None,
        "--plot",
        help="PNG for the boxplots (default: compare.png in the first folder's parent).",
    ),
) -> None:
    """Side-by-side table and per-stem SDR boxplots of several results folders; for two, the
    track-by-track differences with their standard errors too. Melody results folders
    (--task melody) get the same: their five measures, clip by clip."""
    from eval import melody_report, report
    from sepcli.batch import UsageError

    melody = [melody_report.is_melody_results(folder) for folder in folders]
    if any(melody) and not all(melody):
        raise UsageError("melody results and separation results cannot be compared: give "
                         "folders of one kind")  # fmt: skip
    kind = melody_report if any(melody) else report  # the same functions for either kind
    summaries = {folder.name: kind.read_summary(folder) for folder in folders}
    out_console.print(kind.summary_table(summaries))
    if len(folders) == 2:
        diffs = kind.paired_differences(folders[0], folders[1])
        out_console.print(kind.paired_table(folders[0].name, folders[1].name, diffs))
    plot = plot or folders[0].parent / "compare.png"
    kind.boxplot({f.name: f for f in folders}, plot)
    err_console.print(f"boxplots: {plot}")


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context) -> None:
    """List the separators, presets and embedded checkpoints."""
    if ctx.invoked_subcommand is not None:
        return
    import models as registry
    from rich.table import Table

    from sepcli import checkpoints

    table = Table(title="architectures")
    table.add_column("name")
    table.add_column("presets (sepcli train NAME --config PRESET)")
    presets = checkpoints.list_presets()
    for name in registry.ARCHITECTURES:
        table.add_row(name, ", ".join(presets.get(name, [])))
    from sepcli.melody_train import presets as melody_presets

    table.add_row("melody", ", ".join(melody_presets()) + " (with --init A_MEL_ROFORMER)")
    out_console.print(table)
    table = Table(title="checkpoints (-m NAME)")
    for column in ("name", "architecture", "sources", "rate", "path"):
        table.add_column(column)
    for path in checkpoints.list_checkpoints():
        meta = checkpoints.read_metadata(path)
        melody = meta["architecture"] == "melody"  # a transcriber: `sepcli transcribe -m`
        table.add_row(
            path.stem,
            meta["architecture"],
            "f0, notes" if melody else ",".join(meta["sources"]),
            str(meta["config"]["sample_rate"] if melody else meta["sample_rate"]),
            str(path),
        )
    out_console.print(table)


@models_app.command("import")
def models_import(
    checkpoint: Path = typer.Argument(..., help="Community .ckpt/.pth state dict."),
    config: Path = typer.Option(..., "--config", help="Its YAML config."),
    out: Path = typer.Option(..., "-o", "--out", help="Native .safetensors file to write."),
    half: bool = typer.Option(
        False, "--half", help="Store the weights as float16: half the file, float32 when loaded."
    ),
) -> None:
    """Convert a community Mel-RoFormer or BS-RoFormer checkpoint to sepcli's native format."""
    from sepcli import checkpoints
    from sepcli.batch import UsageError

    for given, what in ((checkpoint, "checkpoint"), (config, "config")):
        if out.exists() and given.exists() and os.path.samefile(out, given):
            raise UsageError(f"-o {out} is the {what} itself; give a new file name")
    loaded = checkpoints.load_model(str(checkpoint), config)
    provenance = loaded.metadata.get("provenance", {})
    checkpoints.save_checkpoint(out, loaded.model, provenance, loaded.inference, half=half)
    err_console.print(
        f"wrote {out} ({', '.join(loaded.model.sources)}, {loaded.model.sample_rate} Hz)"
    )


@app.command()
def info(
    checkpoint: str = typer.Argument(..., help="Checkpoint path, or an embedded model's name."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML config of a community .ckpt (family detected from it)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="The checkpoint's metadata as JSON, even where it has a card."
    ),
) -> None:
    """Print an embedded model's card, or a checkpoint's architecture, config and provenance."""
    import numpy as np

    from sepcli import checkpoints

    if config is not None:
        loaded = checkpoints.load_model(checkpoint, config)
        meta = dict(loaded.metadata)
        meta["parameters"] = sum(p.numel() for p in loaded.model.parameters())
        typer.echo(json.dumps(meta, indent=2))
        return
    path = checkpoints.embedded_checkpoint(checkpoint) or Path(checkpoint)
    if not path.exists():
        raise checkpoints.CheckpointError(f"checkpoint not found: {checkpoint}")
    card = path.with_suffix(".md")
    if not as_json and card.is_file():
        typer.echo(card.read_text(), nl=False)
        return
    meta, shapes = checkpoints.read_header(path)
    if meta.get("architecture") == "melody":
        meta["parameters"] = int(sum(np.prod(shape) for shape in shapes.values()))
        typer.echo(json.dumps(meta, indent=2))
        return
    # Built on the meta device: counting parameters allocates nothing, whatever the config says.
    model = checkpoints.check_shapes_before_building(
        meta["architecture"], meta.get("config", {}), shapes, str(path)
    )
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    typer.echo(json.dumps(meta, indent=2))


@app.command()
def train(
    architecture: str = typer.Argument(
        ..., help="mel-roformer, bs-roformer, complex-mask or ibm-cnn."
    ),
    musdb: Optional[Path] = typer.Option(
        None, "--musdb", help="MUSDB18 root (with train/ and test/): short for --data musdb:ROOT."
    ),
    data: Optional[list[str]] = typer.Option(
        None,
        "--data",
        help="A dataset, KIND:ROOT[:WEIGHT] (repeatable): musdb:ROOT, or stems:ROOT for "
        "ROOT/<track>/<stem>.<ext> folders. A YAML 'data:' list does the same, with "
        "validation splits.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Run folder: checkpoints, metrics.jsonl, curves.png."
    ),
    is_wav: bool = typer.Option(False, "--is-wav", help="MUSDB18-HQ layout (wav stems)."),
    config: Optional[str] = typer.Option(
        None,
        "--config",
        help="Preset name (small, medium, large, ...; for melody: salience, the "
        "default, transpose, temporal, windows, three-windows, wide, ema, guide, ...: a wrong "
        "name lists them) or YAML path.",
    ),
    steps: Optional[int] = typer.Option(
        None, "--steps", help="Optimizer steps (default: the preset's)."
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Segments per batch."),
    segment: Optional[float] = typer.Option(None, "--segment", help="Training segment in seconds."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak AdamW learning rate."),
    accumulate: Optional[int] = typer.Option(
        None, "--accumulate", help="Gradient accumulation steps."
    ),
    valid_every: Optional[int] = typer.Option(
        None, "--valid-every", help="Validate on the whole valid tracks every N steps."
    ),
    loss: Optional[str] = typer.Option(
        None,
        "--loss",
        help="model (the architecture's own objective, default) or sdr (negative SDR over 1 s "
        "frames, the quantity MUSDB scores measure; good for fine-tuning).",
    ),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from OUT/state.pt."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seeds the initial weights and the training data."
    ),
    init: Optional[Path] = typer.Option(
        None,
        "--init",
        help="Start from these weights (native checkpoint). A Mel-RoFormer with fewer layers per "
        "transformer, narrower mask MLPs or a smaller dim than the config is grown so that it "
        "still gives its old output.",
    ),
    cache: Optional[Path] = typer.Option(
        None, "--cache", help="Folder for the decoded datasets (default OUT/cache); share it."
    ),
    valid: Optional[list[str]] = typer.Option(
        None,
        "--valid",
        help="Stem folders given with --data: track-name patterns held out for validation "
        "(repeatable; whole singers for MIR-1K, e.g. 'abjones_*').",
    ),
    exclude: Optional[list[str]] = typer.Option(
        None, "--exclude", help="Stem folders: track-name patterns never read (a test split)."
    ),
    accompaniment: Optional[list[str]] = typer.Option(
        None,
        "--accompaniment",
        help="train melody: more accompaniments to remix the voices over, KIND:ROOT[:WEIGHT] "
        "(repeatable; every stem but the vocals, training tracks only), e.g. musdb:ROOT.",
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Train a separator on MUSDB18 and stem folders (remixed; validation on held-out tracks),
    or `train melody`: fine-tune a Mel-RoFormer checkpoint (--init) to transcribe the sung
    melody from stem folders with pitch labels (MIR-1K)."""
    from sepcli import train as training

    if architecture == "melody":
        _train_melody(data, out, init, config, steps, batch_size, segment, lr, valid_every, seed,
                      resume, cache, valid, exclude, accompaniment, quiet)  # fmt: skip
        return
    if accompaniment:
        from sepcli.batch import UsageError

        raise UsageError("--accompaniment is for train melody; separators remix --data")

    preset = training.load_preset(architecture, config)
    values = dict(preset["training"])
    overrides = dict(steps=steps, batch_size=batch_size, segment=segment, lr=lr, accumulate=accumulate,
                     valid_every=valid_every, seed=seed, loss=loss)  # fmt: skip
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["precision"] = precision
    settings = training.TrainSettings.from_dict(values)
    specs = _data_specs(musdb, data, is_wav, preset["data"], valid, exclude)
    summary = training.train(
        architecture, specs, out, preset["model"], settings, is_wav=is_wav, device_name=device,
        resume=resume, init=init, log=err_console.print, progress=not quiet, cache=cache,
    )  # fmt: skip
    err_console.print(
        f"trained {summary['steps']} steps; best validation SDR {summary['best_valid_sdr']:.2f} dB; {out}"
    )


def _data_specs(musdb: Path | None, data: list[str] | None, is_wav: bool, from_yaml: list,
                valid: list[str] | None = None, exclude: list[str] | None = None):  # fmt: skip
    """The datasets: --musdb and --data on the command line, else the YAML's `data:` list."""
    import dataclasses

    from sepcli.batch import UsageError
    from sepcli.datasets import DataSpec

    specs = [DataSpec("musdb", musdb, is_wav=is_wav)] if musdb is not None else []
    specs += [DataSpec.parse(text, is_wav=is_wav) for text in data or []]
    specs = [
        dataclasses.replace(s, valid=tuple(valid or ()), exclude=tuple(exclude or ()))
        if s.kind == "stems" else s
        for s in specs
    ]  # fmt: skip
    specs = specs or from_yaml
    if not specs:
        raise UsageError("no training data: give --musdb ROOT, --data KIND:ROOT, or a 'data:' list")
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"a dataset is named twice: {', '.join(labels)}")
    return specs


def _train_melody(data, out, init, config, steps, batch_size, segment, lr, valid_every, seed,
                  resume, cache, valid, exclude, accompaniment, quiet) -> None:  # fmt: skip
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from sepcli import melody_train
    from sepcli.batch import UsageError
    from sepcli.datasets import DataSpec

    if not data or len(data) != 1 or init is None:
        raise UsageError("train melody needs one --data stems:ROOT (with pitch.pv labels) and "
                         "--init CHECKPOINT (a Mel-RoFormer separator, e.g. default, or a melody "
                         "model)")  # fmt: skip
    (spec,) = _data_specs(None, data, False, [], valid, exclude)
    if spec.kind != "stems":
        raise UsageError("train melody reads stem folders with pitch labels: --data stems:ROOT")
    backings = [DataSpec.parse(text) for text in accompaniment or []]
    head, values = melody_train.load_preset(config)
    given = dict(steps=steps, batch_size=batch_size, segment=segment, lr=lr,
                 valid_every=valid_every, seed=seed)  # fmt: skip
    values.update({k: v for k, v in given.items() if v is not None})
    try:
        settings = melody_train.MelodySettings.from_dict(values)
    except (ValueError, TypeError) as err:
        raise UsageError(f"melody config: {err}")
    progress = Progress(TextColumn("train melody"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), console=err_console,
                        disable=quiet or not err_console.is_terminal)  # fmt: skip
    with progress:
        task = progress.add_task("train", total=settings.steps, info="")

        def on_step(step, record):
            progress.update(task, completed=step, info=f"loss {record['loss']:.3f}")
            if "valid" in record:
                err_console.print(f"step {step}: " + _melody_line(record["valid"]))

        record = melody_train.train_melody(spec, str(init), out, settings, head,
                                           cache or out / "cache", resume, on_step,
                                           backings)  # fmt: skip
    if "voicing_threshold" in record:
        err_console.print(f"voicing threshold {record['voicing_threshold']:.2f} (overall "
                          f"accuracy {100 * record['valid_overall_accuracy']:.1f}% on the "
                          "validation clips), saved in best.safetensors")  # fmt: skip
    err_console.print(f"trained {record.get('step', 0)} steps; {out}")


def _melody_line(scores: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in scores.items())


@app.command()
def doctor(
    out: Path = typer.Option(Path("separated"), "-o", "--out", help="Where the stems would go."),
    as_json: bool = typer.Option(False, "--json", help="The facts as JSON, for bug reports."),
) -> None:
    """What this machine offers, what sepcli will do on it, and how to fix what is missing."""
    from rich.table import Table

    from sepcli.doctor import report

    facts, problems = report(out)
    if as_json:
        doc = {"facts": facts, "problems": [p.__dict__ for p in problems]}
        _print_json(doc)
    else:
        table = Table(title="sepcli doctor", show_header=False)
        table.add_column("what")
        table.add_column("value")
        for key, value in facts.items():
            if key == "soundfile_formats":
                value = f"{len(value)} formats"
            table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
        out_console.print(table)
        for problem in problems:
            out_console.print(f"{problem.level}: {problem.what}\n  fix: {problem.fix}")
        if not problems:
            out_console.print("no problems found")
    if any(p.level == "broken" for p in problems):
        raise typer.Exit(EXIT_FAILED)


def interrupted_outcome(argv: list[str]) -> str:
    """What an interruption kept, in words, for the command in `argv`."""
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), "")
    if command == "train":
        return "the last finished step is saved; rerun with --resume to continue"
    if command == "evaluate":
        return "scored tracks are cached; a rerun resumes"
    return "finished tracks are kept, no partial files left"


def main() -> None:
    """Entry point: run the app and turn user errors into one line and an exit code."""
    # Apple GPUs: an op without an MPS kernel runs on the CPU instead of raising. Set before
    # torch is first imported (the commands import it lazily).
    if sys.platform == "darwin":
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    from sepcli.errors import describe
    from sepcli.files import remove_live_temps
    from sepcli.messages import one_line

    # SIGINT too: click would turn a KeyboardInterrupt into a silent Abort.
    # SIGHUP too: a closed terminal or ssh session must clean up like Ctrl-C.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    try:
        # Without standalone mode click returns typer.Exit codes instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else EXIT_OK)
    except (Interrupted, KeyboardInterrupt) as sig:
        remove_live_temps()  # what the writers' own clean-up could not know of
        named = f" ({sig})" if isinstance(sig, Interrupted) else ""
        _say(f"sepcli: interrupted{named}; {interrupted_outcome(sys.argv)}")
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit:
        raise
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except Exception as err:  # noqa: BLE001 - the one place errors become messages
        if DEBUG["on"]:
            raise
        message, code = describe(err)
        if message:
            _say(f"sepcli: error: {one_line(message)}")
        sys.exit(code)


def _say(line: str) -> None:
    """One line on stderr; after SIGHUP the terminal may be gone, and that must not matter."""
    try:
        err_console.print(line, soft_wrap=True)
    except OSError:
        pass
