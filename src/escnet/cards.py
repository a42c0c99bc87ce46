"""Pretrained cards: one per named weight file, as timm's ``pretrained_cfg``.

A card says where a published weight file is and what it is: its official URL, file name,
SHA-256 (escnet checks every file that stands for the name against it) and size, the model
(registry name and arguments) its tensors fit, the front-end it was trained with (sample rate,
log-mel settings: what the weights expect to hear), its classes and their label file, its
clip length, licence and source. ``model.pretrained=NAME`` (``--pretrained NAME``) sets the
model and the front-end from the card (:func:`escnet.config.load_config`); an explicit setting
that disagrees with it is refused. ``escnet models --pretrained`` lists the cards.

Pure data, no PyTorch: configs, the runtime and the CLI read cards. A new weight file is one
entry in :data:`CARDS` (``_efficientat`` or its like builds the common ones).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

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
    """A published file: where it is, and the SHA-256 escnet pins for it (empty where none is
    published; a prefix of at least 8 hex digits where only that is, as torchvision
    publishes)."""

    url: str
    sha256: str = ""
    file_name: str = ""
    """The name escnet keeps it under, where the publisher's (the URL's last part) is too
    generic to find in ``$ESCNET_WEIGHTS``."""
    size: int | None = None
    """Bytes, where published."""

    @property
    def name(self) -> str:
        """The file's name in ``$ESCNET_WEIGHTS`` and the cache: :attr:`file_name`, else
        :func:`download_name` of the URL (``Cnn14_mAP=0.431.pth``)."""
        return self.file_name or download_name(self.url)


@dataclass(frozen=True)
class PretrainedCard:
    """One named weight file and its input contract."""

    name: str
    """What ``model.pretrained`` calls it (``mn04_as``)."""
    weights: WeightsFile
    model: str
    """The registry model its tensors fit (``escnet models``)."""
    family: str
    """Models whose arguments are alike (``mn04`` and ``mn10``): a card that changes the model
    within its family keeps ``model.args``."""
    source: str
    """The paper and repository the weights come from."""
    license: str
    model_args: dict[str, Any] = field(default_factory=dict)
    """``model.args`` the layout needs (PANNs' CNN10 is width 64)."""
    frontend: dict[str, Any] = field(default_factory=dict)
    """``{"section.key": value}`` of the audio the weights were trained on (empty: an image
    model, any log-mel)."""
    classes: int = 0
    """Outputs of the published head (527 AudioSet classes)."""
    labels: WeightsFile | None = None
    """The names of those outputs, fetched like weights."""
    clip_seconds: float | None = None
    """The clips the weights were trained on (AudioSet: 10 s): windows for tagging and embeddings."""
    audioset_map: float | None = None
    """Published AudioSet mAP."""
    alias: str = ""
    """A name relative to its model (``model.pretrained=audioset`` with ``model.name=cnn14``)."""

    def settings(self) -> dict[str, Any]:
        """What ``model.pretrained=NAME`` sets: ``{"section.key": value}``."""
        args = {f"model.args.{k}": v for k, v in self.model_args.items()}
        return {"model.name": self.model, **args, **self.frontend}


AUDIOSET_LABELS = WeightsFile(
    "http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/class_labels_indices.csv",
    "cdd1049833c4b86127c2773ac0d14a2754b6a6d0d1798002ed5c66e699708429",
    "audioset_class_labels_indices.csv")
"""The 527 AudioSet class names in output order (``index,mid,display_name``; AudioSet
ontology, Google, CC BY 4.0)."""

EFFICIENTAT_FRONTEND = {"data.sample_rate": 32000, "features.frontend": "efficientat",
                        "features.n_fft": 1024, "features.win_length": 800,
                        "features.hop_length": 320, "features.n_mels": 128, "features.f_min": 0.0,
                        "features.f_max": 15000.0, "features.log_floor": 1e-5}
"""EfficientAT's ``AugmentMelSTFT`` in eval mode (upstream's ``models/preprocess.py``)."""
PANNS_FRONTEND = {"data.sample_rate": 32000, "features.frontend": "panns", "features.n_fft": 1024,
                  "features.win_length": 1024, "features.hop_length": 320, "features.n_mels": 64,
                  "features.f_min": 50.0, "features.f_max": 14000.0, "features.log_floor": 1e-10}
"""PANNs' torchlibrosa log-mel (``Cnn14`` and its like, 32 kHz)."""

_EFFICIENTAT = ("F. Schmid, K. Koutini, G. Widmer, Efficient Large-Scale Audio Tagging via "
                "Transformer-to-CNN Knowledge Distillation, ICASSP 2023; github.com/fschmid56/EfficientAT")
_PANNS = ("Q. Kong et al., PANNs: Large-Scale Pretrained Audio Neural Networks for Audio Pattern "
          "Recognition, 2020; zenodo.org/record/3987831")


def _efficientat(name: str, file: str, sha256: str = "", size: int | None = None,
                 audioset_map: float | None = None) -> PretrainedCard:
    """An official EfficientAT AudioSet checkpoint (release v0.0.1)."""
    url = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/" + file
    return PretrainedCard(name, WeightsFile(url, sha256, size=size), name[:4], "efficientat-mn",
                          _EFFICIENTAT, "MIT", frontend=EFFICIENTAT_FRONTEND, classes=527,
                          labels=AUDIOSET_LABELS, clip_seconds=10.0, audioset_map=audioset_map)


def _panns(model: str, file: str, sha256: str = "", size: int | None = None,
           audioset_map: float | None = None) -> PretrainedCard:
    """A PANNs AudioSet checkpoint (Zenodo record 3987831)."""
    url = "https://zenodo.org/record/3987831/files/" + file.replace("=", "%3D")
    return PretrainedCard(f"panns_{model}", WeightsFile(url, sha256, size=size), model, "panns", _PANNS,
                          "MIT", {"width": 64}, PANNS_FRONTEND, 527, AUDIOSET_LABELS, 10.0,
                          audioset_map, alias="audioset")


def _imagenet(model_args: dict[str, Any], url: str, prefix: str) -> PretrainedCard:
    """torchvision's ImageNet VGG19 (an image model: any log-mel; pinned by the SHA-256 prefix
    torchvision publishes in the file name)."""
    name = "vgg19_bn_imagenet" if model_args["batch_norm"] else "vgg19_imagenet"
    return PretrainedCard(name, WeightsFile(url, prefix), "vgg19", "vgg19", "torchvision "
                          "(K. Simonyan, A. Zisserman, 2014)", "BSD-3-Clause", model_args,
                          classes=1000, alias="imagenet")


CARDS: dict[str, PretrainedCard] = {c.name: c for c in (
    _efficientat("mn01_as", "mn01_as_mAP_298.pt", audioset_map=0.298),
    _efficientat("mn02_as", "mn02_as_mAP_378.pt", audioset_map=0.378),
    _efficientat("mn04_as", "mn04_as_mAP_432.pt",
                 "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c", 4_066_513, 0.432),
    _efficientat("mn05_as", "mn05_as_mAP_443.pt",
                 "97f00bb717ce957dbdf60c26d4de8b161dd7c2593fbe6424859fad7e5569fd7f", 5_878_097, 0.443),
    _efficientat("mn10_as", "mn10_as_mAP_471.pt",
                 "0bd7dc2443af498c289a2e739f02ebb515d6aa3fd3ab9db539c86123ae368a4e", 19_708_753, 0.471),
    _efficientat("mn20_as", "mn20_as_mAP_478.pt", audioset_map=0.478),
    _efficientat("mn30_as", "mn30_as_mAP_482.pt", audioset_map=0.482),
    _efficientat("mn40_as", "mn40_as_mAP_484.pt",
                 "09624dca1c53128255c65c5a52ff49ae91bb01fe17f0e13b3c3a0c9f24a8478b", 274_206_417, 0.484),
    _efficientat("mn40_as_ext", "mn40_as_ext_mAP_487.pt", audioset_map=0.487),
    _panns("cnn14", "Cnn14_mAP=0.431.pth",
           "0dc499e40e9761ef5ea061ffc77697697f277f6a960894903df3ada000e34b31", 327_428_481, 0.431),
    _panns("cnn10", "Cnn10_mAP=0.380.pth", audioset_map=0.380),
    _panns("cnn6", "Cnn6_mAP=0.343.pth", audioset_map=0.343),
    _imagenet({"batch_norm": False}, "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "dcbb9e9d"),
    _imagenet({"batch_norm": True}, "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
              "c79401a0"),
)}


def find_card(spec: str, model: str | None = None, args: dict[str, Any] | None = None
              ) -> PretrainedCard | None:
    """The card ``model.pretrained=spec`` names: by its name, or by its alias for ``model``
    (``audioset`` with ``cnn14``: ``panns_cnn14``; ``imagenet`` with ``vgg19``: the card whose
    ``model_args`` agree with ``args``, else the first); ``None`` for a path or URL."""
    if spec in CARDS:
        return CARDS[spec]
    candidates = [c for c in CARDS.values() if c.alias and c.alias == spec and c.model == model]
    agreeing = [c for c in candidates if all((args or {}).get(k) == v for k, v in c.model_args.items())]
    return (agreeing or candidates or [None])[0]


def family_of(model: str) -> str:
    """The family of a registry model (:attr:`PretrainedCard.family`), or the model itself."""
    return next((c.family for c in CARDS.values() if c.model == model), model)


def tagging_cards() -> list[str]:
    """The cards whose own head tags AudioSet's classes (``escnet tag``)."""
    return [name for name, card in CARDS.items() if card.labels is not None]
