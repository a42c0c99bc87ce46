"""Loading pretrained weights: from a local file, or downloaded (with a checksum) into the cache."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from escnet.cards import PretrainedCard, WeightsFile
from escnet.data.download import download, sha256_of, url_problem
from escnet.errors import ConfigError, EscnetError


def load_pretrained(model: nn.Module, spec: str, sha256: str, cache: Path,
                    card: PretrainedCard | None = None) -> None:
    """Load the weights ``spec`` (a path, a URL, or the name of ``card``) into ``model`` through
    its ``load_pretrained(state, source)`` method; a model with an AudioSet head gets the names
    of its outputs (``tag_names``) from its ``tag_file()``."""
    if not hasattr(model, "load_pretrained"):
        raise ConfigError(f"setting model.pretrained={spec!r}: {type(model).__name__} cannot load "
                          "pretrained weights")
    path = resolve_weights(spec, sha256, cache, card.weights if card else None)
    model.load_pretrained(read_state_dict(path), str(path))
    tags = model.tag_file() if hasattr(model, "tag_file") else None
    if tags is not None:
        model.tag_names = read_tag_names(resolve_weights(tags.url, "", cache, tags))


def read_tag_names(path: Path) -> list[str]:
    """The ``display_name`` column of an AudioSet ``class_labels_indices.csv``."""
    with path.open(newline="", encoding="utf-8") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


def weights_folder() -> Path | None:
    """``$ESCNET_WEIGHTS``: a folder of weight files under their official names, looked in before
    any download (offline machines, CI)."""
    folder = os.environ.get("ESCNET_WEIGHTS")
    if not folder:
        return None
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"ESCNET_WEIGHTS={folder}: a file, not a folder; set it to the folder that "
                          "holds weight files under their official names")
    return path


def resolve_weights(spec: str, sha256: str, cache: Path, weights: WeightsFile | None = None) -> Path:
    """The local file for ``spec``: a path, a URL, or a name whose published file is ``weights``
    (a pretrained card's, :mod:`escnet.cards`).

    A name or URL is looked for under its file name (:attr:`WeightsFile.name`, never a path) in
    ``$ESCNET_WEIGHTS``, then in ``cache/weights/``, then downloaded there. Every file that
    stands for a name or URL is verified against the digest escnet pins for the name, or the
    one the user gives (``sha256``, ``model.pretrained_sha256``; for a pinned name it must agree);
    a URL with neither is refused before anything is fetched, as is a file whose digest differs.
    Nothing in the URL itself counts as a digest: whoever wrote it chose it.
    """
    weights = weights or WeightsFile(spec)
    if not weights.url.startswith(("http://", "https://")):
        path = Path(spec).expanduser()
        if path.exists() and not path.is_file():  # a folder, a pipe, a device: not read as weights
            raise ConfigError(f"setting model.pretrained={spec!r}: not a regular file (a folder, a "
                              "pipe or a device); give the weights file itself")
        if not path.is_file():
            raise ConfigError(f"setting model.pretrained={spec!r}: no such file (give a path, a URL "
                              "or the name of a pretrained card: escnet.cards.CARDS)")
        if sha256:
            _verify(path, sha256, spec)
        return path
    if (why := url_problem(weights.url)) is not None:
        raise ConfigError(f"setting model.pretrained={spec!r}: not a URL escnet can fetch ({why})")
    pinned = weights.sha256.lower()
    if pinned and sha256 and not (pinned.startswith(sha256.lower()) or sha256.lower().startswith(pinned)):
        raise ConfigError(f"setting model.pretrained_sha256={sha256}: escnet pins {pinned[:16]}… for "
                          f"model.pretrained={spec}; drop model.pretrained_sha256")
    checksum = max(pinned, sha256.lower(), key=len)
    if not checksum:
        raise ConfigError(f"setting model.pretrained={spec!r}: no digest is published for "
                          f"{weights.name}; set model.pretrained_sha256 to the SHA-256 of the file")
    folder = weights_folder()
    if folder is not None and (folder / weights.name).is_file():
        return _verify(folder / weights.name, checksum, spec)
    try:
        return download(weights.url, cache / "weights" / weights.name, checksum)
    except EscnetError as err:  # offline: say where escnet would have found the file
        raise EscnetError(f"{err} (offline, put {weights.name} in a folder and set ESCNET_WEIGHTS to "
                          "it)") from None


def local_copy(weights: WeightsFile, cache: Path) -> Path | None:
    """Where ``weights`` already is on this machine under its name (``$ESCNET_WEIGHTS``, then
    ``cache/weights/``), not yet verified; ``None`` if nowhere."""
    folder = weights_folder()
    places = ([folder] if folder is not None else []) + [cache / "weights"]
    return next((p / weights.name for p in places if (p / weights.name).is_file()), None)


def _verify(path: Path, sha256: str, spec: str) -> Path:
    if not sha256_of(path).startswith(sha256.lower()):
        raise ConfigError(f"setting model.pretrained={spec!r}: {path} is not the published file "
                          f"(its SHA-256 is not {sha256[:16]}…); delete it or fetch it again")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a checkpoint file: either the dict itself, or under ``"model"`` or
    ``"state_dict"`` (the PANNs and Lightning formats)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        why = ("it holds Python objects beyond tensors, which escnet never unpickles"
               if "not an allowed global" in str(err) or "Weights only load failed" in str(err)
               else "not a PyTorch file")
        raise ConfigError(f"{path}: not loadable PyTorch weights ({why})") from None
    except Exception:  # torch.load on arbitrary bytes raises anything (IndexError, KeyError, ...)
        raise ConfigError(f"{path}: not loadable PyTorch weights (damaged, cut off, or not a "
                          "PyTorch file)") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: holds no state dict")
    return state


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], skip: tuple[str, ...],
                source: str) -> None:
    """:func:`load_matching`, and also refuse tensors in ``state`` that ``model`` does not have
    (outside ``skip``): a checkpoint of another architecture or width fails by name."""
    own = model.state_dict()
    extra = sorted(k for k in state if k not in own and not k.startswith(skip))
    if extra:
        raise ConfigError(f"{source}: its layout does not match this model ({extra[0]} is not one "
                          f"of its tensors, {len(extra)} in all); check the model and its width")
    load_matching(model, state, skip, source)


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
