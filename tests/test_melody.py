"""Melody transcription's parts: the model and its head, labels, notes, files and scores."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

from eval.melody import average, melody_scores
from models.melody import MelodyConfig, MelodyTranscriber, with_context
from sepcli import checkpoints, melody
from tests.conftest import TINY_MEL_ROFORMER

TRUNK = {k: v for k, v in TINY_MEL_ROFORMER.items() if k not in ("num_stems", "sources")}


def tiny() -> MelodyTranscriber:
    torch.manual_seed(0)
    return MelodyTranscriber(MelodyConfig.from_dict(TRUNK))


def test_the_head_gives_one_row_per_stft_frame_and_the_grid_is_20_cents():
    model = tiny()
    assert model.config.bins == 241  # C2..C6 in 20-cent steps
    assert torch.allclose(model.pitch_grid[1] - model.pitch_grid[0], torch.tensor(0.2))
    for length in (44100, 30000, 513):
        out = model(torch.randn(2, 2, length))
        assert out.shape == (2, model.frames(length), 242)


def test_the_trunk_loads_exactly_from_a_separation_checkpoint():
    torch.manual_seed(3)
    separator = checkpoints.build_model("mel-roformer", TINY_MEL_ROFORMER)
    model = tiny()
    missing = model.load_trunk(separator.state_dict())
    assert missing == []
    model.eval(), separator.eval()  # no dropout
    mix = torch.randn(1, 2, 22050)
    with torch.no_grad():
        assert torch.equal(model.trunk.encode(mix)[0], separator.encode(mix)[0])
    bigger = checkpoints.build_model("mel-roformer", {**TINY_MEL_ROFORMER, "num_bands": 12})
    with pytest.raises(Exception):
        model.load_trunk(bigger.state_dict())


def test_targets_are_blurred_25_cents_and_decode_inverts_them_finer_than_the_grid():
    model = tiny()
    midi = torch.tensor([60.3, 45.0, 71.55, 0.0])
    targets = model.targets(midi)
    assert torch.allclose(targets[:3].sum(-1), torch.ones(3)) and targets[3].sum() == 0
    spread = (targets[1] * (model.pitch_grid - 45.0) ** 2).sum().sqrt()
    assert abs(spread.item() - 0.25) < 0.01  # standard deviation 25 cents
    logits = torch.cat([torch.log(targets[:3] + 1e-12), torch.full((3, 1), 3.0)], -1)
    pitch, voicing = model.decode(logits)
    assert torch.allclose(pitch, midi[:3], atol=0.02)  # 2 cents, from a 20-cent grid
    assert torch.allclose(voicing, torch.sigmoid(torch.tensor(3.0)).expand(3))


def test_the_loss_is_lowest_for_the_right_pitch_and_voicing():
    model = tiny()
    midi = torch.tensor([[0.0, 60.0, 60.0, 62.0]])
    right = torch.cat([10 * model.targets(midi), torch.tensor([[[-9.0], [9.0], [9.0], [9.0]]])], -1)
    wrong_pitch = torch.cat([10 * model.targets(midi + 5), right[..., -1:]], -1)
    wrong_voice = torch.cat([right[..., :-1], -right[..., -1:]], -1)
    best = model.loss(right, midi)
    assert best < model.loss(wrong_pitch, midi) and best < model.loss(wrong_voice, midi)
    masked = model.loss(wrong_voice, midi, mask=torch.tensor([[False, False, False, False]]) | (
        torch.arange(4) == 0))  # fmt: skip
    assert masked > 0  # only the masked-in frame counts: its voicing is wrong


def test_a_few_steps_learn_the_pitch_of_a_sung_tone():
    """The head and trunk train end to end: a 220 Hz tone over noise is learnt in 40 steps."""
    model = tiny()
    rate, length = 44100, 22050
    t = torch.arange(length) / rate
    torch.manual_seed(1)
    mix = (0.3 * torch.sin(2 * np.pi * 220.0 * t) + 0.01 * torch.randn(length)).expand(2, -1)[None]
    midi = torch.full((1, model.frames(length)), 57.0)  # A3 = 220 Hz
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model.loss(model(mix), midi)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pitch, voicing = model.decode(model(mix))
    assert (pitch - 57.0).abs().median() < 0.25 and voicing.median() > 0.9


def test_mir1k_labels_land_on_the_models_frames(tmp_path):
    (tmp_path / "pitch.pv").write_text("0\n0\n60\n61\n62\n0\n0\n")
    times, midi = melody.read_pv(tmp_path / "pitch.pv")
    assert np.allclose(times, 0.02 + 0.02 * np.arange(7))
    frames = np.array([0.0, 0.06, 0.07, 0.08, 0.1, 0.125, 0.15, 0.2])
    out = melody.labels_on_frames(times, midi, frames)
    # 0.0: before the first label's half hop -> 0; 0.07: halfway between 60 and 61 -> 60.5;
    # 0.1: 62; 0.125: nearest of 62 | 0 is 0; 0.2: past the end -> 0.
    assert np.allclose(out, [0, 60, 60.5, 61, 62, 0, 0, 0])
    (tmp_path / "bad.pv").write_text("60\nnan\n")
    with pytest.raises(ValueError, match="not a pitch label file"):
        melody.read_pv(tmp_path / "bad.pv")


def test_notes_follow_voicing_and_pitch_but_not_vibrato_or_one_frame_glitches():
    hop = 0.01
    times = np.arange(300) * hop
    midi = np.zeros(300)
    midi[10:100] = 60 + 0.3 * np.sin(np.arange(90) / 3)  # vibrato around C4
    midi[50] = 67  # a one-frame glitch
    midi[100:160] = 64  # a jump to E4 with no gap
    midi[170:175] = 70  # too short: 50 ms
    midi[200:260] = 62.4
    notes = melody.notes_from_contour(times, midi, min_duration=0.1)
    assert [(n.pitch, round(n.onset, 2), round(n.offset, 2)) for n in notes] == [
        (60, 0.10, 1.00), (64, 1.00, 1.60), (62, 2.00, 2.60)
    ]  # fmt: skip


def test_melody_and_notes_files_round_trip(tmp_path):
    notes = [melody.Note(0.5, 1.25, 60), melody.Note(1.25, 2.0, 64), melody.Note(3.0, 3.1, 72)]
    melody.write_midi(tmp_path / "notes.mid", notes)
    back = melody.read_midi_notes(tmp_path / "notes.mid")
    assert [n.pitch for n in back] == [60, 64, 72]
    assert np.allclose([(n.onset, n.offset) for n in back], [(n.onset, n.offset) for n in notes],
                       atol=1e-3)  # fmt: skip
    melody.write_notes_csv(tmp_path / "notes.csv", notes)
    assert (tmp_path / "notes.csv").read_text().splitlines()[1] == "0.5000,1.2500,60"
    times = np.array([0.0, 0.01, 0.02])
    melody.write_melody_csv(tmp_path / "melody.csv", times, melody.midi_to_hz(np.array(
        [0, 69, 57])), np.array([0.1, 0.9, 0.8]))  # fmt: skip
    rows = (tmp_path / "melody.csv").read_text().splitlines()
    assert rows == ["time,f0,confidence", "0.0000,0.000,0.1000", "0.0100,440.000,0.9000",
                    "0.0200,220.000,0.8000"]  # fmt: skip
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_melody_scores_are_mir_evals_measures():
    t = np.arange(0, 5, 0.02)
    ref = np.where((t > 1) & (t < 4), 220.0, 0.0)
    perfect = melody_scores(t, ref, t, ref)
    assert perfect["raw_pitch_accuracy"] == 1.0 and perfect["overall_accuracy"] == 1.0
    octave = melody_scores(t, ref, t, ref * 2)
    assert octave["raw_pitch_accuracy"] == 0.0 and octave["raw_chroma_accuracy"] == 1.0
    everywhere = melody_scores(t, ref, t, np.full_like(ref, 220.0))
    assert everywhere["voicing_recall"] == 1.0 and everywhere["voicing_false_alarm"] == 1.0
    assert average([perfect, octave])["raw_pitch_accuracy"] == 0.5


def test_unvoiced_pitch_guesses_count_for_pitch_accuracy_only():
    """MIREX convention: a negative frequency is an unvoiced frame with a pitch guess."""
    t = np.arange(0, 5, 0.02)
    ref = np.where((t > 1) & (t < 4), 220.0, 0.0)
    guessed = melody_scores(t, ref, t, np.full_like(ref, -220.0))  # right pitch, all unvoiced
    assert guessed["raw_pitch_accuracy"] == 1.0 and guessed["raw_chroma_accuracy"] == 1.0
    assert guessed["voicing_recall"] == 0.0 and guessed["voicing_false_alarm"] == 0.0
    silent = melody_scores(t, ref, t, np.zeros_like(ref))
    assert silent["raw_pitch_accuracy"] == 0.0
    assert guessed["overall_accuracy"] == pytest.approx(silent["overall_accuracy"])


def test_the_voicing_threshold_is_the_one_that_scores_best_on_the_clips(monkeypatch):
    """Voicing probability 0.3 where the label is voiced, 0.1 elsewhere: only thresholds in
    (0.1, 0.3] get every frame right, and the sweep finds the first of them."""
    from sepcli import melody_train

    times = 0.02 + 0.02 * np.arange(200)
    midi = np.where((times > 1) & (times < 3), 60.0, 0.0)
    clip = melody_train.Clip("a", np.zeros((1, 10), np.float16), np.zeros((1, 10), np.float16),
                             times, midi)  # fmt: skip

    def contour(model, mix, rate):
        return times, np.full_like(midi, 60.0), np.where(midi > 0, 0.3, 0.1)

    monkeypatch.setattr(melody_train, "frame_contour", contour)
    model = types.SimpleNamespace(audio_channels=1, sample_rate=16000, config=MelodyConfig())
    threshold, accuracy = melody_train.calibrate_voicing(model, [clip])
    assert threshold == 0.15 and accuracy == pytest.approx(1.0)


SPECTRAL_HEAD = {"spectral_bins": 40, "spectral_context": 2, "head_hidden": 32}
SPECTRAL = {**TRUNK, **SPECTRAL_HEAD}


def test_the_spectral_head_reads_each_frames_log_spectrum_and_its_neighbours():
    torch.manual_seed(0)
    model = MelodyTranscriber(MelodyConfig.from_dict(SPECTRAL))
    rate, n_fft = model.sample_rate, model.config.stft_n_fft
    t = torch.arange(22050) / rate
    # a tone on bin 12, louder in its second half
    tone = torch.sin(2 * np.pi * 12 * rate / n_fft * t) * torch.where(t < 0.25, 0.01, 0.5)
    _, spectrum = model.trunk.encode(tone.expand(2, -1)[None])
    frames = spectrum.shape[1]
    features = with_context(model.log_magnitudes(spectrum), 2)
    assert features.shape == (1, frames, 5 * 40)
    windows = features.reshape(frames, 5, 40)  # frames t-2 .. t+2 of each frame t
    middle = windows[:, 2]
    assert (middle[8:-8].argmax(-1) == 12).all()  # the tone's bin, away from the edges
    assert torch.equal(windows[10:-2, 4], middle[12:]) and torch.equal(
        windows[2:-10, 0], middle[:-12]
    )
    assert torch.equal(windows[0, 0], middle[0])  # the edges repeat the first frame
    # log magnitudes: the level step shows as log(50) ~ 3.9 at the tone's bin
    step = middle[-8:, 12].mean() - middle[3:8, 12].mean()
    assert abs(step.item() - np.log(50.0)) < 0.3
    assert model(tone.expand(2, -1)[None]).shape == (1, model.frames(22050), 242)


def test_head_only_steps_leave_the_trunk_without_gradients():
    torch.manual_seed(0)
    model = MelodyTranscriber(MelodyConfig.from_dict(SPECTRAL))
    mix, midi = torch.randn(1, 2, 11025), torch.full((1, model.frames(11025)), 60.0)
    model.loss(model(mix, train_trunk=False), midi).backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is not None for p in model.classifier.parameters())
    assert all(p.grad is not None for p in model.band_head.parameters())
    model.loss(model(mix), midi).backward()
    assert all(p.grad is not None for p in model.trunk.parameters() if p.requires_grad)


def test_a_new_head_starts_from_a_melody_checkpoints_trunk(tmp_path):
    from sepcli import melody_train
    from sepcli.transcribe import save_melody

    old = tiny()
    with torch.no_grad():  # float16 round trip exact
        for p in old.parameters():
            p.copy_(p.half().float())
    save_melody(tmp_path / "old.safetensors", old, {})
    new = melody_train.build_model(str(tmp_path / "old.safetensors"), SPECTRAL_HEAD)
    assert new.config.spectral_bins == 40 and new.config.dim == old.config.dim
    state = new.state_dict()
    kept = [k for k in old.state_dict() if k.startswith(("trunk.", "band_head."))]
    assert kept and all(torch.equal(state[k], old.state_dict()[k]) for k in kept)
    # without new head keys, the checkpoint's own head is kept, classifier included
    same = melody_train.build_model(str(tmp_path / "old.safetensors"))
    assert same.config == old.config
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in same.state_dict().items())


def test_melody_presets_set_the_head_and_the_training(tmp_path):
    from sepcli import melody_train
    from sepcli.checkpoints import CheckpointError

    assert set(melody_train.presets()) >= {"salience", "spectral", "paper"}
    head, training = melody_train.load_preset(None)  # the default: salience
    assert head["spectral_bins"] == 186 and head["head_hidden"] > 0
    assert head["salience_window"] == 4096 and len(head["salience_harmonics"]) == 9
    settings = melody_train.MelodySettings.from_dict(training)
    assert 0 < settings.head_only_steps < settings.steps and settings.gain_db == (-10.0, 10.0)
    for name in melody_train.presets():
        head, _ = melody_train.load_preset(name)
        MelodyTranscriber(MelodyConfig.from_dict({**TRUNK, **head}))  # builds on any trunk
    assert melody_train.load_preset("paper")[0]["spectral_bins"] == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dim: 64\n")
    with pytest.raises(CheckpointError, match="dim"):
        melody_train.load_preset(str(bad))
    with pytest.raises(
        CheckpointError,
        match="have: ema, guide, low, paper, salience, spectral, temporal, three-windows, timbre, "
        "transpose, wide, windows",
    ):
        melody_train.load_preset("huge")
    with pytest.raises(ValueError, match="stepz"):
        melody_train.MelodySettings.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="pitch_shift"):
        melody_train.MelodySettings.from_dict({"pitch_shift": -2})
    assert melody_train.load_preset("transpose")[1]["pitch_shift"] == 3.0
    for bad in (-1, 13, "6"):
        with pytest.raises(ValueError, match="pitch_shift_down"):
            melody_train.MelodySettings.from_dict({"pitch_shift_down": bad})
    low = melody_train.MelodySettings.from_dict(melody_train.load_preset("low")[1])
    assert (low.pitch_shift, low.pitch_shift_down) == (3.0, 6.0)
    with pytest.raises(ValueError, match="timbre_db"):
        melody_train.MelodySettings.from_dict({"timbre_db": -1})
    with pytest.raises(ValueError, match="balance_singers"):
        melody_train.MelodySettings.from_dict({"balance_singers": 1})
    timbre = melody_train.MelodySettings.from_dict(melody_train.load_preset("timbre")[1])
    assert timbre.timbre_db == 12.0 and timbre.balance_singers and timbre.pitch_shift == 3.0
    assert melody_train.load_preset("three-windows")[0]["salience_extra_windows"] == [2048, 8192]
    wide = melody_train.load_preset("wide")[0]
    assert (wide["salience_channels"], wide["salience_extra_windows"]) == (32, [2048, 8192])


def test_a_random_timbre_moves_the_harmonics_levels_not_their_pitch_nor_the_loudness():
    """A 220 Hz tone with 12 harmonics through four random EQs of up to 9 dB: every harmonic
    stays a peak at its frequency, its level moves by at most 9 dB (and by more than 2 dB for
    some), the RMS is kept, and no two draws colour it alike."""
    from sepcli.melody_train import random_timbre

    rate, rng = 44100, np.random.default_rng(3)
    t = np.arange(rate) / rate
    tone = sum(np.sin(2 * np.pi * 220 * h * t) / h for h in range(1, 13))[None].astype(np.float32)
    before = np.abs(np.fft.rfft(tone[0]))  # 1 Hz bins: harmonic h at bin 220 h
    harmonics = 220 * np.arange(1, 13)
    changes = []
    for _ in range(4):
        coloured = random_timbre(tone, rate, 9.0, rng)
        assert coloured.shape == tone.shape and coloured.dtype == np.float32
        assert np.sqrt(np.mean(coloured**2)) == pytest.approx(np.sqrt(np.mean(tone**2)), 1e-4)
        after = np.abs(np.fft.rfft(coloured[0]))
        for h in harmonics:  # still a peak at its own bin, nothing between the harmonics
            assert after[h] > 100 * after[h - 50 : h + 51][np.r_[0:45, 56:101]].max()
        change = 20 * np.log10(after[harmonics] / before[harmonics])
        change -= 20 * np.log10(np.sqrt(np.mean(coloured**2)) / np.sqrt(np.mean(tone**2)))
        changes.append(change)
    changes = np.array(changes)
    # the EQ stays within +-9 dB; the RMS correction can add a common offset: compare spreads
    spread = changes.max(1) - changes.min(1)
    assert (spread <= 18.01).all() and (spread > 2.0).all()
    assert min(np.abs(a - b).max() for i, a in enumerate(changes) for b in changes[i + 1 :]) > 1.0


def test_balanced_singers_are_drawn_alike_whatever_their_number_of_clips():
    """Ten clips of singer `a` at A3 and one of `b` at E4: drawn clip by clip, b sings about one
    example in eleven; drawn singer by singer, about one in two. A timbre EQ keeps the labels."""
    from sepcli import melody_train

    rate = 44100
    t = np.arange(rate) / rate
    times = 0.02 + 0.02 * np.arange(49)

    def clip(name: str, midi: float) -> melody_train.Clip:
        hz = 440 * 2 ** ((midi - 69) / 12)
        voice = (0.5 * np.sin(2 * np.pi * hz * t))[None].astype(np.float16)
        return melody_train.Clip(name, voice, np.zeros_like(voice), times, np.full(49, midi))

    clips = [clip(f"a_1_{i:02d}", 57.0) for i in range(10)] + [clip("b_1_01", 64.0)]
    shares = {}
    for balance in (False, True):
        settings = melody_train.MelodySettings(batch_size=400, segment=0.5, timbre_db=6.0,
                                               balance_singers=balance)  # fmt: skip
        examples = melody_train.Examples(clips, tiny(), settings, np.random.default_rng(0))
        _, labels, _ = examples.batch()
        sung = labels[:, 5]
        assert set(sung.tolist()) == {57.0, 64.0}  # the EQ leaves every label as it was
        shares[balance] = float((sung == 64.0).float().mean())
    assert 0.04 < shares[False] < 0.16 and 0.4 < shares[True] < 0.6


def test_training_mixes_get_the_random_level_and_keep_their_labels():
    from sepcli import melody_train

    rate = 44100
    times = 0.02 + 0.02 * np.arange(150)
    voice = np.sin(2 * np.pi * 220 * np.arange(3 * rate) / rate)[None].astype(np.float16)
    clip = melody_train.Clip("a", voice, 0.1 * voice, times, np.full(150, 57.0))
    model = tiny()
    batches = {}
    for gain in (0.0, 6.0):
        settings = melody_train.MelodySettings(batch_size=2, segment=1.0, gain_db=(gain, gain))
        examples = melody_train.Examples([clip], model, settings, np.random.default_rng(0))
        batches[gain] = examples.batch()
    (quiet, labels, _), (loud, same_labels, _) = batches[0.0], batches[6.0]
    assert torch.allclose(loud, quiet * 10 ** (6 / 20), atol=1e-5)
    assert torch.equal(labels, same_labels) and (labels == 57.0).all()


def test_voices_are_remixed_over_other_datasets_accompaniments_at_the_asked_snr():
    """The clip's own backing is silent, the other dataset's is noise: a remix is either the
    voice alone (a silent stretch stays silent) or the voice over the noise at 2-4 dB SNR."""
    from sepcli import melody_train

    rate = 44100
    voice = (0.5 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate))[None].astype(np.float16)
    times = 0.02 + 0.02 * np.arange(49)
    clip = melody_train.Clip("a", voice, np.zeros_like(voice), times, np.full(49, 57.0))
    noise = np.random.default_rng(0).standard_normal((2, 3 * rate)).astype(np.float16)
    settings = melody_train.MelodySettings(batch_size=64, segment=1.0, own_accompaniment=0.0,
                                           snr_db=(2.0, 4.0))  # fmt: skip
    examples = melody_train.Examples([clip], tiny(), settings, np.random.default_rng(1),
                                     [(3.0, [noise])])  # fmt: skip
    mix, labels, _ = examples.batch()
    residual = (mix - torch.from_numpy(voice.astype(np.float32))).double()
    loudness = residual.pow(2).mean((1, 2)).sqrt()
    alone = loudness < 1e-3
    snr = 20 * torch.log10(voice.astype(np.float64).std() / loudness[~alone])
    assert ((snr > 1.99) & (snr < 4.01)).all()
    # the noise pool has weight 3 against the clips' own 1: about 3/4 of the remixes
    assert 0.6 < (~alone).float().mean() < 0.9
    assert (labels[:, 2:-2] == 57.0).all()  # the label follows the voice
    stereo = residual[~alone][0]
    assert not torch.allclose(stereo[0], stereo[1])  # the noise's two channels, kept apart


def test_an_accompaniment_is_every_stem_but_the_vocals(tmp_path):
    import soundfile as sf

    from sepcli import datasets, melody_train

    rate = 44100
    t = np.arange(rate) / rate
    stems = {"drums": 0.1 * np.sin(2 * np.pi * 100 * t), "other": 0.1 * np.sin(2 * np.pi * 300 * t),
             "vocals": 0.3 * np.sin(2 * np.pi * 500 * t)}  # fmt: skip
    for song in ("a", "held"):
        (tmp_path / song).mkdir()
        for name, audio in stems.items():
            sf.write(tmp_path / song / f"{name}.wav", np.stack([audio, audio], 1), rate, "FLOAT")
    spec = datasets.DataSpec("stems", tmp_path, weight=2.0, valid=("held",))
    [(weight, backings)] = melody_train.load_accompaniments([spec], rate, None)
    assert weight == 2.0 and len(backings) == 1  # the validation track is not read
    expected = stems["drums"] + stems["other"]
    assert backings[0].shape == (2, rate)
    assert np.abs(backings[0][0].astype(np.float64) - expected).max() < 1e-3


SALIENCE = {**TRUNK, "salience_window": 4096}


def trained_looking(model: MelodyTranscriber) -> None:
    """Random weights of a trained model's size (not zero-started), exact in float16, so a
    checkpoint round trip returns them unchanged."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((0.3 * torch.randn_like(p)).half().float())


def harmonic_tone(hz: float, seconds: float = 0.5, level: float = 0.3) -> torch.Tensor:
    """Five harmonics at 1/h amplitude, stereo, [1, 2, L] at 44.1 kHz."""
    t = torch.arange(int(44100 * seconds)) / 44100
    tone = sum(torch.sin(2 * np.pi * h * hz * t) / h for h in range(1, 6))
    return (level * tone).expand(2, -1)[None]


def test_the_harmonic_stack_reads_every_pitchs_harmonics_whatever_the_level():
    model = MelodyTranscriber(MelodyConfig.from_dict(SALIENCE))
    harmonics = model.config.salience_harmonics
    mix = harmonic_tone(220.0) + 0.001 * torch.randn(1, 1, 22050)
    stack = model.salience.harmonic_stack(mix)[0]  # (h, t, bins)
    assert stack.shape == (len(harmonics), model.frames(22050), model.config.bins)
    grid = model.pitch_grid
    # row h at pitch p reads frequency h * f(p): harmonic 2 of A2 is harmonic 1 of A3
    a2, a3 = int((grid - 45).abs().argmin()), int((grid - 57).abs().argmin())
    one, two = harmonics.index(1.0), harmonics.index(2.0)
    assert torch.allclose(stack[two, :, a2], stack[one, :, a3], atol=1e-3)
    # summed over harmonics 1-5, the middle frames peak at the tone's pitch (A3, MIDI 57)
    rows = [harmonics.index(float(h)) for h in range(1, 6)]
    peak = grid[stack[rows, 10:-10].sum(0).argmax(-1)]
    assert (peak - 57.0).abs().max() < 0.3
    # a level change of 20 dB leaves the stack as it was (each frame's mean is removed)
    louder = model.salience.harmonic_stack(10 * mix)[0]
    assert (louder - stack)[:, 10:-10].abs().mean() < 0.02


def test_a_salience_head_starts_as_the_model_it_was_initialised_from(tmp_path):
    from sepcli import melody_train
    from sepcli.transcribe import save_melody

    old = MelodyTranscriber(MelodyConfig.from_dict(SPECTRAL))
    with torch.no_grad():  # float16 round trip exact
        for p in old.parameters():
            p.copy_(p.half().float())
    save_melody(tmp_path / "old.safetensors", old, {})
    new = melody_train.build_model(str(tmp_path / "old.safetensors"), {"salience_window": 4096})
    assert new.config.salience_window == 4096 and new.config.spectral_bins == 40
    mix = torch.randn(1, 2, 30000)
    with torch.no_grad():
        assert torch.equal(new.eval()(mix), old.eval()(mix))
    new.train().loss(new(mix), torch.full((1, new.frames(30000)), 60.0)).backward()
    assert new.salience.net[-1].weight.grad.abs().sum() > 0  # and it learns from there


def test_salience_time_layers_start_at_zero_and_widen_what_each_frame_sees(tmp_path):
    from sepcli import melody_train
    from sepcli.transcribe import save_melody

    old = MelodyTranscriber(MelodyConfig.from_dict(SALIENCE))
    trained_looking(old)
    save_melody(tmp_path / "old.safetensors", old, {})
    new = melody_train.build_model(str(tmp_path / "old.safetensors"),
                                   {"salience_dilations": (2, 4, 8, 16)})  # fmt: skip
    assert len(new.salience.temporal) == 4
    mix = torch.randn(1, 2, 30000)
    with torch.no_grad():
        assert torch.equal(new.eval()(mix), old.eval()(mix))
    new.train().loss(new(mix), torch.full((1, new.frames(30000)), 60.0)).backward()
    assert new.salience.temporal[0].weight.grad.abs().sum() > 0
    # reach along time: a change to the stack at frame 80 moves frame 80 - 30 only through the
    # time layers (the 3x5 layers see 2 frames either way, the time layers 2+4+8+16 more)
    stack = torch.randn(1, len(old.config.salience_harmonics), 160, old.config.bins)
    moved = stack.clone()
    moved[:, :, 80] += 1.0
    with torch.no_grad():
        for p in new.salience.temporal.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        for model in (old, new):
            change = (model.salience(moved) - model.salience(stack))[0].abs().amax(-1)
            assert change[80] > 0
            assert (change[50] > 1e-6) == (model is new) and (change[110] > 1e-6) == (model is new)
            assert change[80 - 33] == 0 and change[80 + 33] == 0  # and no further than that


def test_an_extra_salience_window_starts_at_zero_and_stacks_its_own_harmonics(tmp_path):
    from sepcli import melody_train
    from sepcli.transcribe import save_melody

    old = MelodyTranscriber(MelodyConfig.from_dict({**SALIENCE, "salience_dilations": (2, 4)}))
    trained_looking(old)
    save_melody(tmp_path / "old.safetensors", old, {})
    new = melody_train.build_model(str(tmp_path / "old.safetensors"),
                                   {"salience_extra_windows": (2048,)})  # fmt: skip
    assert new.config.salience_dilations == (2, 4) and new.config.salience_window == 4096
    h = len(new.config.salience_harmonics)
    mix = harmonic_tone(220.0) + 0.001 * torch.randn(1, 1, 22050)
    stack = new.salience.harmonic_stack(mix)[0]
    assert stack.shape == (2 * h, new.frames(22050), new.config.bins)
    assert torch.equal(stack[:h], old.salience.harmonic_stack(mix)[0])  # the 4096 one, unchanged
    # the 2048-point stack summed over harmonics 1-5 also peaks at A3 (MIDI 57)...
    rows = [h + new.config.salience_harmonics.index(float(k)) for k in range(1, 6)]
    peak = new.pitch_grid[stack[rows, 10:-10].sum(0).argmax(-1)]
    assert (peak - 57.0).abs().max() < 0.3
    # ...and blurs a jump from A3 to E4 over half as many frames as the 4096-point stack
    jump = torch.cat([harmonic_tone(220.0), harmonic_tone(330.0)], -1)
    both = new.salience.harmonic_stack(jump)[0]
    a3, e4 = (int((new.pitch_grid - m).abs().argmin()) for m in (57, 64))
    one = new.config.salience_harmonics.index(1.0)
    blurred = []
    for rows in (both[one], both[h + one]):
        lead = rows[:, e4] - rows[:, a3]  # E4's lead over A3, from steady below 0 to above
        before, after = lead[:30].mean(), lead[-30:].mean()
        assert before < -4 and after > 4
        progress = (lead - before) / (after - before)
        blurred.append(int(((progress > 0.1) & (progress < 0.9)).sum()))
    assert blurred[0] >= 5 and 1 <= blurred[1] <= (blurred[0] + 1) // 2
    mix = torch.randn(1, 2, 30000)
    with torch.no_grad():
        assert torch.equal(new.eval()(mix), old.eval()(mix))  # starts as the model it continues
    new.train().loss(new(mix), torch.full((1, new.frames(30000)), 60.0)).backward()
    assert new.salience.extra_input.weight.grad.abs().sum() > 0  # and the new stack learns


def test_a_third_salience_window_keeps_the_second_ones_weights_and_starts_at_zero(tmp_path):
    from sepcli import melody_train
    from sepcli.transcribe import save_melody

    old = MelodyTranscriber(MelodyConfig.from_dict({**SALIENCE, "salience_extra_windows": (2048,)}))
    trained_looking(old)
    save_melody(tmp_path / "old.safetensors", old, {})
    new = melody_train.build_model(str(tmp_path / "old.safetensors"),
                                   {"salience_extra_windows": (2048, 8192)})  # fmt: skip
    h = len(new.config.salience_harmonics)
    weight = new.salience.extra_input.weight
    assert weight.shape[1] == 2 * h
    assert torch.equal(weight[:, :h], old.salience.extra_input.weight)  # the 2048 stack's, kept
    assert not weight[:, h:].any()  # the 8192 stack's, zero
    mix = harmonic_tone(110.0) + 0.001 * torch.randn(1, 1, 22050)
    stack = new.salience.harmonic_stack(mix)[0]
    assert stack.shape == (3 * h, new.frames(22050), new.config.bins)
    assert torch.equal(stack[: 2 * h], old.salience.harmonic_stack(mix)[0])
    # the 8192-point fundamental row is sharper at A2 (MIDI 45) than the 4096-point one: its
    # level a semitone away has dropped further below the peak
    one = new.config.salience_harmonics.index(1.0)
    a2 = int((new.pitch_grid - 45).abs().argmin())
    semitone = new.config.bins_per_semitone
    drops = [float((rows[10:-10, a2] - rows[10:-10, a2 + semitone]).mean())
             for rows in (stack[one], stack[2 * h + one])]  # fmt: skip
    assert drops[0] < 0.5 and drops[1] > 1.0  # 0.23 and 1.20 when written
    mix = torch.randn(1, 2, 30000)
    with torch.no_grad():
        assert torch.equal(new.eval()(mix), old.eval()(mix))  # starts as the model it continues
    new.train().loss(new(mix), torch.full((1, new.frames(30000)), 60.0)).backward()
    assert weight.grad[:, h:].abs().sum() > 0  # and the new stack learns
    # a continuation whose extra windows do not start with the old ones keeps no extra weights
    other = melody_train.build_model(str(tmp_path / "old.safetensors"),
                                     {"salience_extra_windows": (8192, 2048)})  # fmt: skip
    assert not other.salience.extra_input.weight.any()


def test_a_wider_salience_cnn_keeps_the_old_channels_and_starts_as_the_old_model(tmp_path):
    from sepcli import melody_train
    from sepcli.transcribe import save_melody

    torch.manual_seed(3)
    keys = {**SALIENCE, "salience_channels": 4, "salience_dilations": (2,),
            "salience_extra_windows": (2048,)}  # fmt: skip
    old = MelodyTranscriber(MelodyConfig.from_dict(keys))
    trained_looking(old)
    save_melody(tmp_path / "old.safetensors", old, {})
    grown = {"salience_channels": 8, "salience_extra_windows": (2048, 8192)}
    new = melody_train.build_model(str(tmp_path / "old.safetensors"), grown)
    net, was = new.salience.net, old.salience.net
    assert net[2].weight.shape == (8, 8, 3, 5)
    assert torch.equal(net[2].weight[:4, :4], was[2].weight)  # the old channels, kept
    assert torch.equal(net[0].bias[:4], was[0].bias)
    assert not net[2].weight[:, 4:].any() and not net[6].weight[:, 4:].any()  # new: no reach
    assert net[2].weight[4:, :4].abs().sum() > 0  # the new channels' own weights: random
    h = len(new.config.salience_harmonics)
    extra = new.salience.extra_input.weight
    assert torch.equal(extra[:4, :h], old.salience.extra_input.weight)
    assert not extra[:, h:].any() and not extra[4:].any()  # new stack, new channels: zero
    mix = torch.randn(1, 2, 30000)
    with torch.no_grad():
        # starts as the model it continues (the zero weights add nothing)
        torch.testing.assert_close(new.eval()(mix), old.eval()(mix), rtol=0, atol=1e-5)
    new.train().loss(new(mix), torch.full((1, new.frames(30000)), 60.0)).backward()
    assert net[6].weight.grad[:, 4:].abs().sum() > 0  # and the new channels learn
    # a narrower continuation keeps none of the salience CNN's convolutions
    narrow = melody_train.build_model(str(tmp_path / "old.safetensors"), {"salience_channels": 2})
    assert not torch.equal(narrow.salience.net[2].weight, was[2].weight[:2, :2])


def test_a_salience_guide_reads_the_separators_vocals_and_starts_at_zero(tmp_path, monkeypatch):
    from sepcli import melody_train
    from sepcli.transcribe import load_melody, save_melody

    torch.manual_seed(5)  # vocals second: the guide keeps that stem's mask estimator
    sources = ["drums", "vocals", "bass", "other"]
    separator = checkpoints.build_model("mel-roformer", {**TINY_MEL_ROFORMER, "sources": sources})
    with torch.no_grad():  # float16 round trip exact, as a melody checkpoint stores it
        for p in separator.parameters():
            p.copy_(p.half().float())
    checkpoints.save_checkpoint(tmp_path / "sep.safetensors", separator, {"note": "test"})
    separator = checkpoints.load_model(str(tmp_path / "sep.safetensors")).model.eval()
    # from a separation checkpoint: trunk and guide both come from it
    fresh = melody_train.build_model(str(tmp_path / "sep.safetensors"),
                                     {"salience_window": 4096, "salience_guide": True})  # fmt: skip
    mix = torch.randn(1, 2, 30000)
    assert fresh.training and not fresh.guide.training  # the tiny config's dropout stays off
    with torch.no_grad():
        assert torch.equal(fresh.guide(mix)[:, 0], separator(mix)[:, 1])
        assert torch.equal(fresh.eval().trunk.encode(mix)[0], separator.encode(mix)[0])

    # from a melody checkpoint without one: the guide comes from the embedded default's place
    old = MelodyTranscriber(MelodyConfig.from_dict({**SALIENCE, "salience_extra_windows": (2048,)}))
    trained_looking(old)
    save_melody(tmp_path / "old.safetensors", old, {})
    monkeypatch.setattr(melody_train, "DEFAULT_GUIDE", str(tmp_path / "sep.safetensors"))
    new = melody_train.build_model(str(tmp_path / "old.safetensors"), {"salience_guide": True})
    h = len(new.config.salience_harmonics)
    with torch.no_grad():
        vocals = separator(mix)[:, 1]
        assert torch.equal(new.guide(mix)[:, 0], vocals)
        assert torch.equal(new.eval()(mix), old.eval()(mix))  # starts as the model it continues
    # the guide's stacks: the separated vocals' own, after the mix's two
    seen = {}
    new.salience.register_forward_pre_hook(lambda _, args: seen.update(stack=args[0]))
    new.train().loss(new(mix), torch.full((1, new.frames(30000)), 60.0)).backward()
    assert seen["stack"].shape[1] == 4 * h
    assert torch.equal(seen["stack"][:, 2 * h :], new.salience.harmonic_stack(vocals))
    assert new.salience.guide_input.weight.grad.abs().sum() > 0  # the new input learns...
    assert all(p.grad is None for p in new.guide.parameters())  # ...the separator does not
    # saved whole: the guide travels in the melody checkpoint
    save_melody(tmp_path / "guided.safetensors", new, {})
    _, loaded, _ = load_melody(str(tmp_path / "guided.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(mix), new.eval()(mix))


def test_a_guide_needs_a_separator_with_vocals_of_the_trunks_architecture(tmp_path, monkeypatch):
    from sepcli import melody_train
    from sepcli.transcribe import save_melody

    save_melody(
        tmp_path / "old.safetensors", MelodyTranscriber(MelodyConfig.from_dict(SALIENCE)), {}
    )
    wrong = {
        "wide": {**TINY_MEL_ROFORMER, "dim": 24},
        "drums": {**TINY_MEL_ROFORMER, "num_stems": 1, "sources": ["drums"]},
    }
    for name, config in wrong.items():
        path = tmp_path / f"{name}.safetensors"
        checkpoints.save_checkpoint(path, checkpoints.build_model("mel-roformer", config), {})
        monkeypatch.setattr(melody_train, "DEFAULT_GUIDE", str(path))
        with pytest.raises(checkpoints.CheckpointError, match="the guide needs a Mel-RoFormer"):
            melody_train.build_model(str(tmp_path / "old.safetensors"), {"salience_guide": True})


def test_the_salience_map_finds_a_pitch_it_never_trained_on():
    """The salience CNN slides along pitch: trained on tones at four pitches, it places a fifth,
    unseen one (the classifier alone cannot: it has to learn every pitch bin apart)."""
    torch.manual_seed(0)
    model = MelodyTranscriber(MelodyConfig.from_dict(SALIENCE))
    seen = [50.0, 54.0, 62.0, 66.0]
    mixes = torch.cat([harmonic_tone(440 * 2 ** ((m - 69) / 12)) for m in seen])
    midi = torch.tensor(seen)[:, None].expand(-1, model.frames(22050))
    with torch.no_grad():
        stacks = model.salience.harmonic_stack(mixes)
    optimizer = torch.optim.AdamW(model.salience.parameters(), lr=3e-3)
    bands = torch.zeros(len(seen), midi.shape[1], model.config.num_bands, model.config.dim)
    for _ in range(60):
        loss = model.loss(model.head(bands, None, stacks), midi)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unseen = 440 * 2 ** ((58.4 - 69) / 12)
    with torch.no_grad():
        stack = model.salience.harmonic_stack(harmonic_tone(unseen))
        pitch, _ = model.decode(model.head(bands[:1], None, stack))
    assert (pitch[0, 5:-5] - 58.4).abs().median() < 0.3


def test_salience_config_keys_are_checked():
    for bad in ({"salience_window": 100}, {"salience_harmonics": []},
                {"salience_harmonics": [0.0, 1.0]}, {"salience_channels": 0},
                {"salience_dilations": [0]}, {"salience_dilations": [2] * 9},
                {"salience_extra_windows": [4096]}, {"salience_extra_windows": [100]},
                {"salience_extra_windows": [2048, 2048]},
                {"salience_window": 0, "salience_extra_windows": [2048]},
                {"salience_window": 0, "salience_guide": True}):  # fmt: skip
        with pytest.raises(ValueError, match="salience"):
            MelodyConfig.from_dict({**SALIENCE, **bad})


def test_a_pitch_shifted_example_sounds_at_its_moved_label_frame_by_frame():
    """A tone at A3 that jumps to E4 halfway: transposed by up to 3 semitones (voice and own
    backing alike), every frame's label still names the pitch heard there, and the jump moves in
    time with the speed change."""
    from sepcli import melody_train

    rate = 44100
    t = np.arange(3 * rate) / rate
    hz = np.where(t < 1.5, 220.0, 329.63)
    voice = (0.5 * np.sin(2 * np.pi * np.cumsum(hz) / rate))[None].astype(np.float16)
    times = 0.02 + 0.02 * np.arange(149)
    midi = np.where(times < 1.5, 57.0, 69 + 12 * np.log2(329.63 / 440))
    clip = melody_train.Clip("a", voice, 0.2 * voice, times, midi)
    model = tiny()
    settings = melody_train.MelodySettings(batch_size=12, segment=1.0, own_accompaniment=1.0,
                                           pitch_shift=3.0)  # fmt: skip
    mix, labels, mask = melody_train.Examples(
        [clip], model, settings, np.random.default_rng(2)
    ).batch()
    window, checked, moved = 4096, 0, 0
    for b in range(mix.shape[0]):
        audio = mix[b, 0].double().numpy()
        for f in range(2, labels.shape[1] - 2):
            around = labels[b, f - 2 : f + 3]
            centre = f * model.hop
            if not (mask[b, f] and (around == around[0]).all() and around[0] > 0):
                continue
            if centre - window // 2 < 0 or centre + window // 2 > audio.shape[0]:
                continue
            piece = audio[centre - window // 2 : centre + window // 2] * np.hanning(window)
            spectrum = np.abs(np.fft.rfft(piece, 32 * window))
            heard = 69 + 12 * np.log2(np.argmax(spectrum) * rate / (32 * window) / 440)
            assert abs(heard - float(labels[b, f])) < 0.1, (b, f, heard, float(labels[b, f]))
            checked += 1
            moved += min(abs(float(labels[b, f]) - 57), abs(float(labels[b, f]) - 64.02)) > 0.5
    assert checked > 200 and moved > 100


def test_a_lopsided_transposition_range_moves_clips_down_further_than_up():
    """pitch_shift 3 with pitch_shift_down 6: a steady A3 is heard anywhere from D#3 to C4,
    about two thirds of the examples lower than sung, and each label names the pitch heard."""
    from sepcli import melody_train

    rate = 44100
    voice = (0.5 * np.sin(2 * np.pi * 220.0 * np.arange(4 * rate) / rate))[None].astype(np.float16)
    times = 0.02 + 0.02 * np.arange(199)
    clip = melody_train.Clip("a", voice, 0.2 * voice, times, np.full(199, 57.0))
    model = tiny()
    settings = melody_train.MelodySettings(batch_size=90, segment=0.5, own_accompaniment=1.0,
                                           pitch_shift=3.0, pitch_shift_down=6.0)  # fmt: skip
    mix, labels, mask = melody_train.Examples(
        [clip], model, settings, np.random.default_rng(5)
    ).batch()
    shifts = labels[:, 2].double().numpy() - 57.0
    assert mask[:, 2].all() and (labels[:, 2:-2].std(1) < 1e-4).all()  # one shift per example
    assert shifts.min() >= -6.0 and shifts.max() <= 3.0
    assert shifts.min() < -5.0 and shifts.max() > 2.0
    assert 0.5 < (shifts < 0).mean() < 0.85
    window = 8192
    for b in (int(shifts.argmin()), int(shifts.argmax())):
        piece = mix[b, 0, :window].double().numpy() * np.hanning(window)
        spectrum = np.abs(np.fft.rfft(piece, 16 * window))
        heard = 69 + 12 * np.log2(np.argmax(spectrum) * rate / (16 * window) / 440)
        assert abs(heard - float(labels[b, 2])) < 0.1


def glide_leap_and_strays(frames: int = 200) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Log-probabilities [frames, 241] around a true bin path (a glide from bin 60 to 90, then a
    leap of 18 semitones held), and frames where a stray peak (bin 200) outscores the truth."""
    truth = np.where(np.arange(frames) < frames // 2,
                     60 + np.round(np.arange(frames) * 30 / (frames // 2)), 180).astype(int)  # fmt: skip
    bins = np.arange(241)
    log_probs = -0.5 * ((bins[None] - truth[:, None]) / 2.0) ** 2 - 3.0
    strays = [50, 51, 150, 171]
    log_probs[strays, 200] = -0.5
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    return log_probs, truth, strays


def test_the_viterbi_path_rides_through_stray_frames_and_keeps_a_held_leap():
    from models.melody import viterbi_pitch_path

    log_probs, truth, strays = glide_leap_and_strays()
    assert (log_probs.argmax(1)[strays] == 200).all()  # frame by frame, the strays win
    path = viterbi_pitch_path(log_probs, bins_per_semitone=5)
    assert np.abs(path - truth).max() <= 1
    # a leap the frames insist on is taken at once, not glided into
    assert path[99] <= 91 and path[100] >= 179


def test_pitch_smoothing_decodes_each_sequence_along_its_path():
    model = tiny()
    log_probs, truth, strays = glide_leap_and_strays()
    voicing = np.full((len(truth), 1), 2.0)
    one = np.concatenate([log_probs, voicing], 1)
    two = np.concatenate([log_probs[::-1], voicing], 1)  # the same sequence played backwards
    logits = torch.from_numpy(np.stack([one, two])).float()
    plain, _ = model.decode(logits)
    model.config = dataclasses.replace(model.config, pitch_smoothing=True)
    smooth, voiced = model.decode(logits)
    grid = model.pitch_grid.numpy()
    stray_pitch = grid[200]
    assert np.allclose(plain[0, strays].numpy(), stray_pitch, atol=0.5)
    assert np.abs(smooth[0].numpy() - grid[truth]).max() < 0.3
    assert np.abs(smooth[1].numpy() - grid[truth[::-1]]).max() < 0.3
    assert torch.allclose(voiced, torch.sigmoid(torch.tensor(2.0)).expand(2, len(truth)))
    # a lone frame is decoded as before: no path through one frame
    single, _ = model.decode(logits[0, 50])
    assert abs(float(single) - stray_pitch) < 0.5


def hearing_oracle(model: MelodyTranscriber, audio: np.ndarray) -> np.ndarray:
    """A stand-in for the network's logits: each frame's loudest frequency (zero-padded FFT of a
    Hann window at the frame's centre) as a sharp peak on the pitch grid, voiced where loud."""
    grid, window = model.pitch_grid.numpy(), 2048
    x = np.pad(audio.mean(0), window // 2)
    rows = []
    for f in range(model.frames(audio.shape[-1])):
        piece = x[f * model.hop : f * model.hop + window] * np.hanning(window)
        spectrum = np.abs(np.fft.rfft(piece, 16 * window))
        hz = max(np.argmax(spectrum), 1) * model.sample_rate / (16 * window)
        heard = 69 + 12 * np.log2(hz / 440)
        loud = np.sqrt(np.mean(piece**2)) > 0.01
        rows.append([*(-(((grid - heard) / 0.1) ** 2)), 3.0 if loud else -3.0])
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("shifts", [(1, 2), (-3,)])
def test_test_time_transpositions_are_read_back_at_the_original_pitch_and_time(monkeypatch, shifts):
    """A tone at C4 that jumps to E4 at 1 s, heard also 1 and 2 (or 3 down) semitones higher:
    each pass, moved back in pitch and time, agrees with the plain one, so their average keeps
    C4 before the jump and E4 after it, to a frame. Shifts on one side only, so a pass moved
    the wrong way (or read at the wrong time) cannot cancel against its mirror image."""
    from sepcli import transcribe

    monkeypatch.setattr(transcribe, "frame_logits", hearing_oracle)
    model = tiny()
    rate = model.sample_rate
    t = np.arange(2 * rate) / rate
    hz = np.where(t < 1.0, 261.63, 329.63)
    tone = (0.5 * np.sin(2 * np.pi * np.cumsum(hz) / rate)).astype(np.float32)
    audio = np.stack([tone, tone])
    plain = transcribe.averaged_log_probs(model, audio)
    model.config = dataclasses.replace(model.config, test_transpositions=shifts)
    averaged = transcribe.averaged_log_probs(model, audio)
    assert averaged.shape == plain.shape == (model.frames(len(t)), model.config.bins + 1)
    pitch, voicing = model.decode(torch.from_numpy(averaged))
    frame_times = np.arange(len(pitch)) * model.hop / rate
    truth = np.where(frame_times < 1.0, 60.0, 64.0)
    away = (np.abs(frame_times - 1.0) > 1.5 * model.hop / rate) & (frame_times > 0.05)
    away &= frame_times < 1.95
    assert np.abs(pitch.numpy()[away] - truth[away]).max() < 0.1
    assert (voicing.numpy()[away] > 0.9).all()
    # each pass alone puts the tone where the plain pass does
    for s in shifts:
        model.config = dataclasses.replace(model.config, test_transpositions=(s,))
        two = transcribe.averaged_log_probs(model, audio)
        single = 2 * two[:, :-1] - plain[:, :-1]  # the transposed pass, moved back
        inside = slice(max(0, -s * 5), model.config.bins - max(0, s * 5))
        assert (np.argmax(single[away, inside], 1) == np.argmax(plain[away, inside], 1)).all()


def test_test_transpositions_are_checked():
    for bad in ([0], [13], [1, 1], [0.5], list(range(1, 10))):
        with pytest.raises(ValueError, match="test_transpositions"):
            MelodyConfig.from_dict({**TRUNK, "test_transpositions": bad})
    assert MelodyConfig.from_dict(
        {**TRUNK, "test_transpositions": [-2, 1]}
    ).test_transpositions == (-2, 1)


def test_validation_during_training_hears_each_clip_once(monkeypatch):
    """A model with test-time transpositions is validated on one pass per clip (they would
    multiply the cost of every validation) and keeps them afterwards."""
    from sepcli import melody_train, transcribe

    calls = []

    def counting(model, audio):
        calls.append(audio.shape[-1])
        return hearing_oracle(model, audio)

    monkeypatch.setattr(transcribe, "frame_logits", counting)
    model = tiny()
    model.config = dataclasses.replace(model.config, test_transpositions=(-1.0, 1.0))
    rate = model.sample_rate
    t = np.arange(rate) / rate
    voice = (0.5 * np.sin(2 * np.pi * 220.0 * t))[None].astype(np.float16)
    times = 0.02 + 0.02 * np.arange(49)
    clips = [
        melody_train.Clip(f"c{i}", voice, 0 * voice, times, np.full(49, 57.0)) for i in range(3)
    ]
    scores = melody_train.validate(model, clips)
    assert calls == [rate] * 3
    assert scores["raw_pitch_accuracy"] > 0.95
    assert model.config.test_transpositions == (-1.0, 1.0)
    transcribe.frame_contour(model, voice.astype(np.float32), rate)  # decoding uses all three
    assert len(calls) == 6
