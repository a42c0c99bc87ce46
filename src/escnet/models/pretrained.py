"""Loading pretrained weights: from a local file, or downloaded (with a checksum) into the cache."""

from __future__ import annotations

import csv
import hashlib
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import torch
from torch import nn

from escnet.data.download import download, sha256_of
from escnet.errors import ConfigError, EscnetError

_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")
"""A file name escnet accepts from a URL: letters, digits and ``._+=-``, not starting with a
dot, at most 128 characters: never a path, a hidden file or ``..``."""


def download_name(url: str) -> str:
    """The name a download of ``url`` is kept under: the URL's last path segment,
    percent-decoded (``Cnn14_mAP%3D0.431.pth`` → ``Cnn14_mAP=0.431.pth``), where that is a
    plain file name (:data:`_PLAIN_NAME`); else ``weights-`` and 16 hex digits of the URL's
    SHA-256. Whatever the URL holds (``..``, ``%2F``, ``%5C``, NUL), the name has no separator."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if _PLAIN_NAME.fullmatch(name):
        return name
    return "weights-" + hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WeightsFile:
    """Published weights: where they are, and the SHA-256 escnet pins for them (empty where no
    digest is published; a prefix of at least 8 hex digits where only that is, as torchvision
    publishes)."""

    url: str
    sha256: str = ""
    file_name: str = ""
    """The name escnet keeps it under, where the publisher's (the URL's last part) is too
    generic to find in ``$ESCNET_WEIGHTS``."""

    @property
    def name(self) -> str:
        """The file's name in ``$ESCNET_WEIGHTS`` and the cache: :attr:`file_name`, else
        :func:`download_name` of the URL (``Cnn14_mAP=0.431.pth``)."""
        return self.file_name or download_name(self.url)


def load_pretrained(model: nn.Module, spec: str, sha256: str, cache: Path) -> None:
    """Load the weights ``spec`` (a path, a URL, or a name the model knows) into ``model``
    through its ``load_pretrained(state, source)`` method."""
    if not hasattr(model, "load_pretrained"):
        raise ConfigError(f"setting model.pretrained={spec!r}: {type(model).__name__} cannot load "
                          "pretrained weights")
    known = model.known_weights() if hasattr(model, "known_weights") else {}
    path = resolve_weights(spec, sha256, known, cache)
    model.load_pretrained(read_state_dict(path), str(path))
    tags = model.tag_file() if hasattr(model, "tag_file") else None
    if tags is not None:
        model.tag_names = read_tag_names(resolve_weights(tags.url, "", {tags.url: tags}, cache))


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


def resolve_weights(spec: str, sha256: str, known: dict[str, WeightsFile], cache: Path) -> Path:
    """The local file for ``spec``: a path, a URL, or a name from ``known``.

    A name or URL is looked for under its file name (:attr:`WeightsFile.name`, never a path) in
    ``$ESCNET_WEIGHTS``, then in ``cache/weights/``, then downloaded there. Every file that
    stands for a name or URL is verified against the digest escnet pins for the name, or the
    one the user gives (``sha256``, ``model.pretrained_sha256``; for a pinned name it must agree);
    a URL with neither is refused before anything is fetched, as is a file whose digest differs.
    Nothing in the URL itself counts as a digest: whoever wrote it chose it.
    """
    weights = known.get(spec) or WeightsFile(spec)
    if not weights.url.startswith(("http://", "https://")):
        path = Path(spec).expanduser()
        if not path.is_file():
            names = f"; or one of: {', '.join(known)}" if known else ""
            raise ConfigError(f"setting model.pretrained={spec!r}: no such file (give a path or a "
                              f"URL{names})")
        if sha256:
            _verify(path, sha256, spec)
        return path
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
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{path}: not a loadable PyTorch weights file ({reason})") from None
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
