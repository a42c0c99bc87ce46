"""One registry of models: ``create_model(name, n_mels=, frames=, num_classes=, **args)`` is the
one way to build one (timm style).

Every model maps log-mel features ``(batch, n_mels, frames)`` and optional valid frame counts
``(batch,)`` to logits ``(batch, num_classes)``. Its constructor takes the input size
(``n_mels``, ``frames`` of one clip) and ``num_classes``, then its own keyword arguments with
defaults and type hints: those are the model's settings (``model.args`` of a config), listed by
:func:`model_arguments` and checked by :func:`resolve_args`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from importlib import import_module
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from escnet.config import coerce
from escnet.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
INPUTS = ("n_mels", "frames", "num_classes")
"""What every model is told about its input and output, outside its own arguments."""
_REGISTRY: dict[str, ModelFactory] = {}
MODEL_MODULES = ("ast", "cnn", "crnn", "kumar", "lstm", "mobilenet", "report_cnns", "vgg")
"""The modules of ``escnet.models`` that hold models: each registers its own when imported, the
first time the registry is asked (a new model's module is added here)."""


def _registered() -> dict[str, ModelFactory]:
    """The registry, with every model module imported."""
    for module in MODEL_MODULES:
        import_module(f"escnet.models.{module}")
    return _REGISTRY


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Class decorator: make ``name`` buildable by :func:`create_model`."""

    def add(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def list_models() -> list[str]:
    return sorted(_registered())


def _factory(name: str) -> ModelFactory:
    if name not in _registered():
        raise ConfigError(f"setting model.name={name!r}: unknown model; choose from "
                          f"{', '.join(list_models())}")
    return _REGISTRY[name]


def model_arguments(name: str) -> dict[str, tuple[Any, Any]]:
    """The own arguments of model ``name``: ``{argument: (type, default)}``."""
    factory = _factory(name)
    hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    return {p.name: (hints.get(p.name, Any), p.default)
            for p in inspect.signature(factory).parameters.values() if p.name not in INPUTS}


def resolve_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` checked against model ``name``'s signature, coerced to its types, with every
    argument not given at its default: what a run's saved config records."""
    accepted = model_arguments(name)
    unknown = [k for k in args if k not in accepted]
    if unknown:
        raise ConfigError(f"setting model.args.{unknown[0]}: model {name} takes no argument "
                          f"{unknown[0]!r}; it accepts {', '.join(accepted) or 'none'}")
    return {k: coerce(f"model.args.{k}", kind, args[k]) if k in args else
            (list(default) if isinstance(default, tuple) else default)
            for k, (kind, default) in accepted.items()}


def create_model(name: str, *, n_mels: int, frames: int, num_classes: int, **args: Any) -> nn.Module:
    """Build the backbone ``name`` (log-mel in, logits out) for clips of ``n_mels`` × ``frames``."""
    return _factory(name)(n_mels=n_mels, frames=frames, num_classes=num_classes,
                          **resolve_args(name, args))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, n_mels: int, frames: int) -> int:
    """Multiply-accumulates of one forward pass over one clip ``(1, n_mels, frames)``.

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
            model.eval()(torch.zeros(1, n_mels, frames))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counter.get_total_flops() // 2 + rnn_macs
