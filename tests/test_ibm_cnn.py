"""IBM-CNN: binary masks, the vectorised sliding window, both training stages, learning."""

import pytest
import torch

from sepcli import checkpoints
from tests.test_complex_mask import overfit, synthetic_stems
from tests.test_separators import build


def test_full_spectrogram_pass_equals_the_network_on_unfolded_patches():
    model = build("ibm-cnn").eval()
    features = torch.rand(3, model.config.n_fft // 2 + 1, 25)
    half = model.config.context // 2
    padded = torch.nn.functional.pad(features, (half, half))
    patches = padded.unfold(-1, model.config.context, 1)  # (b, f, n, context)
    patches = patches.permute(0, 2, 3, 1).reshape(-1, model.config.context, features.shape[1])
    with torch.no_grad():
        per_patch = model.patch_logits(patches).reshape(3, 25, -1).transpose(1, 2)
        whole = model.logits(features)
    torch.testing.assert_close(whole, per_patch, atol=1e-5, rtol=1e-5)


def test_authors_config_shapes():
    model = checkpoints.build_model("ibm-cnn", {})
    assert model.sources == ("vocals", "accompaniment") and model.sample_rate == 22050
    assert model.config.context == 9
    patches = torch.rand(2, 9, 2049)
    with torch.no_grad():
        assert model.patch_logits(patches).shape == (2, 2049)
    assert model.dense[0].in_features == 32 * 12  # 2049 -> 4 valid 1x12 convs, two 1x12 pools


def test_mask_is_binary_and_the_two_sources_sum_to_the_mixture():
    mix = torch.randn(2, 2, 8000) * 0.1
    spec = torch.stft(mix.reshape(4, -1), 1024, 128, 512, torch.hann_window(512),
                      return_complex=True)  # fmt: skip
    with torch.no_grad():
        soft = torch.sigmoid(build("ibm-cnn").logits(model_features := spec.abs().log1p()))
        # Same seed, same weights: a threshold at the median calls about half the bins voice.
        model = build("ibm-cnn", threshold=float(soft.median())).eval()
        mask = model.vocal_mask(spec)
        assert torch.equal(
            mask, (torch.sigmoid(model.logits(model_features)) > soft.median()).float()
        )
        out = model(mix)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < mask.mean() < 1
    torch.testing.assert_close(out.sum(dim=1), mix, atol=1e-5, rtol=0)


def test_threshold_decides_how_much_is_called_voice():
    low = build("ibm-cnn", threshold=0.15).eval()
    high = build("ibm-cnn", threshold=0.85).eval()
    spec = torch.randn(1, 513, 30, dtype=torch.complex64)
    with torch.no_grad():
        assert low.vocal_mask(spec).mean() > high.vocal_mask(spec).mean()


def test_bad_stage_or_sources_are_refused_naming_the_key():
    with pytest.raises(checkpoints.CheckpointError, match="'stage'"):
        checkpoints.build_model("ibm-cnn", {"stage": "finetune"})
    with pytest.raises(checkpoints.CheckpointError, match="'sources'"):
        checkpoints.build_model("ibm-cnn", {"sources": ["vocals", "drums"]})


def train_steps(model, mix, stems, steps: int, lr: float = 1e-3) -> tuple[float, float]:
    """Loss before and after `steps` Adam steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():
        first = float(model.loss(mix, stems))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model.loss(mix, stems)
        loss.backward()
        optimizer.step()
    return first, float(loss.detach())


def test_both_training_stages_learn_and_the_second_starts_from_the_first():
    stems = synthetic_stems(8000, 1.0)  # vocals, bass
    mix = stems.sum(dim=1)
    pretrain = build("ibm-cnn", stage="pretrain")
    first, last = train_steps(pretrain, mix, stems, 30)
    assert last < first - 0.05, (first, last)  # measured 0.69 -> 0.59

    model = build("ibm-cnn")
    model.load_state_dict(pretrain.state_dict())  # strict: the same network, another loss
    first, last = train_steps(model, mix, stems, 100)
    assert last < first - 0.2, (first, last)  # measured 1.04 -> 0.67


def test_sdr_rises_when_overfitting_a_tiny_mixture():
    # Measured: -3.2 -> 30.5 dB after 100 steps (the oracle IBM here scores 31.1 dB).
    stems = synthetic_stems(8000, 1.0)
    model = build("ibm-cnn")
    torch.manual_seed(1)
    before, after = overfit(model, stems, steps=100, lr=1e-3)
    assert after > before + 15.0, (before, after)
