"""The seed separators' embedded weights: `-m complex-mask` and `-m ibm-cnn` work on a fresh
install, are listed by `sepcli models`, and separate real music (when the previews are here)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import sepcli
from models.complex_mask import ComplexMaskUNet
from models.ibm_cnn import IBMCNN
from sepcli import checkpoints
from tests.conftest import MUSDB_PREVIEWS

THREE_PREVIEWS = ["AM Contra - Heart Peripheral", "BKS - Bulldozer", "Buitraker - Revo X"]


def test_every_seed_separator_has_embedded_weights_that_sepcli_models_lists():
    cm = checkpoints.load_model("complex-mask")
    assert isinstance(cm.model, ComplexMaskUNet) and cm.model.config.mask == "complex"
    assert list(cm.model.sources) == ["vocals", "drums", "bass", "other"]
    ibm = checkpoints.load_model("ibm-cnn")
    assert isinstance(ibm.model, IBMCNN) and ibm.model.config.stage == "ibm"
    assert list(ibm.model.sources) == ["vocals", "accompaniment"] and ibm.model.sample_rate == 22050
    for loaded in (cm, ibm):
        provenance = loaded.metadata["provenance"]
        assert provenance["steps"] >= 800 and "musdb" in provenance["data"]
    listing = subprocess.run([sys.executable, "-m", "sepcli", "models"], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    for name in ("default", "complex-mask", "ibm-cnn", "melody"):
        assert f"│ {name} " in listing.stdout, listing.stdout  # a row of the checkpoints table
    card = subprocess.run([sys.executable, "-m", "sepcli", "info", "ibm-cnn"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert card.returncode == 0 and card.stdout.startswith("# Model card: `ibm-cnn`")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b) + 1e-12))


@pytest.mark.slow
@pytest.mark.skipif(not MUSDB_PREVIEWS.exists(), reason="MUSDB previews absent")
@pytest.mark.parametrize(
    "name, floors",
    [
        # measured on these 3 previews (global SDR, dB): drums 2.28, bass 0.72, other 0.94;
        # vocals 0.59, and their cosine with the true vocals 0.146 above the mixture's
        ("complex-mask", {"drums": 1.5, "bass": 0.3, "other": 0.5}),
        # vocals only (the accompaniment is mostly the mixture); cosine gain measured 0.141
        ("ibm-cnn", {}),
    ],
)
def test_the_embedded_seed_separators_separate_real_music(name, floors):
    """The vocal estimate must be more like the true vocals than the mixture is (a model that
    passes the mix through, or returns silence, gains nothing), and the 4-stem model's other
    stems must score well above the mixture's -4 to -7 dB."""
    import musdb

    from eval.metrics import global_sdr

    separator = sepcli.load(name)
    tracks = [t for t in musdb.DB(root=str(MUSDB_PREVIEWS), subsets="test")
              if t.name in THREE_PREVIEWS]  # fmt: skip
    gains, scores = [], {stem: [] for stem in floors}
    for track in tracks:
        stems = {s: track.targets[s].audio for s in ("vocals", "drums", "bass", "other")}
        mix = sum(stems.values())
        estimates = separator.separate(mix.T.astype(np.float32), track.rate)
        assert all(e.shape == mix.T.shape for e in estimates.values())  # sample-exact length
        gains.append(_cosine(estimates["vocals"].T, stems["vocals"])
                     - _cosine(mix, stems["vocals"]))  # fmt: skip
        for stem in floors:
            scores[stem].append(global_sdr(stems[stem], estimates[stem].T))
    assert len(tracks) == 3 and np.mean(gains) > 0.05, gains
    means = {stem: float(np.mean(v)) for stem, v in scores.items()}
    assert all(means[stem] > floor for stem, floor in floors.items()), means
