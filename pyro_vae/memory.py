"""The memory free on a device: what the jobs check before work that would not fit.

The estimators never read it (their passes are planned from the data's shape alone,
:mod:`pyro_vae.infer.passes`, so that their numbers do not depend on it); the jobs refuse, before
any work, settings whose kept results would not fit in it.
"""

from __future__ import annotations

import torch


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` in bytes, or None when it cannot be read.

    CUDA: the driver's free memory (``torch.cuda.mem_get_info``); memory cached by PyTorch's
    allocator is reusable, so it counts as free. CPU: ``MemAvailable`` from ``/proc/meminfo``.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + reserved
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None
