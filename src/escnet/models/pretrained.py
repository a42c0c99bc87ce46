"""Loading pretrained weights: from a local file, or downloaded (with a checksum) into the cache."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from escnet.data.download import download
from escnet.errors import ConfigError


def load_pretrained(model: nn.Module, spec: str, sha256: str, cache: Path) -> None:
    """Load the weights ``spec`` (a path, a URL, or a name the model knows) into ``model``
    through its ``load_pretrained(state, source)`` method."""
    if not hasattr(model, "load_pretrained"):
        raise ConfigError(f"setting model.pretrained={spec!r}: {type(model).__name__} cannot load "
                          "pretrained weights")
    known = model.known_weights() if hasattr(model, "known_weights") else {}
    path = resolve_weights(spec, sha256, known, cache)
    model.load_pretrained(read_state_dict(path), str(path))


def resolve_weights(spec: str, sha256: str, known: dict[str, str], cache: Path) -> Path:
    """The local file for ``spec``: a path, a URL, or a name from ``known`` (name → URL).
    Downloads go to ``cache/weights/`` and are verified against ``sha256``, or against the hash
    prefix torchvision puts in its file names (``vgg19-dcbb9e9d.pth``); a URL with neither is
    refused."""
    url = known.get(spec, spec)
    if not url.startswith(("http://", "https://")):
        path = Path(spec).expanduser()
        if not path.is_file():
            names = f"; or one of: {', '.join(known)}" if known else ""
            raise ConfigError(f"setting model.pretrained={spec!r}: no such file (give a path or a "
                              f"URL{names})")
        return path
    name = url.rsplit("/", 1)[-1]
    prefix = re.search(r"-([0-9a-f]{8,})\.", name)
    checksum = sha256 or (prefix.group(1) if prefix else "")
    if not checksum:
        raise ConfigError(f"setting model.pretrained={spec!r}: downloads need a checksum; set "
                          "model.pretrained_sha256")
    return download(url, cache / "weights" / name, checksum)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: either the dict itself, or under ``"model"`` or
    ``"state_dict"`` (the PANNs and Lightning formats)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{path}: not a loadable PyTorch weights file ({reason})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: holds no state dict")
    return state


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...],
                  source: str) -> None:
    """Load every tensor of ``model`` from ``state`` except those whose names start with
    ``skip`` (the class-specific head); anything else missing or of another shape is an error."""
    own = model.state_dict()
    wanted = {k for k in own if not k.startswith(skip)}
    missing = sorted(k for k in wanted if k not in state)
    wrong = sorted(k for k in wanted if k in state and state[k].shape != own[k].shape)
    if missing or wrong:
        detail = (f"missing {missing[0]}" if missing
                  else f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}")
        raise ConfigError(f"{source}: its layout does not match this model ({detail}, "
                          f"{len(missing) + len(wrong)} tensor(s) in all); check the model settings")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
