"""Every shipped preset builds and trains; the community presets match the real key layouts."""

import math

import pytest
import torch

from sepcli import checkpoints
from sepcli.train import TrainSettings, load_preset
from tests.conftest import MEL_SPEC

ALL = [(arch, name) for arch, names in checkpoints.list_presets().items() for name in names]


def test_every_architecture_ships_presets():
    presets = checkpoints.list_presets()
    assert set(presets["mel-roformer"]) >= {"small", "medium", "large", "kj", "msst"}
    assert set(presets["complex-mask"]) >= {"small", "medium", "large"}
    assert set(presets["ibm-cnn"]) >= {"small", "medium", "large", "pretrain"}


@pytest.mark.parametrize(("size", "pretrain", "params"),
                         [("small", "pretrain", 3_019_025),
                          ("medium", "pretrain-medium", 9_964_065),
                          ("large", "pretrain-large", 35_638_337)])  # fmt: skip
def test_each_ibm_cnn_size_has_an_autoencoder_stage_it_can_start_from(size, pretrain, params):
    """`--init` from the autoencoder needs the same shapes; the stages must differ."""
    shapes = {}
    for name in (size, pretrain):
        with torch.device("meta"):
            model = checkpoints.build_model("ibm-cnn", load_preset("ibm-cnn", name)["model"])
        shapes[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert model.config.stage == ("pretrain" if name == pretrain else "ibm")
    assert shapes[size] == shapes[pretrain]
    assert sum(math.prod(s) for s in shapes[size].values()) == params


@pytest.mark.parametrize(("arch", "name"), ALL)
def test_preset_builds_a_model_and_valid_training_settings(arch, name):
    preset = load_preset(arch, name)
    settings = TrainSettings.from_dict(preset["training"])
    with torch.device("meta"):  # shapes only: the large presets hold 100s of M parameters
        model = checkpoints.build_model(arch, preset["model"])
    assert settings.segment * model.sample_rate >= 1


@pytest.mark.parametrize(("name", "dump", "params"),
                         [("kj", "keys_kj_vocal_config.txt", 228_203_172),
                          ("msst", "keys_msst_vocal_config.txt", 69_102_916)])  # fmt: skip
def test_community_presets_have_exactly_the_community_keys_and_shapes(name, dump, params):
    path = MEL_SPEC / dump
    if not path.exists():
        pytest.skip("shared Mel-RoFormer spec not present")
    expected = {}
    for line in path.read_text().splitlines():
        key, shape, _ = line.split("\t")
        expected[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    with torch.device("meta"):
        model = checkpoints.build_model("mel-roformer", load_preset("mel-roformer", name)["model"])
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == params


def test_kj_preset_works_as_a_community_config():
    family, config, defaults = checkpoints.community_config(
        checkpoints.PRESETS_DIR / "mel-roformer-kj.yaml"
    )
    assert family == "mel-roformer"
    assert config.sources == ("vocals",) and config.stft_hop_length == 441
    assert config.multi_stft_resolutions_window_sizes == (4096, 2048, 1024, 512, 256)
    assert defaults == {"segment": 352800, "overlap": 0.5, "batch_size": 4}
    assert load_preset("mel-roformer", "kj")["training"]["segment"] == 8.0


def test_an_unknown_architecture_is_named_with_the_known_ones():
    with pytest.raises(
        checkpoints.CheckpointError, match="unknown architecture 'foo'.*mel-roformer"
    ):
        load_preset("foo", None)
    with pytest.raises(checkpoints.CheckpointError, match="no preset 'huge'.*small"):
        load_preset("mel-roformer", "huge")


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    """`sepcli train melody --config low --out low`, run again from where `low/` now is, must
    still mean the shipped preset; a path to a folder is refused in one line."""
    from sepcli.melody_train import load_preset as load_melody_preset

    monkeypatch.chdir(tmp_path)
    (tmp_path / "small").mkdir()
    (tmp_path / "low").mkdir()
    shipped = checkpoints.PRESETS_DIR / "mel-roformer-small.yaml"
    assert load_preset("mel-roformer", "small") == load_preset("mel-roformer", shipped)
    assert load_melody_preset("low")[1]["pitch_shift_down"] == 6.0
    with pytest.raises(checkpoints.CheckpointError, match=r"config file .*low is a folder"):
        load_melody_preset(str(tmp_path / "low"))
