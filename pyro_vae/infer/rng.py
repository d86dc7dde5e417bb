"""The torch random number streams a computation draws from, saved and restored as one state."""

from __future__ import annotations

import torch


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The torch RNG states that training draws from (CPU, and the CUDA device if used)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
