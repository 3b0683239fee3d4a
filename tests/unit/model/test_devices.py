"""Device requests: which GPUs a run uses, and a clear error for one this machine cannot serve."""

from __future__ import annotations

import pytest
import torch

from sage_core.model.devices import DeviceError, resolve_devices


@pytest.fixture
def gpus(monkeypatch):
    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


def test_auto_takes_every_gpu_or_the_cpu(gpus):
    gpus(0)
    assert resolve_devices("auto") == ("cpu",)
    gpus(3)
    assert resolve_devices("auto") == ("cuda:0", "cuda:1", "cuda:2")
    assert resolve_devices("cuda") == ("cuda:0", "cuda:1", "cuda:2")


def test_named_devices_are_kept_in_order_once(gpus):
    gpus(4)
    assert resolve_devices("cuda:2, cuda:0,cuda:2") == ("cuda:2", "cuda:0")
    assert resolve_devices("CPU") == ("cpu",)


@pytest.mark.parametrize(
    "n, spec, message",
    [
        (0, "cuda", "torch sees no CUDA GPU here.*use --device cpu"),
        (0, "cuda:0", "torch sees no CUDA GPU here"),
        (2, "cuda:2", "torch sees 2 GPU\\(s\\), cuda:0 to cuda:1"),
        (2, "cuda:x", "torch sees 2 GPU"),
        (2, "tpu", "'tpu' is not a device"),
    ],
)
def test_a_device_this_machine_lacks_fails_with_what_to_use(gpus, n, spec, message):
    gpus(n)
    with pytest.raises(DeviceError, match=message):
        resolve_devices(spec)
