"""Torch devices and batches on them (CPU, or CUDA with bf16 autocast)."""

from __future__ import annotations

from ..core.errors import RetrodbError


def resolve_device(device: str):
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise RetrodbError(f"--device {device}: use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RetrodbError(f"--device {device}: CUDA is not available on this machine; "
                           "use --device cpu")
    return torch.device(device)


def autocast_for(device):
    """bf16 autocast on CUDA; full fp32 on the CPU."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def to_torch(batch, device) -> dict:
    """A `sequences.Batch` as the model's keyword arguments on `device`."""
    import torch

    t = {"idx": torch.from_numpy(batch.tokens), "targets": torch.from_numpy(batch.targets)}
    if batch.neighbours is not None:
        t["neighbours"] = torch.from_numpy(batch.neighbours)
        t["neighbour_mask"] = torch.from_numpy(batch.neighbour_mask)
    return {k: v.to(device, non_blocking=True) for k, v in t.items()}
