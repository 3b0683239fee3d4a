"""Device requests: which GPUs a run uses, and a clear error for one this machine cannot serve."""

from __future__ import annotations

import pytest
import torch

from sage_core.model.devices import DeviceError, model_device, one_device, resolve_devices, sae_device


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


def test_one_device_is_the_first_of_the_spec_and_a_concrete_name_passes_through(gpus):
    gpus(0)
    assert one_device("auto") == "cpu"
    assert one_device("cpu") == "cpu"
    gpus(3)
    assert one_device("auto") == "cuda:0"
    assert one_device("cuda") == "cuda:0"
    assert one_device("cuda:2,cuda:1") == "cuda:2"
    assert one_device(one_device("cuda:1")) == "cuda:1"  # a task may resolve what a flow resolved already


@pytest.mark.parametrize("n, spec", [(0, "cuda"), (2, "cuda:5"), (2, "tpu")])
def test_one_device_refuses_what_resolve_devices_refuses(gpus, n, spec):
    gpus(n)
    with pytest.raises(DeviceError):
        one_device(spec)


def test_model_device_is_where_the_weights_are():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU


def test_sae_device_is_what_the_sae_names_else_its_decoders():
    class Named:
        device = "meta"

    class Plain:
        W_dec = torch.zeros(2, 2, device="meta")

    assert sae_device(Named()) == torch.device("meta")
    assert sae_device(Plain()) == torch.device("meta")
    assert sae_device(object()) == torch.device("cpu")  # an SAE-like object with neither: the CPU
