"""`sepcli train melody`: fine-tune a Mel-RoFormer separation checkpoint to transcribe the sung
melody, on stem folders with a `pitch.pv` per track (MIR-1K).

Examples: a random segment of a training clip's voice, over its own accompaniment at 0 dB as
stored (MIR-1K's condition) or over another accompaniment at a random SNR: another clip's, or
one of the `accompaniments` datasets' (MUSDB, stem folders: every stem but the vocals, summed;
`--accompaniment`). The label follows the voice, so remixing keeps it exact. Validation clips
(whole singers, `--valid`) are scored with mir_eval at 0 dB; `best.safetensors` keeps the best
overall accuracy (or the training key `select_by`'s score), `state.pt` resumes a run (`--resume`).

The head is chosen by a preset (`sepcli/presets/melody-*.yaml` or a YAML path, `--config`;
`salience` by default): its `model:` keys set the head (the trunk's come from `--init`), its
`training:` keys the settings.
With `head_only_steps` the first steps train the head on the frozen trunk, then everything
(linear probing, then fine-tuning: Kumar et al., ICLR 2022), so a new head does not send random
gradients into a trained trunk.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from eval.melody import average, melody_scores, mirex_contour
from models.base import typed_fields
from models.melody import MelodyConfig, MelodyTranscriber
from sepcli import checkpoints, datasets, melody
from sepcli.audio import adapt_channels, fit_length
from sepcli.files import atomic_write
from sepcli.transcribe import (
    frame_contour,
    load_melody,
    melody_path,
    save_melody,
    scoring_contour,
)


SELECTABLE = ("overall_accuracy", "raw_pitch_accuracy", "raw_chroma_accuracy")


@dataclasses.dataclass(frozen=True)
class MelodySettings:
    steps: int = 300
    batch_size: int = 8
    segment: float = 3.0  # seconds
    lr: float = 3e-4
    warmup: int = 20
    valid_every: int = 50
    own_accompaniment: float = 0.5  # share of examples over the clip's own accompaniment
    snr_db: tuple[float, float] = (-5.0, 5.0)  # voice over another accompaniment
    gain_db: tuple[float, float] = (0.0, 0.0)  # random level of each example's mix
    pitch_shift: float = 0.0  # semitones: transpose each clip by up to this much, up or down
    # semitones down, where the range is not symmetric: shifts then lie in [-this, +pitch_shift]
    pitch_shift_down: float | None = None
    timbre_db: float = 0.0  # colour each voice by a random EQ of up to this many dB (see Examples)
    balance_singers: bool = False  # draw a singer (name up to its first "_") first, then a clip
    head_only_steps: int = 0  # the first steps leave the trunk frozen
    # The validation score that picks best.safetensors (higher is better): overall accuracy
    # weighs voicing at the untuned threshold 0.5; raw pitch reads the pitch alone.
    select_by: str = "overall_accuracy"
    # Validate and save an exponential moving average of the weights, updated every step with
    # this decay (0 = the weights as trained): the average of the last ~1 / (1 - decay) steps
    # is less at the mercy of the last batches than any one step (Polyak averaging; demucs and
    # the usual RoFormer training code keep one too). The key means what separation training's
    # `ema` means, but is off by default, and the average starts from the first step's weights
    # without a warm-up: fine-tuning starts from a trained model, not from a random one.
    ema: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.pitch_shift <= 12:
            raise ValueError("melody training key 'pitch_shift' must lie in 0..12 semitones")
        if self.pitch_shift_down is not None and not 0 <= self.pitch_shift_down <= 12:
            raise ValueError("melody training key 'pitch_shift_down' must lie in 0..12 semitones")
        if not 0 <= self.timbre_db <= 24:
            raise ValueError("melody training key 'timbre_db' must lie in 0..24 dB")
        if not 0 <= self.ema < 1:
            raise ValueError("melody training key 'ema' must lie in [0, 1)")
        if self.select_by not in SELECTABLE:
            raise ValueError(
                f"melody training key 'select_by' must be one of {', '.join(SELECTABLE)}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MelodySettings":
        """From a preset's `training:` keys, each checked against its annotation as model
        configs are (lists become tuples, ints pass for floats)."""
        return cls(**typed_fields(cls, values, "melody training key"))


HEAD_KEYS = ("head_channels", "head_hidden", "spectral_bins", "spectral_context", "midi_low",
             "midi_high", "bins_per_semitone", "blur_cents", "voicing_weight",
             "salience_window", "salience_harmonics", "salience_channels", "salience_dilations",
             "salience_extra_windows", "salience_guide",
             "pitch_smoothing", "test_transpositions")  # fmt: skip
DEFAULT_PRESET = "salience"


def load_preset(preset: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(head keys, training keys) of a melody preset: a name (`melody-NAME.yaml` among the
    shipped presets) or a YAML path."""
    preset = preset or DEFAULT_PRESET
    path = checkpoints.preset_path(preset, "melody", f"melody preset '{preset}'")
    data = checkpoints.read_yaml(path)
    head, training = dict(data.get("model") or {}), dict(data.get("training") or {})
    unknown = sorted(set(head) - set(HEAD_KEYS))
    if unknown:
        raise checkpoints.CheckpointError(
            f"{path.name}: model keys {', '.join(unknown)} are not head keys (the trunk comes "
            "from --init)"
        )
    return head, training


def presets() -> list[str]:
    return checkpoints.preset_names("melody")


@dataclasses.dataclass
class Clip:
    name: str
    voice: np.ndarray  # float16 [1 or 2, T] at the model's rate
    accompaniment: np.ndarray
    label_times: np.ndarray
    label_midi: np.ndarray


def load_clips(spec: datasets.DataSpec, split: str, rate: int, cache: Path | None) -> list[Clip]:
    """The clips of one split that have a voice, an accompaniment and a `pitch.pv`."""
    clips = []
    for track in datasets.load_tracks(spec, split, rate, cache):
        labels = spec.root / track.name / "pitch.pv"
        voice, accompaniment = track.targets.get("vocals"), track.targets.get("accompaniment")
        if voice is None or accompaniment is None or not labels.is_file():
            continue
        times, midi = melody.read_pv(labels)
        clips.append(Clip(track.name, voice, accompaniment, times, midi))
    if not clips:
        raise datasets.DataError(
            f"{spec.root} ({split}): no track has vocals, accompaniment and pitch.pv"
        )
    return clips


def load_accompaniments(
    specs: list[datasets.DataSpec], rate: int, cache: Path | None
) -> list[tuple[float, list[np.ndarray]]]:
    """(weight, accompaniments) per dataset: each training track's stems but the vocals, summed
    (float16 [C, T] at `rate`). Validation and excluded tracks are not read."""
    pools = []
    for spec in specs:
        backings = []
        for track in datasets.load_tracks(spec, "train", rate, cache):
            parts = [audio for name, audio in track.targets.items()
                     if "vocals" not in track.atoms[name]]  # fmt: skip
            if parts:
                backings.append(sum(p.astype(np.float32) for p in parts).astype(np.float16))
        if not backings:
            raise datasets.DataError(f"{spec.label}: no track has stems other than vocals")
        pools.append((spec.weight, backings))
    return pools


class Examples:
    """Training batches: (mix [B, C, L], MIDI labels [B, frames], label mask [B, frames]).

    A remixed example's accompaniment comes from the clips' own dataset (weight 1) or one of
    `accompaniments` (their weights), then a track of it, uniformly.

    With `pitch_shift` the clip (voice, and its own accompaniment with it, so the 0 dB mix stays
    in tune) is resampled to play 2^(s/12) times faster, s uniform in +-`pitch_shift` (or in
    [-`pitch_shift_down`, `pitch_shift`] where that is set): its pitch rises by s semitones and
    its label is moved by s on a time axis squeezed by the same ratio, so it stays exact. Eleven
    singers sound like more (their range and formants move).

    With `timbre_db` each voice is coloured by a random EQ (`random_timbre`), its loudness kept,
    so the singers' spectral balance (chest or head voice, breathy or bright, close or far
    microphone) varies apart from their pitch. With `balance_singers` each example draws a
    singer first, then one of their clips, so the few singers with many clips (MIR-1K's amy and
    leon: a third of the training clips) do not set what a voice sounds like."""

    def __init__(self, clips: list[Clip], model: MelodyTranscriber, settings: MelodySettings,
                 rng: np.random.Generator,
                 accompaniments: list[tuple[float, list[np.ndarray]]] = ()) -> None:  # fmt: skip
        self.clips, self.model, self.settings, self.rng = clips, model, settings, rng
        self.length = int(settings.segment * model.sample_rate)
        self.frames = model.frames(self.length)
        self.pools = [[c.accompaniment for c in clips], *(p for _, p in accompaniments)]
        weights = np.array([1.0, *(w for w, _ in accompaniments)])
        self.pool_chances = weights / weights.sum()
        singers: dict[str, list[int]] = {}
        for i, clip in enumerate(clips):
            singers.setdefault(clip.name.split("_")[0], []).append(i)
        self.singers = list(singers.values())

    def _clip(self) -> Clip:
        if self.settings.balance_singers:
            singer = self.singers[self.rng.integers(len(self.singers))]
            return self.clips[singer[self.rng.integers(len(singer))]]
        return self.clips[self.rng.integers(len(self.clips))]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size, channels = self.settings.batch_size, self.model.audio_channels
        mix = np.zeros((size, channels, self.length), np.float32)
        midi = np.zeros((size, self.frames), np.float32)
        mask = np.zeros((size, self.frames), bool)
        rate, hop = self.model.sample_rate, self.model.hop
        for b in range(size):
            clip = self._clip()
            shift = 0.0
            up, down = self.settings.pitch_shift, self.settings.pitch_shift_down
            if down is not None:
                shift = self.rng.uniform(-down, up)
            elif up:  # drawn only when asked: other runs keep their stream
                shift = self.rng.uniform(-1, 1) * up
            ratio = 2.0 ** (shift / 12)  # source samples per output sample
            source = round(self.length * ratio)
            start = int(self.rng.integers(max(1, clip.voice.shape[-1] - source + 1)))
            voice = fit_length(_piece(clip.voice, start, source, channels), self.length)
            if self.settings.timbre_db:  # drawn only when asked, as pitch_shift
                voice = random_timbre(voice, rate, self.settings.timbre_db, self.rng)
            if self.rng.random() < self.settings.own_accompaniment:
                backing = _piece(clip.accompaniment, start, source, channels)
                backing = fit_length(backing, self.length)
            else:
                pool = self.pools[self.rng.choice(len(self.pools), p=self.pool_chances)]
                other = pool[self.rng.integers(len(pool))]
                at = int(self.rng.integers(max(1, other.shape[-1] - self.length + 1)))
                backing = _piece(other, at, self.length, channels)
                snr = self.rng.uniform(*self.settings.snr_db)
                if _rms(backing) > 1e-3:  # a silent stretch is left silent, not blown up
                    backing = backing * (_rms(voice) / _rms(backing) * 10 ** (-snr / 20))
            mix[b] = (voice + backing) * 10 ** (self.rng.uniform(*self.settings.gain_db) / 20)
            real = min(self.length, (clip.voice.shape[-1] - start) / ratio)
            times = (start + np.arange(self.frames) * hop * ratio) / rate
            label = melody.labels_on_frames(clip.label_times, clip.label_midi, times)
            midi[b] = np.where(label > 0, label + shift, 0.0)
            mask[b] = np.arange(self.frames) * hop < real
        return torch.from_numpy(mix), torch.from_numpy(midi), torch.from_numpy(mask)


def random_timbre(
    voice: np.ndarray, rate: int, strength_db: float, rng: np.random.Generator
) -> np.ndarray:
    """`voice` [C, L] through a random zero-phase EQ, its RMS kept: a tilt of up to
    +-`strength_db` / 2 dB per octave about 500 Hz, plus one bell of up to +-`strength_db` dB,
    an octave wide, centred anywhere from 200 Hz to 4 kHz; the gain is held within
    +-`strength_db` dB. Smooth in log frequency, so the harmonics keep their places: the pitch
    (and the label) do not move."""
    spectrum = np.fft.rfft(voice.astype(np.float64), axis=-1)
    hz = np.fft.rfftfreq(voice.shape[-1], 1.0 / rate)
    octaves = np.log2(np.maximum(hz, 50.0) / 500.0)
    tilt = rng.uniform(-0.5, 0.5) * strength_db
    centre = rng.uniform(np.log2(200.0 / 500.0), np.log2(4000.0 / 500.0))  # octaves about 500 Hz
    bell = rng.uniform(-1.0, 1.0) * strength_db * np.exp(-0.5 * ((octaves - centre) / 0.5) ** 2)
    gain_db = np.clip(tilt * octaves + bell, -strength_db, strength_db)
    coloured = np.fft.irfft(spectrum * 10 ** (gain_db / 20), n=voice.shape[-1], axis=-1)
    level = _rms(coloured)
    return (coloured * (_rms(voice) / level if level > 1e-9 else 0.0)).astype(np.float32)


def _piece(audio: np.ndarray, start: int, length: int, channels: int) -> np.ndarray:
    """`length` samples from `start` (zero-padded past the end) with the model's channels."""
    x = np.asarray(audio[:, start : start + length], dtype=np.float32)
    x = adapt_channels(x, channels, downmix=True)
    if x.shape[-1] < length:
        x = np.pad(x, ((0, 0), (0, length - x.shape[-1])))
    return x


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def clip_mixture(clip: Clip, channels: int) -> np.ndarray:
    """The clip's own 0 dB mix, as MIR-1K is scored."""
    length = clip.voice.shape[-1]
    return _piece(clip.voice, 0, length, channels) + _piece(clip.accompaniment, 0, length, channels)


def validate(model: MelodyTranscriber, clips: list[Clip]) -> dict[str, float]:
    """mir_eval's measures, averaged over the clips' own 0 dB mixes."""
    return average([_scores(c, t, hz) for c, (t, hz) in zip(clips, _contours(model, clips))])


def calibrate_voicing(model: MelodyTranscriber, clips: list[Clip]) -> tuple[float, float]:
    """The voicing threshold (0.05..0.95) with the best mean overall accuracy on `clips`, and
    that accuracy. The network runs once; only the threshold changes between scorings."""
    raw = [frame_contour(model, clip_mixture(c, model.audio_channels), model.sample_rate)
           for c in clips]  # fmt: skip
    best = (model.config.voicing_threshold, -1.0)
    for threshold in np.round(np.arange(0.05, 0.951, 0.05), 2):
        accuracy = average([
            _scores(c, times, mirex_contour(melody.midi_to_hz(pitch), v, threshold))
            for c, (times, pitch, v) in zip(clips, raw)
        ])["overall_accuracy"]  # fmt: skip
        if accuracy > best[1]:
            best = (float(threshold), accuracy)
    return best


def _contours(model: MelodyTranscriber, clips: list[Clip]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validation during training hears each clip once: the model's `test_transpositions` (kept
    in its checkpoints, and used by `calibrate_best` at the end) would multiply its cost."""
    was_training, config = model.training, model.config
    model.eval()
    model.config = dataclasses.replace(config, test_transpositions=())
    try:
        return [scoring_contour(model, clip_mixture(c, model.audio_channels), model.sample_rate)
                for c in clips]  # fmt: skip
    finally:
        model.train(was_training)
        model.config = config


def _scores(clip: Clip, times: np.ndarray, hz: np.ndarray) -> dict[str, float]:
    return melody_scores(clip.label_times, melody.midi_to_hz(clip.label_midi), times, hz)


def build_model(init: str, head: dict[str, Any] | None = None) -> MelodyTranscriber:
    """A transcriber with the `head` keys given, its trunk taken from `init`: a Mel-RoFormer
    separation checkpoint (its mask estimators are dropped) or a melody checkpoint (whose head
    keys hold where `head` does not set them, and whose head weights are kept where their
    shapes still fit)."""
    head = head or {}
    if _is_melody_checkpoint(init):
        _, source, _ = load_melody(init)
        model = _build(init, {**source.config.to_dict(), **head})
        target = model.state_dict()
        fitting = {k: v for k, v in source.state_dict().items()
                   if k in target and target[k].shape == v.shape}  # fmt: skip
        fitting.update(_grown_salience(source, model))
        model.load_state_dict(fitting, strict=False)
        if model.guide is not None and not any(k.startswith("guide.") for k in fitting):
            # the trunk's separator, as it was before tuning
            _load_guide(model, checkpoints.load_model(DEFAULT_GUIDE), DEFAULT_GUIDE)
        return model
    loaded = checkpoints.load_model(init)
    if loaded.metadata.get("architecture") != "mel-roformer":
        raise checkpoints.CheckpointError(
            f"--init {init}: melody fine-tuning starts from a Mel-RoFormer, not "
            f"{loaded.metadata.get('architecture')}"
        )
    trunk = {k: v for k, v in loaded.model.config.to_dict().items()
             if k not in ("num_stems", "sources")}  # fmt: skip
    model = _build(init, {**trunk, **head})
    missing = model.load_trunk(loaded.model.state_dict())
    if missing:
        raise checkpoints.CheckpointError(f"--init {init}: the trunk lacks {missing[:3]}")
    if model.guide is not None:
        _load_guide(model, loaded, init)  # the separator already read for the trunk
    return model


def _grown_salience(source: MelodyTranscriber, model: MelodyTranscriber) -> dict[str, Any]:
    """The salience CNN's weights of `source` carried into a grown `model`, so that the
    continued model starts out computing exactly what `source` did.

    Two growths are read: a wider CNN (`salience_channels` 16 -> 32) and more extra stacks
    after the ones `source` read (windows (2048,) -> (2048, 8192)). Each grown tensor keeps the
    old weights in its leading block; the new inputs' weights are zero, so the new channels and
    stacks reach no old channel and no logit until training moves them; the new channels' own
    weights keep the model's fresh initialisation (random, or zero where `PitchSalience`
    zero-starts a layer), so they have something to learn from."""
    if source.config.salience_harmonics != model.config.salience_harmonics:
        return {}
    old_extra = source.config.salience_extra_windows
    new_extra = model.config.salience_extra_windows
    extra_kept = new_extra[: len(old_extra)] == old_extra
    target, grown = model.state_dict(), {}
    for key, old in source.state_dict().items():
        if not key.startswith("salience.") or key not in target:
            continue
        fresh = target[key]
        if fresh.shape == old.shape or fresh.dim() != old.dim():
            continue
        if any(o > n for o, n in zip(old.shape, fresh.shape)):
            continue
        if key.startswith("salience.extra_input.") and not extra_kept:
            continue  # reordered or replaced stacks: the old weights read other inputs
        weight = fresh.clone()
        if weight.dim() > 1:
            weight[:, old.shape[1] :] = 0
        weight[tuple(slice(0, size) for size in old.shape)] = old
        grown[key] = weight
    return grown


# Where a melody checkpoint's new guide comes from: the separator its trunk was tuned from.
DEFAULT_GUIDE = "default"


def _load_guide(model: MelodyTranscriber, separator: checkpoints.LoadedModel, spec: str) -> None:
    try:
        model.load_guide(separator.model.state_dict(), list(separator.model.config.sources))
    except (ValueError, RuntimeError) as err:
        raise checkpoints.CheckpointError(
            f"the guide needs a Mel-RoFormer with vocals of the trunk's architecture; "
            f"{spec} is not one: {checkpoints.one_line(str(err))}"
        )


def _build(init: str, config: dict[str, Any]) -> MelodyTranscriber:
    try:
        return MelodyTranscriber(MelodyConfig.from_dict(config))
    except (ValueError, TypeError) as err:
        raise checkpoints.CheckpointError(f"--init {init}: bad melody config: {err}")


def _is_melody_checkpoint(init: str) -> bool:
    path = melody_path(init)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    return checkpoints.read_header(path)[0].get("architecture") == "melody"


def _truncate_log(path: Path, step: int) -> None:
    if path.exists():
        lines = [line for line in path.read_text().splitlines()
                 if json.loads(line)["step"] <= step]  # fmt: skip
        path.write_text("".join(line + "\n" for line in lines))


def train_melody(
    data: datasets.DataSpec,
    init: str,
    out: Path,
    settings: MelodySettings,
    head: dict[str, Any] | None = None,
    cache: Path | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    accompaniments: list[datasets.DataSpec] = (),
) -> dict[str, Any]:
    """Fine-tune; returns the last record (step, loss, and validation scores where run)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = build_model(init, head)
    train_clips = load_clips(data, "train", model.sample_rate, cache)
    valid_clips = load_clips(data, "valid", model.sample_rate, cache) if data.valid else []
    trained = [p for p in model.parameters() if p.requires_grad]  # not a frozen guide
    optimizer = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=0.01)
    # what is validated and saved: the weights as trained, or their moving average
    average = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema))
        if settings.ema
        else None
    )
    kept = average.module if average is not None else model

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, settings.warmup))
        cosine = 0.5 * (1 + np.cos(np.pi * min(1.0, step / settings.steps)))
        return float(settings.lr * warm * cosine)  # a plain float: state.pt loads weights-only

    out.mkdir(parents=True, exist_ok=True)
    step, best = 0, -1.0
    if resume and (out / "state.pt").exists():
        state = torch.load(out / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])
        if average is not None:
            average.load_state_dict(state["ema"])
        rng.bit_generator.state = json.loads(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        _truncate_log(out / "metrics.jsonl", step)  # steps after the saved state are redone
    pools = load_accompaniments(list(accompaniments), model.sample_rate, cache)
    examples = Examples(train_clips, model, settings, rng, pools)
    provenance = {"init": init, "head": head or {},
                  "data": f"{data.label}: {len(train_clips)} training clips, "
                  f"{len(valid_clips)} validation clips (held out)",
                  "accompaniments": [f"{spec.label}: {len(pool)} tracks, weight {spec.weight:g}"
                                     for spec, (_, pool) in zip(accompaniments, pools)],
                  "settings": dataclasses.asdict(settings)}  # fmt: skip
    model.train()
    record: dict[str, Any] = {}
    started = time.perf_counter()
    while step < settings.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        mix, midi, mask = examples.batch()
        loss = model.loss(model(mix, train_trunk=step >= settings.head_only_steps), midi, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 5.0)
        optimizer.step()
        if average is not None:
            average.update_parameters(model)
        step += 1
        record = {"step": step, "loss": float(loss.detach()), "lr": lr_at(step - 1)}
        if step % settings.valid_every == 0 or step == settings.steps:
            if valid_clips:
                record["valid"] = validate(kept, valid_clips)
                if record["valid"][settings.select_by] > best:
                    best = record["valid"][settings.select_by]
                    save_melody(out / "best.safetensors", kept, {**provenance, "steps": step,
                                "valid": record["valid"]})  # fmt: skip
            save_melody(out / "last.safetensors", kept, {**provenance, "steps": step,
                        "valid": record.get("valid"),
                        "train_seconds": round(time.perf_counter() - started, 1)})  # fmt: skip
            with atomic_write(out / "state.pt") as tmp:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "step": step, "best": best,
                            **({"ema": average.state_dict()} if average is not None else {}),
                            "data_rng": json.dumps(rng.bit_generator.state),
                            "torch_rng": torch.get_rng_state()}, tmp)  # fmt: skip
        with open(out / "metrics.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        if on_step:
            on_step(step, record)
    record.setdefault("step", step)
    if valid_clips and (out / "best.safetensors").exists():
        record["voicing_threshold"], record["valid_overall_accuracy"] = calibrate_best(
            out / "best.safetensors", valid_clips
        )
    return record


def calibrate_best(path: Path, clips: list[Clip]) -> tuple[float, float]:
    """Sets the checkpoint's voicing threshold to the one that scores best on `clips` (the
    validation singers, never the test ones) and rewrites it; returns (threshold, accuracy)."""
    _, model, meta = load_melody(str(path))
    threshold, accuracy = calibrate_voicing(model, clips)
    model.config = dataclasses.replace(model.config, voicing_threshold=threshold)
    provenance = {k: v for k, v in meta.get("provenance", {}).items() if k != "sepcli_version"}
    provenance["voicing_calibration"] = {"threshold": threshold, "valid_overall_accuracy":
                                         round(accuracy, 4), "clips": len(clips)}  # fmt: skip
    save_melody(path, model, provenance)
    return threshold, accuracy
