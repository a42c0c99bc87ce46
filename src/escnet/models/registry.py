"""One registry of models: ``create_model(name, config)`` is the one way to build one.

Every model maps log-mel features ``(batch, n_mels, frames)`` and optional valid frame counts
``(batch,)`` to logits ``(batch, num_classes)``; sizes come from the config, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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


@torch.no_grad()
def count_macs(model: nn.Module, config: TaskConfig) -> int:
    """Multiply-accumulates of one forward pass over one clip ``(1, n_mels, length)``.

    Convolutions, linear layers and attention are counted by torch's ``FlopCounterMode``; it
    does not see inside GRU/LSTM kernels, so those are added from their sizes
    (gates × hidden × (input + hidden) per step, layer and direction).
    """
    rnn_macs = 0

    def count_rnn(module: nn.RNNBase, inputs: tuple, _output) -> None:
        nonlocal rnn_macs
        x = inputs[0]
        steps = x.data.shape[0] if isinstance(x, nn.utils.rnn.PackedSequence) else x.shape[1]
        gates = {"GRU": 3, "LSTM": 4}.get(module.mode, 1)
        dirs = 2 if module.bidirectional else 1
        for layer in range(module.num_layers):
            width = module.input_size if layer == 0 else module.hidden_size * dirs
            rnn_macs += steps * dirs * gates * module.hidden_size * (width + module.hidden_size)

    hooks = [m.register_forward_hook(count_rnn) for m in model.modules() if isinstance(m, nn.RNNBase)]
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    # The fused inference kernel of nn.TransformerEncoder is invisible to the counter.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            model.eval()(torch.zeros(1, config.n_mels, config.length))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() // 2 + rnn_macs
