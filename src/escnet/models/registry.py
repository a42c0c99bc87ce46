"""One registry of models: ``create_model(name, config)`` is the one way to build one.

Every model maps log-mel features ``(batch, n_mels, frames)`` and optional valid frame counts
``(batch,)`` to logits ``(batch, num_classes)``; sizes come from the config, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from escnet.config import TaskConfig
from escnet.errors import ConfigError

ModelFactory = Callable[[TaskConfig], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class or function decorator: make ``name`` buildable by :func:`create_model`."""

    def add(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, config: TaskConfig) -> nn.Module:
    """Build the backbone ``name`` for ``config`` (features in, logits out)."""
    if name not in _REGISTRY:
        raise ConfigError(f"setting model={name!r}: unknown model; choose from {', '.join(list_models())}")
    return _REGISTRY[name](config)
