"""GPU slots: which device ids (and CPUs) each concurrently running job gets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    """What one running job may use: GPU ids for ``CUDA_VISIBLE_DEVICES`` and a CPU set."""

    gpus: tuple[str, ...]
    cpus: tuple[int, ...] = ()

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.gpus)


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: its ``CUDA_VISIBLE_DEVICES`` if set, else every GPU."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch  # only here: Hydra imports every plugin at start-up, and torch takes seconds

    # torch counts through NVML where it can, without creating a CUDA context in this process.
    return [str(i) for i in range(torch.cuda.device_count())]


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def make_slots(devices: Sequence | None, gpus_per_job: int, pin_cpus: bool = True) -> list[Slot]:
    """Disjoint slots of ``gpus_per_job`` ids each from ``devices`` (``None``: all visible GPUs);
    with ``pin_cpus`` each slot also gets an equal share of this process's CPUs."""
    if not isinstance(gpus_per_job, int) or gpus_per_job < 1:
        raise ValueError(f"hydra.launcher.gpus_per_job={gpus_per_job!r} must be a positive integer")
    if devices is None:
        ids = visible_gpus()
        if not ids:
            raise ValueError("hydra.launcher.devices is null and this process sees no GPU: list the ids "
                             "(e.g. hydra.launcher.devices=[0,1]) or use the basic launcher")
    elif isinstance(devices, (str, int)):
        raise ValueError(f"hydra.launcher.devices={devices!r} must be a list of GPU ids, e.g. [0,1,2,3], or null")
    else:
        ids = [str(device) for device in devices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"hydra.launcher.devices={ids} lists a GPU twice")
    if not ids or len(ids) % gpus_per_job:
        raise ValueError(f"hydra.launcher.devices has {len(ids)} ids {ids}, not a non-zero multiple of "
                         f"gpus_per_job={gpus_per_job}")
    groups = [tuple(ids[i:i + gpus_per_job]) for i in range(0, len(ids), gpus_per_job)]
    cpus = available_cpus()
    share = len(cpus) // len(groups)
    if not pin_cpus or share == 0:  # fewer CPUs than slots: leave scheduling to the OS
        return [Slot(gpus) for gpus in groups]
    return [Slot(gpus, tuple(cpus[i * share:(i + 1) * share])) for i, gpus in enumerate(groups)]
