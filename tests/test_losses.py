"""The framewise SDR training objective (`sepcli train --loss sdr`)."""

import numpy as np
import pytest
import torch

from eval.metrics import global_sdr
from sepcli import checkpoints
from sepcli.losses import framewise_sdr_loss
from sepcli.train import LossForward, TrainSettings
from tests.test_train import TINY, tiny_case


def noisy(signal: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(signal.shape, generator=generator, dtype=torch.float64)
    noise *= (signal.square().sum() / noise.square().sum() / 10 ** (snr_db / 10)).sqrt()
    return signal + noise


def test_the_loss_is_minus_the_mean_sdr_of_the_frames_with_a_reference():
    g = torch.Generator().manual_seed(0)
    frame = 1000
    target = torch.randn(1, 2, 2, 3 * frame, generator=g, dtype=torch.float64) * 0.1
    target[0, 1, :, 2 * frame :] = 0  # stem 2's last frame is silent: museval skips it too
    estimate = torch.empty_like(target)
    snrs = {(0, 0): 20.0, (0, 1): 10.0, (0, 2): 5.0, (1, 0): -3.0, (1, 1): 0.0}
    for (stem, k), snr in snrs.items():
        piece = (0, stem, slice(None), slice(k * frame, (k + 1) * frame))
        estimate[piece] = noisy(target[piece], snr, g)
    estimate[0, 1, :, 2 * frame :] = 0.5  # whatever leaks into a silent frame is not scored

    loss = framewise_sdr_loss(estimate, target, frame=frame)
    assert loss.item() == pytest.approx(-np.mean(list(snrs.values())), abs=1e-6)
    # One frame per stem is the global SDR that `sepcli evaluate` reports.
    whole = framewise_sdr_loss(estimate[:, :1], target[:, :1], frame=10 * frame)
    assert whole.item() == pytest.approx(
        -global_sdr(target[0, 0].numpy(), estimate[0, 0].numpy()), abs=1e-4
    )


def test_training_on_it_raises_the_sdr_of_a_tiny_case():
    torch.manual_seed(0)
    model = checkpoints.build_model("mel-roformer", TINY)
    objective = LossForward(model, "sdr")
    mix, targets = tiny_case()
    with torch.no_grad():
        start = model(mix)[0].numpy()
    # Half a second is one frame: the loss starts at minus the mean global SDR of the two stems.
    start_sdr = np.mean([global_sdr(targets[0, i].numpy(), start[i]) for i in range(2)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = objective(mix, targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(-start_sdr, abs=1e-3)
    assert losses[-1] < losses[0] - 6  # dB


def test_an_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="unknown loss 'l2'.*model, sdr"):
        TrainSettings(loss="l2")
