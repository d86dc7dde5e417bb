"""A Pyro optimizer that steps every parameter with ONE torch optimizer.

Pyro's :class:`~pyro.optim.PyroOptim` creates one ``torch.optim.Adam`` per parameter tensor and
steps them one by one; for a VAE's dozen tensors that is a dozen optimizer calls per step (on a
GPU, a dozen sets of kernel launches). Adam is elementwise, so one optimizer over all tensors
computes exactly the same update; on CUDA it uses the fused kernel.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim


class JointAdam(PyroOptim):
    """``pyro.optim.Adam`` semantics, one ``torch.optim.Adam`` for all parameters.

    Parameters
    ----------
    optim_args : dict
        Keyword arguments of ``torch.optim.Adam`` (``lr``, ``betas``, ...).
    clip_norm : float, optional
        Before each step, scale the gradients so that their total norm (over every parameter)
        is at most this (``torch.nn.utils.clip_grad_norm_``, on the device: no host sync).
    """

    def __init__(self, optim_args: dict[str, Any], clip_norm: float | None = None):
        super().__init__(torch.optim.Adam, optim_args)
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        self.clip_norm = clip_norm
        self.optimizer: torch.optim.Adam | None = None
        self.names: list[str] = []
        self._pending: dict[str, Any] | None = None

    def bind(self, params) -> torch.optim.Adam:
        """The torch optimizer over ``params`` (tensors of Pyro's param store), made now rather
        than at the first step, for what must hold it from the start (a learning-rate
        scheduler). The first step must then give the same parameters."""
        if self.optimizer is None:
            self._create(list(params))
        return self.optimizer

    def _create(self, params: list) -> None:
        store = pyro.get_param_store()
        named = sorted((store.param_name(p), p) for p in params)
        self.names = [name for name, _ in named]
        fused = True if all(p.is_cuda for _, p in named) else None
        self.optimizer = torch.optim.Adam([p for _, p in named], **self.pt_optim_args, fused=fused)
        if self._pending is not None:
            self._load(self._pending)
            self._pending = None

    def __call__(self, params, *args, **kwargs) -> None:
        store = pyro.get_param_store()
        params = list(params)
        if self.optimizer is None:
            self._create(params)
        else:
            known = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
            new = sorted((store.param_name(p), p) for p in params if id(p) not in known)
            if new:
                self.optimizer.add_param_group({"params": [p for _, p in new]})
                self.names += [name for name, _ in new]
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]],
                self.clip_norm,
            )
        self.optimizer.step()

    def get_state(self) -> dict[str, Any]:
        if self.optimizer is None:
            return {} if self._pending is None else self._pending
        return {"names": list(self.names), "optimizer": self.optimizer.state_dict()}

    def set_state(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.optimizer is None:
            self._pending = state_dict
        else:
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("names") != self.names:
            raise ValueError(
                "optimizer state is for parameters "
                f"{state.get('names')}, but this model has {self.names}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
