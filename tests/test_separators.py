"""The Separator contract, for every registered architecture at a small config."""

import numpy as np
import pytest
import torch

from models import ARCHITECTURES
from sepcli import checkpoints

SMALL = {
    "mel-roformer": dict(dim=16, depth=1, num_stems=2, sources=["vocals", "bass"], num_bands=8,
                         dim_head=8, heads=2, time_transformer_depth=1, freq_transformer_depth=1,
                         mlp_expansion_factor=1, attn_dropout=0.0, ff_dropout=0.0,
                         multi_stft_resolutions_window_sizes=[1024, 256], segment=22050),
    "bs-roformer": dict(dim=16, depth=1, num_stems=2, sources=["vocals", "bass"], stereo=True,
                        freqs_per_bands=[8, 8, 16, 32, 64, 129], stft_n_fft=512, stft_win_length=512,
                        stft_hop_length=128, dim_head=8, heads=2, time_transformer_depth=1,
                        freq_transformer_depth=1, mlp_expansion_factor=1,
                        multi_stft_resolutions_window_sizes=[1024, 256], segment=22050),
    "complex-mask": dict(channels=[8, 16, 32], n_fft=512, hop_length=128, segment=8192),
    "ibm-cnn": dict(n_fft=1024, win_length=512, hop_length=128, conv_channels=[4, 4, 8, 8],
                    kernel_freq=5, pool=4, hidden=[32, 16], sample_rate=8000, segment=8000),
}  # fmt: skip


def build(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return checkpoints.build_model(name, {**SMALL[name], **overrides})


def test_every_architecture_has_a_small_config_here():
    assert set(SMALL) == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("length", [1, 7, 300, 4097, 12345])
def test_any_length_gives_sources_by_channels_by_the_same_length(name, length):
    model = build(name).eval()
    mix = torch.randn(2, model.audio_channels, length) * 0.1
    with torch.no_grad():
        out = model(mix)
    assert out.shape == (2, len(model.sources), model.audio_channels, length)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_parameter(name):
    model = build(name).train()
    mix = torch.randn(2, model.audio_channels, model.segment) * 0.1
    targets = torch.randn(2, len(model.sources), model.audio_channels, model.segment) * 0.05
    model.loss(mix, targets).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("name", sorted(SMALL))
def test_state_round_trips_through_the_native_checkpoint(name, tmp_path):
    model = build(name)
    model.train()
    with torch.no_grad():  # move BatchNorm statistics away from their initial values
        model(torch.randn(1, model.audio_channels, model.segment))
    model.eval()
    path = tmp_path / "m.safetensors"
    checkpoints.save_checkpoint(path, model, {"note": "test"})
    loaded = checkpoints.load_model(str(path))
    assert loaded.architecture == name
    assert loaded.model.config == model.config
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    mix = torch.randn(1, model.audio_channels, 5000) * 0.1
    with torch.no_grad():
        np.testing.assert_array_equal(model(mix).numpy(), loaded.model(mix).numpy())
