"""CUDA kernels against the CPU path on random inputs. Skipped on machines without a GPU (CI has none); run
tools/gpu_check.sh on a GPU machine."""

import numpy as np
import pytest

import pydarknet
from pydarknet import _core
from pydarknet.graph import ACTIVATIONS, CHANNEL_ACTIVATIONS

needs_gpu = pytest.mark.skipif(_core.cuda_device_count() == 0, reason="no CUDA GPU on this machine")


def nmse(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want ** 2), 1e-30))


def test_cuda_is_reported_consistently():
    count = _core.cuda_device_count()
    assert count >= 0
    if not _core.built_with_cuda:
        assert count == 0


def test_cuda_device_request_without_gpu_is_a_clear_error():
    if _core.cuda_device_count() > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(pydarknet.DeviceError, match="no CUDA GPU"):
        from pydarknet.network import _check_device
        _check_device("cuda")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("name", [a for a in ACTIVATIONS if a not in CHANNEL_ACTIVATIONS])
@pytest.mark.parametrize("n", [1, 1000, 65537])
def test_activation_kernel_matches_cpu(name, n):
    rng = np.random.default_rng(n)
    values = np.concatenate([rng.normal(0, 3, n), rng.uniform(-30, 30, n)]).astype(np.float32)
    code = ACTIVATIONS.index(name)
    gpu = np.array(_core.cuda_activate(values.tolist(), code), np.float32)
    cpu = np.array(_core.cpu_activate(values.tolist(), code), np.float32)
    assert not np.isnan(gpu).any()
    assert nmse(gpu, cpu) <= 1e-7
