"""The GPU path, checked where it can be on the CPU: reduced precision (autocast bf16, fp16
tensors), out-of-memory errors as each backend raises them, device placement of buffers, and
what --resume loads. Every test runs on the CPU; with CUDA present the device ones run there too.
`bench/gpu_check.sh` runs this file on a GPU machine."""

import contextlib
import json

import numpy as np
import pytest
import torch

import models.roformer as roformer
from models.complex_mask import bounded_complex_mask
from sepcli import checkpoints, engine
from sepcli import train as training
from sepcli.engine import Demixer
from tests.conftest import GainSeparator
from tests.test_separators import SMALL

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
HALF = {"cpu": torch.bfloat16, "cuda": torch.bfloat16}


def _snr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    noise = (reference - estimate).square().sum()
    return float(10 * torch.log10(reference.square().sum() / noise.clamp_min(1e-20)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(SMALL))
def test_every_separator_runs_forward_and_loss_under_bf16_autocast(arch, device):
    """`--precision auto` on CUDA and AMP training run the models under bf16 autocast; the
    complex-mask U-Net built its mask with torch.complex from bf16 tensors, which raises."""
    torch.manual_seed(0)
    model = checkpoints.build_model(arch, SMALL[arch]).to(device).eval()
    mix = (torch.randn(2, 2, model.segment) * 0.1).to(device)
    targets = (torch.randn(2, len(model.sources), 2, model.segment) * 0.05).to(device)
    with torch.no_grad():
        reference = model(mix)
        with torch.autocast(device, dtype=HALF[device]):
            estimate = model(mix)
            loss = model.loss(mix, targets)
    assert estimate.dtype == torch.float32 and estimate.shape == reference.shape
    assert torch.isfinite(estimate).all() and torch.isfinite(loss)
    if model.differentiable_output:  # the IBM-CNN thresholds its masks: no SNR to speak of
        assert _snr(reference, estimate) > 15


def test_the_complex_mask_is_finite_and_exact_for_tiny_fp16_outputs():
    """In fp16, real**2 underflows below 2.4e-4 and the 1e-12 guard rounds to zero: tanh(0)/0."""
    real = torch.tensor([1e-4, -2e-4, 0.0, 3.0], dtype=torch.float16)
    imag = torch.tensor([1e-4, 0.0, 0.0, -4.0], dtype=torch.float16)
    mask = bounded_complex_mask(real, imag)
    assert mask.dtype == torch.complex64 and torch.isfinite(torch.view_as_real(mask)).all()
    expected = bounded_complex_mask(real.float(), imag.float())
    assert torch.equal(mask, expected)
    assert abs(mask[3]) == pytest.approx(np.tanh(5.0), rel=1e-4)  # |O| = 5, bounded below 1


class RaisesUntilBatchOne(GainSeparator):
    """Raises `error` for any batch of more than one chunk, as an exhausted device does."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(gains=(1.0, 0.5), segment=4000)
        self.error = error

    def forward(self, mix):
        if mix.shape[0] > 1:
            raise self.error
        return super().forward(mix)


@pytest.mark.parametrize("message", [
    "MPS backend out of memory (MPS allocated: 17.45 GB, other allocations: 1.20 GB)",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuFFT error: CUFFT_ALLOC_FAILED",
    "CUDA out of memory. Tried to allocate 2.00 GiB"])  # fmt: skip
def test_out_of_memory_in_each_backend_s_words_halves_the_batch(message):
    notes = []
    demixer = Demixer(RaisesUntilBatchOne(RuntimeError(message)), batch_size=4,
                      on_retry=notes.append)  # fmt: skip
    mix = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 20000)).astype(np.float32)
    out = demixer.separate(mix)
    np.testing.assert_allclose(out[0], mix, atol=1e-6)
    assert demixer.batch_size == 1 and any("batch size 1" in n for n in notes)


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    demixer = Demixer(RaisesUntilBatchOne(RuntimeError("shape mismatch")), batch_size=4)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        demixer.separate(np.zeros((2, 20000), np.float32))
    assert not engine.is_out_of_memory(ValueError("out of memory"))


def test_the_mps_cache_is_emptied_too(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.append("mps"))
    engine.empty_cache(torch.device("mps"))
    engine.empty_cache(torch.device("cpu"))
    assert calls == ["mps"]


def test_the_model_is_built_wholly_on_the_device_in_context():
    """A buffer made with torch.from_numpy stayed on the CPU under `with torch.device(...)`."""
    with torch.device("meta"):
        model = checkpoints.build_model("mel-roformer", SMALL["mel-roformer"])
    places = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    assert places == {"meta"}


def test_transformer_runs_are_grouped_on_the_cpu_only(monkeypatch):
    torch.manual_seed(0)
    model = checkpoints.build_model("mel-roformer", SMALL["mel-roformer"]).eval()
    calls = []
    real = roformer.Transformer.layers_forward
    monkeypatch.setattr(roformer, "TOKENS_PER_GROUP", 64)  # several groups even on a short chunk
    monkeypatch.setattr(roformer.Transformer, "layers_forward",
                        lambda self, x: calls.append(x.device.type) or real(self, x))  # fmt: skip
    with torch.inference_mode():
        model.separate_spectrum(torch.zeros(1, 2, 22050))
        cpu_calls = len(calls)
        calls.clear()
        with torch.device("meta"):
            meta_model = checkpoints.build_model("mel-roformer", SMALL["mel-roformer"]).eval()
        # A device that is not the CPU (meta: shapes only; its istft cannot run).
        meta_model.separate_spectrum(torch.zeros(1, 2, 22050, device="meta"))
    transformers = 2 * SMALL["mel-roformer"]["depth"]
    assert len(calls) == transformers < cpu_calls


def test_fused_projection_and_rope_are_cached_until_the_weights_change():
    torch.manual_seed(0)
    model = checkpoints.build_model("mel-roformer", SMALL["mel-roformer"]).eval()
    attention = next(m for m in model.modules() if isinstance(m, roformer.Attention))
    with torch.inference_mode():
        first = attention.fused_projection()
        assert attention.fused_projection() is first
        rotation = attention.rotary_embed.rotation(17, torch.device("cpu"))
        assert attention.rotary_embed.rotation(17, torch.device("cpu")) is rotation
    with torch.no_grad():
        attention.to_qkv.weight.mul_(2)
    with torch.inference_mode():
        second = attention.fused_projection()
    assert second is not first and torch.equal(second[0][:-2], first[0][:-2] * 2)
    # Under autograd the fusion is rebuilt every call, so gradients reach the weights.
    assert attention.fused_projection()[0].requires_grad


def test_rope_on_cos_and_sin_equals_the_complex_rotation():
    """MPS lacks fast complex kernels; there RoPE rotates real (cos, sin) pairs instead."""
    rope = roformer.RotaryEmbedding(8)
    angles = torch.arange(5)[:, None, None].float() * rope.freqs[None, None, :]
    x = torch.randn(2, 5, 3, 8)
    complex_out = roformer.apply_rotation(x, torch.polar(torch.ones_like(angles), angles))
    real_out = roformer.apply_rotation(x, (angles.cos(), angles.sin()))
    torch.testing.assert_close(real_out, complex_out, atol=1e-6, rtol=0)


def test_resume_loads_the_state_onto_the_cpu_and_restores_every_rng(tmp_path, monkeypatch):
    """`torch.load(map_location=cuda)` moved the CPU RNG state onto the GPU, where
    `torch.set_rng_state` refuses it: state.pt is read onto the CPU whatever the device."""
    model = checkpoints.build_model("complex-mask", SMALL["complex-mask"])
    optimizer = torch.optim.AdamW(model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    rng = np.random.default_rng(7)
    rng.random(3)
    torch.manual_seed(11)
    expected_torch = torch.get_rng_state()
    training._save_state(tmp_path / "state.pt", model, optimizer, schedule,
                         training.EMA(model, 0.9), rng.bit_generator.state, 5, 1.0, {"valid": []})  # fmt: skip
    where = []
    real_load = torch.load

    def load(*args, **kwargs):
        where.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    state = training.read_state(tmp_path / "state.pt", "complex-mask")
    assert where == ["cpu"]
    torch.manual_seed(0)
    restored = np.random.default_rng(0)
    training._restore_rng(state, restored, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), expected_torch)
    assert restored.random() == rng.random()


def test_auto_precision_picks_fp16_with_loss_scaling_where_bf16_is_emulated(monkeypatch):
    cuda = torch.device("cuda")
    asked = []

    def bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # a T4: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    assert engine.resolve_precision(cuda, "auto") == "fp16" and asked == [False]
    assert engine.resolve_precision(torch.device("cpu"), "auto") == "fp32"
    assert engine.resolve_precision(cuda, "bf16") == "bf16"
    with pytest.raises(engine.EngineError, match="fp16 is not supported on the CPU"):
        engine.resolve_precision(torch.device("cpu"), "fp16")


class _RecordingLoss(torch.nn.Module):
    """Stands in for the DDP-wrapped loss: records which micro-batches skipped the all-reduce."""

    def __init__(self, model):
        super().__init__()
        self.model, self.synced, self.in_no_sync = model, [], False

    @contextlib.contextmanager
    def no_sync(self):
        self.in_no_sync = True
        yield
        self.in_no_sync = False

    def forward(self, mix, targets, groups=None):
        self.synced.append(not self.in_no_sync)
        return self.model.loss(mix, targets)


def test_gradient_accumulation_all_reduces_on_the_last_micro_batch_only(tmp_path):
    model = checkpoints.build_model("complex-mask", SMALL["complex-mask"])
    settings = training.TrainSettings(batch_size=1, accumulate=4, segment=0.1, steps=1)
    run = training._Run(model, "complex-mask", settings, training._Process(torch.device("cpu")),
                        tmp_path)  # fmt: skip
    run.proc.world = 2  # as under torchrun, with the DDP wrapper's no_sync recorded
    run.compute_loss = _RecordingLoss(model)

    class Batches:
        def next(self):
            mix = torch.randn(1, 2, 4410) * 0.1
            return mix, torch.stack([mix * 0.5] * 4, 1), None, {}

    record = run.optimizer_step(Batches())
    assert run.compute_loss.synced == [False, False, False, True]
    assert isinstance(record["loss"], torch.Tensor)  # read from the device later, in bulk
    assert json.dumps(training._plain(record))


def test_the_gpu_check_script_runs_on_the_cpu_in_reduced_form():
    """bench/gpu_check.sh is what the first session with a GPU runs; this keeps it working."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=root, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "DEV": "cpu", "REDUCED": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout
    for row in ("separate 2 s", "tiny forward", "training steps", "--resume"):
        assert row in table, table
    assert "FAILED" not in table and "losses finite: True" in table
    assert "bitwise equal" in table


def test_auto_picks_bf16_on_a_cpu_only_for_a_measured_model_and_native_bf16(monkeypatch):
    import sepcli.doctor as doctor

    cpu = torch.device("cpu")
    monkeypatch.setattr(doctor, "native_cpu_bf16", lambda: True)
    assert engine.resolve_precision(cpu, "auto", cpu_bf16=True) == "bf16"
    assert engine.resolve_precision(cpu, "auto", cpu_bf16=False) == "fp32"
    monkeypatch.setattr(doctor, "native_cpu_bf16", lambda: False)  # AVX2 only: emulated
    assert engine.resolve_precision(cpu, "auto", cpu_bf16=True) == "fp32"
