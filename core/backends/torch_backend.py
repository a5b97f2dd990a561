"""The plain backend: the torch model itself, on any device and dtype. The reference for every other."""
from __future__ import annotations

from torch import Tensor

from ..models import KVCache
from .base import Backend


class TorchBackend(Backend):
    name = "torch"

    def step(self, tokens: Tensor, state: KVCache) -> Tensor:
        return self.forward(tokens.view(-1, 1), state)
