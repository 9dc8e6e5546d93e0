"""Audio in and out: decode in blocks, adapt channels, resample with soxr, write stems atomically.

soundfile reads WAV/FLAC/OGG/AIFF/MP3; anything else (m4a, aac, opus, MUSDB `.stem.mp4`) goes
through an ffmpeg pipe when ffmpeg is installed. Every stem is first written as raw float32 to a
hidden temp file beside its target, then encoded to a second temp file and renamed into place,
so a crash or Ctrl-C never leaves a half-written stem where a rerun would find it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from sepcli.files import (
    locked_temp_beside,
    not_a_regular_file,
    release_temp,
    remove_temp,
    replace_into_place,
    temp_beside,
)

SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".mp3", ".wave"}
FFMPEG_EXTENSIONS = {".m4a", ".mp4", ".aac", ".opus", ".webm", ".wma", ".mka", ".ac3", ".alac"}
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS
BLOCK_FRAMES = 1 << 18  # ~6 s at 44.1 kHz per read
# A header may claim anything; rates and channel counts outside these are refused before any
# work (a WAV saying 1 Hz would turn 8 kB into 33 minutes of separation).
MIN_RATE, MAX_RATE = 1000, 768000
MAX_CHANNELS = 64
FFPROBE_TIMEOUT = 60  # seconds
# ffmpeg reads local files only: a playlist named .mp4 must not make it open network streams.
FFMPEG_INPUT = ["-protocol_whitelist", "file"]


class AudioError(Exception):
    """Something wrong with an audio file, in words for the user."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int | None  # None when the decoder cannot tell in advance
    decoder: str = "soundfile"  # soundfile | ffmpeg

    @property
    def duration(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def _uses_soundfile(path: Path) -> bool:
    return path.suffix.lower() in SOUNDFILE_EXTENSIONS


def probe(path: Path) -> AudioInfo:
    """Rate, channels and length of `path`, or an AudioError saying why it cannot be read."""
    info = _probe(Path(path))
    if not MIN_RATE <= info.sample_rate <= MAX_RATE:
        raise AudioError(
            f"sample rate {info.sample_rate} Hz in its header is outside "
            f"{MIN_RATE}-{MAX_RATE} Hz; the file is damaged or not audio"
        )
    if info.channels > MAX_CHANNELS:
        raise AudioError(f"{info.channels} channels in its header (at most {MAX_CHANNELS})")
    return info


def _probe(path: Path) -> AudioInfo:
    problem = not_a_regular_file(path)
    if problem == "not found":
        raise AudioError("file not found")
    if problem:
        raise AudioError(problem)
    if not os.access(path, os.R_OK):
        raise AudioError("permission denied")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    tried_ffmpeg = False
    if _mislabelled_mp3(path) and ffmpeg_available():
        # libmpg123 would scan the whole file for MP3 frames, printing notes to stderr as it goes.
        try:
            return _ffprobe(path)
        except AudioError:
            tried_ffmpeg = True  # libsndfile may still resync to frames after some junk
    if _uses_soundfile(path):
        try:
            with _mpg123_notes_hidden(path):
                info = sf.info(os.fsencode(path))
        except (sf.LibsndfileError, RuntimeError) as err:
            # Downloaders often name AAC or Opus audio ".mp3" or ".wav"; ffmpeg reads it anyway.
            if ffmpeg_available() and not tried_ffmpeg:
                try:
                    return _ffprobe(path)
                except AudioError:
                    pass
            raise AudioError(
                f"not a readable {path.suffix.lstrip('.').upper()} file ({_clean(err)})"
            )
        if info.frames == 0:
            raise AudioError("no audio frames in file")
        if info.samplerate <= 0 or info.channels <= 0:
            raise AudioError("invalid header (zero rate or channels)")
        return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames))
    return _ffprobe(path)


def _mislabelled_mp3(path: Path) -> bool:
    """A `.mp3` that starts with neither an ID3 tag nor an MPEG frame sync."""
    if path.suffix.lower() != ".mp3":
        return False
    with open(path, "rb") as f:
        head = f.read(3)
    return not (head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] >= 0xE0))


@contextlib.contextmanager
def _mpg123_notes_hidden(path: Path) -> Iterator[None]:
    """Opening a damaged MP3, libmpg123 writes notes ("Trying to resync...") straight to file
    descriptor 2, around Python; the one-line error that follows says all they do."""
    if path.suffix.lower() != ".mp3":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _clean(err: Exception) -> str:
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    text = text.split(": ", 1)[-1] if text.startswith("Error opening") else text
    # libsndfile's MP3 reader says this of any file it finds no MP3 frames in.
    if text.startswith("File does not exist or is not a regular file"):
        return "no audio data recognised"
    return text.rstrip(".")


def _ffprobe(path: Path) -> AudioInfo:
    if not ffmpeg_available():
        raise AudioError(
            f"reading {path.suffix} files needs ffmpeg, which is not installed "
            "(install it, e.g. 'apt-get install ffmpeg', or convert the file to WAV/FLAC)"
        )
    cmd = [
        "ffprobe", "-v", "error", *FFMPEG_INPUT, "-select_streams", "a:0",
        "-show_entries", "stream=sample_rate,channels:format=duration", "-of", "json",
        "file:" + os.fsdecode(os.path.abspath(path)),
    ]  # fmt: skip
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", timeout=FFPROBE_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise AudioError(f"ffprobe did not finish within {FFPROBE_TIMEOUT} s")
    try:
        data = json.loads(result.stdout or "{}")
        stream = data["streams"][0]
        rate, channels = int(stream["sample_rate"]), int(stream["channels"])
    except (KeyError, IndexError, ValueError, TypeError):
        reason = (
            result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no audio stream"
        )
        raise AudioError(f"ffmpeg cannot read it ({reason})")
    duration = data.get("format", {}).get("duration")
    try:
        frames = round(float(duration) * rate) if duration not in (None, "N/A") else None
    except (ValueError, OverflowError):
        frames = None
    if rate <= 0 or channels <= 0:
        raise AudioError("invalid header (zero rate or channels)")
    return AudioInfo(path, rate, channels, frames, decoder="ffmpeg")


def read_blocks(info: AudioInfo, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Decode `info.path` block by block as float32 [channels, n] at the file's own rate."""
    # Blocks hold about as many samples as a stereo block, whatever the channel count.
    block_frames = max(1024, block_frames * 2 // max(2, info.channels))
    if info.decoder == "soundfile":
        yield from _soundfile_blocks(info, block_frames)
    else:
        yield from _ffmpeg_blocks(info, block_frames)


def _check_finite(block: np.ndarray) -> np.ndarray:
    if not np.isfinite(block).all():
        raise AudioError("the audio contains NaN or infinite samples")
    return block


def _soundfile_blocks(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    try:
        with sf.SoundFile(os.fsencode(info.path)) as f:
            while True:
                data = f.read(block_frames, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                yield _check_finite(np.ascontiguousarray(data.T))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"decoding failed ({_clean(err)})")
    except OSError as err:
        raise AudioError(f"read error ({err.strerror or err})")


def _ffmpeg_blocks(info: AudioInfo, block_frames: int) -> Iterator[np.ndarray]:
    cmd = [
        "ffmpeg", "-v", "error", "-nostdin", *FFMPEG_INPUT,
        "-i", "file:" + os.fsdecode(os.path.abspath(info.path)), "-map", "0:a:0",
        "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(info.channels), "-",
    ]  # fmt: skip
    frame_bytes = 4 * info.channels
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            while True:
                raw = proc.stdout.read(block_frames * frame_bytes)
                if not raw:
                    break
                usable = len(raw) - len(raw) % frame_bytes
                data = np.frombuffer(raw[:usable], dtype="<f4").reshape(-1, info.channels)
                yield _check_finite(np.ascontiguousarray(data.T))
        finally:
            proc.stdout.close()
            stderr = proc.stderr.read().decode(errors="replace").strip()
            code = proc.wait()
        if code != 0:
            reason = stderr.splitlines()[-1] if stderr else f"exit code {code}"
            raise AudioError(f"ffmpeg failed to decode it ({reason})")


def load(path: Path | str, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a whole file as float32 [channels, T], optionally resampled to `sample_rate`."""
    info = probe(Path(path))
    blocks = list(read_blocks(info))
    audio = np.concatenate(blocks, axis=-1) if blocks else np.zeros((info.channels, 0), np.float32)
    if sample_rate and sample_rate != info.sample_rate:
        audio = soxr.resample(audio.T, info.sample_rate, sample_rate, quality="HQ").T
        return np.ascontiguousarray(audio, dtype=np.float32), sample_rate
    return audio, info.sample_rate


def adapt_channels(block: np.ndarray, channels: int, downmix: bool) -> np.ndarray:
    """Give a [C, n] block the model's channel count: mono is duplicated, >2 needs `downmix`."""
    have = block.shape[0]
    if have == channels:
        return block
    if have == 1:
        return np.repeat(block, channels, axis=0)
    if channels == 1:
        return block.mean(axis=0, keepdims=True)
    if have > 2 and not downmix:
        raise AudioError(f"{have} channels: only mono and stereo are separated (use --downmix)")
    return np.repeat(block.mean(axis=0, keepdims=True), channels, axis=0)


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """[C, n] -> [C, length]: the same sound played `n / length` times faster (soxr), cut or
    zero-padded to exactly `length` (speed and pitch augmentation)."""
    if x.shape[-1] == length:
        return x
    y = soxr.resample(x.T, x.shape[-1], length, quality="HQ").T[:, :length]
    return np.pad(y, ((0, 0), (0, length - y.shape[-1])))


class Resampler:
    """Streaming soxr resampler for [C, n] blocks; a pass-through when the rates match."""

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        self.stream = None
        if rate_in != rate_out:
            self.stream = soxr.ResampleStream(
                rate_in, rate_out, channels, dtype="float32", quality="HQ"
            )

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return block
        out = self.stream.resample_chunk(np.ascontiguousarray(block.T), last=last)
        return np.ascontiguousarray(out.T)


FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}
SUBTYPES = {
    ("wav", 16): "PCM_16",
    ("wav", 24): "PCM_24",
    ("wav", 32): "FLOAT",
    ("flac", 16): "PCM_16",
    ("flac", 24): "PCM_24",
}


def check_output_format(fmt: str, bit_depth: int) -> None:
    if fmt not in FORMATS:
        raise AudioError(f"unknown output format '{fmt}' (use wav, flac or mp3)")
    if bit_depth not in (16, 24, 32):
        raise AudioError(f"bit depth must be 16, 24 or 32, got {bit_depth}")
    if fmt == "flac" and bit_depth == 32:
        raise AudioError("FLAC stores at most 24 bits; use --bit-depth 16 or 24, or --format wav")


# MPEG-1, 2 and 2.5 layer III define these rates only; FLAC's frame header stops at 655350 Hz.
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
FLAC_MAX_SAMPLE_RATE = 655350


def check_output_rate(fmt: str, rate: int, given: bool = True) -> None:
    """Refuse a rate the format cannot store before any separating, not after it.

    `given` says whether the rate came from `--sample-rate` or from the input file; the advice
    differs.
    """
    fix = "" if given else "; set one with --sample-rate"
    if fmt == "mp3" and rate not in MP3_SAMPLE_RATES:
        rates = ", ".join(str(r) for r in MP3_SAMPLE_RATES)
        raise AudioError(f"MP3 cannot store {rate} Hz (only {rates}){fix}")
    if fmt == "flac" and rate > FLAC_MAX_SAMPLE_RATE:
        raise AudioError(f"FLAC cannot store {rate} Hz (at most {FLAC_MAX_SAMPLE_RATE}){fix}")


DEFAULT_BIT_DEPTH = 16
DEFAULT_MP3_KBPS = 320  # constant, as demucs writes

# (lowest sample rate, lowest and highest kb/s) of MPEG-1, MPEG-2 and MPEG-2.5 layer III.
MP3_BITRATES = ((32000, 32, 320), (16000, 8, 160), (0, 8, 64))


def mp3_compression_level(kbps: int, sample_rate: int) -> float:
    """The libsndfile compression level for a constant `kbps` (clamped to what the rate allows).

    libsndfile's constant bitrate is `highest - level * (highest - lowest)` of the MPEG version
    that the sample rate picks; LAME then rounds it to a standard bitrate.
    """
    lowest, highest = next((lo, hi) for rate, lo, hi in MP3_BITRATES if sample_rate >= rate)
    kbps = min(max(kbps, lowest), highest)
    # libsndfile refuses level 1.0; just below it already gives the lowest bitrate.
    return min((highest - kbps) / (highest - lowest), 0.999)


def check_clip_mode(clip: str) -> None:
    if clip not in ("rescale", "clamp", "none"):
        raise AudioError(f"unknown clip mode '{clip}' (use rescale, clamp or none)")


class StemWriter:
    """Writes one stem in blocks, then encodes and renames it into place in `commit`.

    Args:
        path: final file path; its folder is created.
        sample_rate, channels: of the audio given to `write`.
        fmt: wav, flac or mp3. bit_depth: 16, 24 or 32 (float; WAV only).
        clip: `rescale` (divide by the peak if it exceeds 1), `clamp` (clip to [-1, 1]) or `none`.
        mp3_bitrate: constant bitrate in kb/s of MP3 output.
    """

    def __init__(
        self,
        path: Path,
        sample_rate: int,
        channels: int,
        fmt: str,
        bit_depth: int,
        clip: str,
        mp3_bitrate: int = DEFAULT_MP3_KBPS,
    ) -> None:
        check_output_format(fmt, bit_depth)
        check_clip_mode(clip)
        self.path, self.sample_rate, self.channels = Path(path), sample_rate, channels
        self.fmt, self.bit_depth, self.clip = fmt, bit_depth, clip
        self.mp3_bitrate = mp3_bitrate
        self.peak = 0.0
        self.frames = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self.raw_path = temp_beside(self.path, ".raw.part")
        except OSError as err:
            raise AudioError(f"cannot write to {self.path.parent} ({err.strerror or err})")
        self.raw = os.fdopen(fd, "wb")
        self.encoded_path: Path | None = None

    def write(self, block: np.ndarray) -> None:
        """Append a [channels, n] float32 block."""
        if block.shape[-1] == 0:
            return
        peak = float(np.abs(block).max())
        if not np.isfinite(peak):
            # libsndfile would write NaN as full-scale -1.0 and report success.
            raise AudioError("the separated audio holds NaN or infinite values")
        self.peak = max(self.peak, peak)
        try:
            self.raw.write(np.ascontiguousarray(block.T, dtype="<f4").tobytes())
        except OSError as err:
            raise AudioError(f"cannot write {self.path} ({err.strerror or err})")
        self.frames += block.shape[-1]

    def commit(self, frames: int | None = None) -> None:
        """Finish the file at exactly `frames` samples (zero-padded or cut) and rename it into place."""
        try:
            if frames is not None and frames < self.frames:
                self.raw.truncate(frames * 4 * self.channels)
                self.frames = frames
            if frames is not None and frames > self.frames:
                self.raw.write(bytes((frames - self.frames) * 4 * self.channels))
                self.frames = frames
            # Flushed, not closed: the open descriptor holds the temp file's lock (see files.py).
            self.raw.flush()
            gain = 1.0
            if self.clip == "rescale" and self.peak > 1.0:
                gain = 1.0 / self.peak
            clamp = self.clip == "clamp" or (self.clip == "none" and self.bit_depth != 32)
            self.encoded_path = locked_temp_beside(self.path, f".{self.fmt}.part")
            if self.fmt == "mp3":
                # libsndfile's default is variable, about 100-150 kb/s; demucs writes 320 kb/s.
                level = mp3_compression_level(self.mp3_bitrate, self.sample_rate)
                encoding = dict(
                    subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT", compression_level=level
                )
            else:
                encoding = dict(subtype=SUBTYPES[(self.fmt, self.bit_depth)])
            out = sf.SoundFile(
                os.fsencode(self.encoded_path),
                "w",
                self.sample_rate,
                self.channels,
                format=FORMATS[self.fmt],
                **encoding,
            )
            # Read the raw file back block by block: a memmap's touched pages would count as
            # resident memory and grow with the track's length.
            with open(self.raw_path, "rb") as raw_in, out:
                for start in range(0, self.frames, BLOCK_FRAMES):
                    count = min(BLOCK_FRAMES, self.frames - start) * self.channels
                    block = np.fromfile(raw_in, dtype="<f4", count=count).reshape(-1, self.channels)
                    block = block * gain
                    if clamp:
                        block = np.clip(block, -1.0, 1.0)
                    out.write(block.astype(np.float32))
            replace_into_place(self.encoded_path, self.path)
            release_temp(self.encoded_path)
            self.encoded_path = None
        except (OSError, sf.LibsndfileError, RuntimeError, ValueError) as err:
            self.abort()
            reason = getattr(err, "strerror", None) or _clean(err)
            raise AudioError(f"cannot write {self.path} ({reason})")
        finally:
            self._drop_raw()

    def abort(self) -> None:
        """Remove every temp file; the target path is never touched."""
        self._drop_raw()
        if self.encoded_path is not None:
            remove_temp(self.encoded_path)
            self.encoded_path = None

    def _drop_raw(self) -> None:
        """Remove the raw temp file, then close it (which releases its lock)."""
        remove_temp(self.raw_path)
        if not self.raw.closed:
            with contextlib.suppress(OSError):
                self.raw.close()


def finished_output_problem(
    path: Path, frames: int | None, sample_rate: int, channels: int
) -> str | None:
    """Why the stem at `path` is not a whole output (None if it is): missing, empty, unreadable,
    or of another length, rate or channel count than the run would write. `frames` None skips
    the length check (an input whose length the decoder cannot tell exactly)."""
    problem = not_a_regular_file(path)
    if problem:
        return problem
    if os.path.getsize(path) == 0:
        return "is empty (0 bytes)"
    try:
        info = sf.info(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        return f"is not readable audio ({_clean(err)})"
    if (info.samplerate, info.channels) != (sample_rate, channels):
        return (
            f"has {info.samplerate} Hz x {info.channels} ch, not {sample_rate} Hz x {channels} ch"
        )
    if frames is not None and info.frames != frames:
        return f"holds {info.frames} samples, not {frames}"
    return None
