"""BS-RoFormer: exact against the community code, and every place the Mel model goes, it goes:
detection from the YAML, wrappers, import, info, separate, train."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import models
from models.bs_roformer import BSRoFormer, BSRoFormerConfig
from models.mel_roformer import MelRoFormerConfig
from sepcli import checkpoints
from tests.conftest import SHARED, write_tone
from tests.test_cli_separate import run

BS_SPEC = SHARED / "specs" / "bs_roformer"
FIXTURES = Path(__file__).parent / "fixtures" / "roformer"
needs_spec = pytest.mark.skipif(not BS_SPEC.exists(), reason="shared specs absent")


@needs_spec
def test_matches_the_shared_reference_fixture_through_strict_loading():
    folder = BS_SPEC / "tiny_1stem"
    section = checkpoints.read_yaml(folder / "config.yaml")["model"]
    model = BSRoFormer(BSRoFormerConfig(**section)).eval()
    state = torch.load(folder / "state_dict.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        y = model(torch.from_numpy(np.load(folder / "input.npy")))
    assert y.shape == (1, 1, 2, 88200)
    np.testing.assert_allclose(y.numpy(), np.load(folder / "output.npy"), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["bs_4stem_linear_skip", "bs_mono_depth3", "mel_2stem_depth3"])
def test_matches_reference_made_fixtures_of_other_configs(name):
    """Made by the community code itself (bench/roformer_reference.py fixtures): 4 stems with the
    linear transformer and skip connections; mono, mask depth 3, no zero_dc, a short window;
    and a 2-stem Mel-RoFormer with mask depth 3."""
    spec = json.loads((FIXTURES / f"{name}.json").read_text())
    cls, config_cls = models.ARCHITECTURES[spec["family"]]
    model = cls(config_cls(**spec["config"])).eval()
    model.load_state_dict(load_file(FIXTURES / f"{name}.safetensors"), strict=True)
    arrays = np.load(FIXTURES / f"{name}.npz")
    with torch.no_grad():
        y = model(torch.from_numpy(arrays["input"]))
    np.testing.assert_allclose(y.numpy(), arrays["output"], atol=1e-6, rtol=0)


def _key_dump(path: Path) -> dict[str, tuple[int, ...]]:
    dump = {}
    for line in path.read_text().splitlines():
        key, shape, _ = line.split("\t")
        dump[key] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return dump


MUSDB_192_6 = {"dim": 192, "depth": 6, "stereo": True, "num_stems": 1,
               "time_transformer_depth": 1, "freq_transformer_depth": 1,
               "mask_estimator_depth": 2}  # fmt: skip


@needs_spec
@pytest.mark.parametrize(("dump", "preset"), [
    ("keys_viperx_bs_roformer_ep_317.txt", "bs-roformer-viperx.yaml"),
    ("keys_musdb18_bs_roformer_384_8_2_4stem.txt", "bs-roformer-4stem.yaml"),
    ("keys_musdb18_bs_roformer_192_6.txt", None)])  # fmt: skip
def test_real_configs_have_exactly_the_community_keys_and_shapes(dump, preset):
    if preset is None:
        section = MUSDB_192_6
    else:
        _, config, _ = checkpoints.community_config(checkpoints.PRESETS_DIR / preset)
        section = config.to_dict()
    with torch.device("meta"):
        model = checkpoints.build_model("bs-roformer", section)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _key_dump(BS_SPEC / dump)
    assert list(got) == list(_key_dump(BS_SPEC / dump))  # the community order too


@pytest.mark.parametrize("stems", [1, 2, 3, 6])
@pytest.mark.parametrize("config_cls", [BSRoFormerConfig, MelRoFormerConfig])
def test_a_bare_model_section_builds_for_any_number_of_stems(config_cls, stems):
    config = config_cls(dim=8, depth=1, num_stems=stems, dim_head=8, heads=1)
    assert len(config.sources) == stems
    assert config.sources == (
        ("vocals",) if stems == 1 else tuple(f"stem{i}" for i in range(stems))
    )


def test_freqs_per_bands_must_tile_the_spectrum():
    with pytest.raises(ValueError, match="sum to n_fft/2"):
        BSRoFormerConfig(freqs_per_bands=(2, 3))
    with pytest.raises(ValueError, match="at least two bands"):
        BSRoFormerConfig(freqs_per_bands=(1025,))
    BSRoFormerConfig(sage_attention=True)  # a 2025 kernel switch: accepted, no parameters


def _community_pair(tmp_path: Path, name: str, wrapper: str | None = None, prefix: str = ""):
    """A fixture written as the community ships it: a .ckpt state dict and a YAML."""
    spec = json.loads((FIXTURES / f"{name}.json").read_text())
    state = {prefix + k: v for k, v in load_file(FIXTURES / f"{name}.safetensors").items()}
    ckpt = tmp_path / f"{name}.ckpt"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 1}, ckpt)
    stems = spec["config"]["num_stems"]
    instruments = ["drums", "bass", "other", "vocals"][:stems] if stems > 1 else ["vocals", "other"]
    config = {"audio": {"chunk_size": 8192, "sample_rate": 44100},
              "model": {**spec["config"], "freqs_per_bands": list(spec["config"].get("freqs_per_bands", []))},
              "training": {"instruments": instruments,
                           "target_instrument": "vocals" if stems == 1 else None},
              "inference": {"batch_size": 2, "num_overlap": 2}}  # fmt: skip
    if spec["family"] == "mel-roformer":
        del config["model"]["freqs_per_bands"]
    yaml_path = tmp_path / f"{name}.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump(config))
    return ckpt, yaml_path, spec


@pytest.mark.parametrize("name", ["bs_4stem_linear_skip", "mel_2stem_depth3"])
def test_both_families_separate_from_a_ckpt_and_yaml_with_no_family_flag(name, tmp_path, capsys,
                                                                         monkeypatch):  # fmt: skip
    ckpt, yaml_path, spec = _community_pair(tmp_path, name)
    write_tone(tmp_path / "song.wav", 0.5)
    code, out, err = run(capsys, monkeypatch, "separate", tmp_path / "song.wav", "-m", ckpt,
                         "--config", yaml_path, "-o", tmp_path / "out", "--json")  # fmt: skip
    assert code == 0, err
    (track,) = json.loads(out)["tracks"]
    expected = ["drums", "bass", "other", "vocals"] if spec["family"] == "bs-roformer" else [
        "drums", "bass"]  # fmt: skip
    assert list(track["outputs"]) == expected
    loaded = checkpoints.load_model(str(ckpt), yaml_path)
    assert loaded.architecture == spec["family"]
    assert loaded.inference == {"segment": 8192, "overlap": 0.5, "batch_size": 2}


@pytest.mark.parametrize(("wrapper", "prefix"), [
    ("state", ""), ("state_dict", ""), ("model_state_dict", ""), (None, "module.")])  # fmt: skip
def test_wrappers_and_a_data_parallel_prefix_unwrap(wrapper, prefix, tmp_path):
    ckpt, yaml_path, _ = _community_pair(tmp_path, "bs_mono_depth3", wrapper, prefix)
    loaded = checkpoints.load_model(str(ckpt), yaml_path)
    arrays = np.load(FIXTURES / "bs_mono_depth3.npz")
    with torch.no_grad():
        y = loaded.model(torch.from_numpy(arrays["input"]))
    np.testing.assert_allclose(y.numpy(), arrays["output"], atol=1e-6, rtol=0)


def test_mismatched_keys_are_listed_with_their_shapes(tmp_path):
    ckpt, yaml_path, _ = _community_pair(tmp_path, "bs_mono_depth3")
    state = torch.load(ckpt, weights_only=True)
    state["final_norm.gamma"] = torch.ones(5)
    state["layers.0.0.norm.gamma"] = torch.ones(8)  # a Mel-style key
    del state["band_split.to_features.0.1.bias"]
    torch.save(state, ckpt)
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.load_model(str(ckpt), yaml_path)
    message = str(err.value)
    assert "missing key(s), first: band_split.to_features.0.1.bias (8,)" in message
    assert "unexpected key(s), first: layers.0.0.norm.gamma (8,)" in message
    assert "'final_norm.gamma': checkpoint has (5,), the config expects (8,)" in message


@pytest.mark.parametrize(("model_type", "section", "named"), [
    ("mdx23c", {"num_subbands": 4}, "mdx23c"), (None, {"num_subbands": 4}, "mdx23c"),
    ("htdemucs", {}, "htdemucs"), (None, {"band_SR": [0.2]}, "scnet"),
    (None, {"dim": 8}, "no RoFormer family")])  # fmt: skip
def test_other_architectures_get_a_one_line_error_naming_them(model_type, section, named, tmp_path,
                                                              capsys, monkeypatch):  # fmt: skip
    import yaml

    data = {"model": section, "training": {"instruments": ["vocals"]}}
    if model_type:
        data["training"]["model_type"] = model_type
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "m.ckpt").write_bytes(b"")
    write_tone(tmp_path / "a.wav", 0.2)
    code, _, err = run(capsys, monkeypatch, "separate", tmp_path / "a.wav", "-m",
                       tmp_path / "m.ckpt", "--config", tmp_path / "c.yaml")  # fmt: skip
    assert code == 2 and named in err and "bs_roformer" in err, err
    assert len(err.strip().splitlines()) == 1


def test_model_type_picks_the_family_over_the_keys(tmp_path):
    import yaml

    spec = json.loads((FIXTURES / "bs_mono_depth3.json").read_text())
    config = {"model": spec["config"], "training": {"model_type": "bs_roformer"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    family, built, _ = checkpoints.community_config(tmp_path / "c.yaml")
    assert family == "bs-roformer" and built.freqs_per_bands == (4, 12, 48, 65)


def test_import_half_and_info_show_the_family(tmp_path, capsys, monkeypatch):
    ckpt, yaml_path, _ = _community_pair(tmp_path, "bs_4stem_linear_skip")
    native = tmp_path / "bs.safetensors"
    code, _, err = run(capsys, monkeypatch, "models", "import", ckpt, "--config", yaml_path,
                       "-o", native, "--half")  # fmt: skip
    assert code == 0, err
    assert {v.dtype for v in load_file(native).values()} == {torch.float16}
    code, out, err = run(capsys, monkeypatch, "info", native)
    meta = json.loads(out)
    assert meta["architecture"] == "bs-roformer" and meta["parameters"] == 84320
    assert meta["sources"] == ["drums", "bass", "other", "vocals"]
    code, out, err = run(capsys, monkeypatch, "info", ckpt, "--config", yaml_path)
    assert code == 0 and json.loads(out)["architecture"] == "bs-roformer", err


def test_presets_of_the_bs_family_build():
    from sepcli.train import load_preset

    for name, params in (("viperx", 159_758_028), ("4stem", 131_704_100)):
        with torch.device("meta"):
            model = checkpoints.build_model(
                "bs-roformer", load_preset("bs-roformer", name)["model"]
            )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == params
    small = checkpoints.build_model("bs-roformer", load_preset("bs-roformer", "small")["model"])
    assert small.sources == ("vocals", "drums", "bass", "other")
    with torch.no_grad():
        assert small(torch.zeros(1, 2, 4096)).shape == (1, 4, 2, 4096)
