"""Which torch devices a run may use: `--device cpu`, `cuda`, `cuda:0,cuda:2` or `auto`.

Shards of a capture are spread over the devices round-robin, one model copy per shard, so a machine with several GPUs
captures on all of them at once.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device request that this machine cannot serve; the message says what to use instead."""


def resolve_devices(spec: str) -> tuple[str, ...]:
    """`spec` -> device names torch accepts. "auto": every visible GPU, else the CPU; "cuda": every visible GPU."""
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = tuple(f"cuda:{i}" for i in range(n_gpus))
    spec = spec.strip().lower()
    if spec == "auto":
        return gpus or ("cpu",)
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part == "cpu":
            out.append("cpu")
        elif part == "cuda" or part.startswith("cuda:"):
            if not gpus:
                raise DeviceError(f"--device {part}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                                  f"use --device cpu, or install a CUDA build of torch")
            if part == "cuda":
                out.extend(gpus)
                continue
            index = part.removeprefix("cuda:")
            if not index.isdigit() or int(index) >= n_gpus:
                raise DeviceError(f"--device {part}: torch sees {n_gpus} GPU(s), cuda:0 to cuda:{n_gpus - 1}; "
                                  f"name one of them, or use --device auto")
            out.append(f"cuda:{int(index)}")
        else:
            raise DeviceError(f"--device {part!r} is not a device; use cpu, cuda, cuda:N (comma-separated) or auto")
    return tuple(dict.fromkeys(out))


def one_device(spec: str) -> str:
    """The first device of `resolve_devices(spec)`: where one unit of work runs ("cpu", "cuda:0", ...). A concrete
    name passes through unchanged, so a task may resolve a spec that was resolved already."""
    return resolve_devices(spec)[0]


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights sit (its first parameter's device; the CPU for a module without parameters). Tensors a
    stage creates to meet the model go there; TransformerLens only moves the tokens of a forward pass itself."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def sae_device(sae) -> torch.device:
    """Where an SAE computes: its `device` (SAELens SAEs and `LoadedSAE` name one), else its W_dec's, else the CPU
    (an SAE-like object with neither)."""
    dev = getattr(sae, "device", None)
    if isinstance(dev, str | torch.device):
        return torch.device(dev)
    w = getattr(sae, "W_dec", None)
    return w.device if isinstance(w, torch.Tensor) else torch.device("cpu")
