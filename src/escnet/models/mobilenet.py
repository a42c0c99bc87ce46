"""EfficientAT's MobileNetV3 for audio (``mn01`` … ``mn40``), in plain PyTorch, with the layout
and parameter names of its official AudioSet checkpoints.

F. Schmid, K. Koutini, G. Widmer, "Efficient Large-Scale Audio Tagging via Transformer-to-CNN
Knowledge Distillation", ICASSP 2023 (github.com/fschmid56/EfficientAT, MIT). The network is
torchvision's MobileNetV3-Large on a one-channel log-mel image, every width scaled by the
model's multiplier (``mn04``: 0.4), squeeze-and-excitation over channels, and an MLP head
(pool, linear, hardswish, dropout, linear). The weights expect EfficientAT's own front-end:
``features.frontend=efficientat`` (:class:`escnet.transforms.features.Featurizer`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from escnet.cards import AUDIOSET_LABELS, WeightsFile
from escnet.errors import ConfigError
from escnet.models.layers import check_args
from escnet.models.pretrained import load_strict
from escnet.models.registry import register_model

WIDTHS = {"mn01": 0.1, "mn02": 0.2, "mn04": 0.4, "mn05": 0.5, "mn10": 1.0, "mn20": 2.0, "mn30": 3.0,
          "mn40": 4.0}
"""The official models and their width multipliers (their AudioSet weights: :mod:`escnet.cards`)."""
AUDIOSET_CLASSES = 527
# MobileNetV3-Large's blocks: input, kernel, expanded, output channels, squeeze-excitation,
# hardswish (else ReLU), stride.
BLOCKS = [(16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2),
          (24, 3, 72, 24, False, False, 1), (24, 5, 72, 40, True, False, 2),
          (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
          (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1),
          (80, 3, 184, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
          (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
          (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1),
          (160, 5, 960, 160, True, True, 1)]
HEAD_WIDTH = 1280
TIME_STRIDE = 32
"""Input frames per step of the trunk's output (the product of its strides: the first
convolution's and four blocks' 2): a frame head's step is this many log-mel hops long."""


def frame_seconds(hop_length: int, sample_rate: int) -> float:
    """Seconds of one step of a frame head (:data:`TIME_STRIDE` log-mel hops of ``hop_length``
    samples at ``sample_rate`` Hz): step ``k`` covers ``[k, k + 1) · frame_seconds`` of its input."""
    return TIME_STRIDE * hop_length / sample_rate


def scaled(channels: float, width: float) -> int:
    """``channels × width`` rounded to a multiple of 8, never more than 10 % below it
    (MobileNet's ``make_divisible``)."""
    v = channels * width
    out = max(8, int(v + 4) // 8 * 8)
    return out + 8 if out < 0.9 * v else out


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: type[nn.Module] | None = None) -> nn.Sequential:
    """Convolution (no bias, same padding), BatchNorm (EfficientAT's eps and momentum), activation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                                         bias=False),
                               nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gates from the mean over frequency and time: ``(b, c, f, t) → (b, c, f, t)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, scaled(channels // 4, 1.0))
        self.fc2 = nn.Linear(self.fc1.out_features, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class ChannelSE(nn.Module):
    """EfficientAT's wrapper of one channel-wise squeeze-excitation (the checkpoints' names:
    ``conc_se_layers.0``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class TemporalContext(nn.Module):
    """What a frame hears of the frames around it: ``(batch, channels, steps)`` → the same
    shape, ``x + pointwise(hardswish(pointwise(depthwise(x))))`` with a depthwise convolution
    over ``2 × reach + 1`` steps (zero-padded at both ends, as the trunk pads its input). The
    last layer starts at zero, so the block starts as the identity."""

    def __init__(self, channels: int, reach: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(channels, channels, 2 * reach + 1, padding=reach, groups=channels, bias=False),
            nn.Conv1d(channels, channels, 1), nn.Hardswish(), nn.Conv1d(channels, channels, 1))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class InvertedResidual(nn.Module):
    """Expand (1×1), depthwise (k×k, stride), squeeze-excitation, project (1×1); a residual
    connection when the shape is kept."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hardswish: bool,
                 stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_bn(cin, expanded, 1, activation=act))
        layers.append(conv_bn(expanded, expanded, kernel, stride, groups=expanded, activation=act))
        if se:
            layers.append(ChannelSE(expanded))
        layers.append(conv_bn(expanded, cout, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.residual else y


class MobileNet(nn.Module):
    """EfficientAT's MobileNetV3 at width multiplier ``width``: log-mel ``(batch, n_mels,
    frames)`` → logits ``(batch, num_classes)``.

    ``features`` (the trunk) ends in ``embed_dim`` channels (384 at width 0.4), averaged over
    frequency and time into the embedding (:meth:`embed`). ``head="mlp"`` is EfficientAT's
    head (linear to ``scaled(1280)``, hardswish, dropout, linear); ``head="linear"`` is a linear
    probe: the embedding standardised by statistics of the training clips, then one linear layer.
    ``freeze=True`` keeps the trunk at its (pretrained) weights and BatchNorm statistics: then
    only the head trains, and a training run computes every clip's embedding once.
    ``frozen_norm=True`` trains the whole trunk but keeps its BatchNorm statistics at the
    pretrained ones (the layers' scales and shifts still learn): fine-tuning on a few thousand
    cropped, masked and mixed clips then does not move the statistics evaluation uses.
    ``audioset_head=True`` keeps a frozen copy of the pretrained 527-class AudioSet head beside
    the new one (``audioset``: embedding → 527 logits): what AudioSet hears in a sound none of the new classes
    fits. It needs AudioSet weights (``model.pretrained``); ``tag_names`` are then its outputs'
    names.
    ``frame_head=True`` adds a frame-wise head (``frame_head``, the clip head's layers applied to
    each time step of the trunk, averaged over frequency only, as PANNs' decision-level models
    do): :meth:`frame_logits` gives per-frame class logits ``(batch, steps, num_classes)``, one step
    per :data:`TIME_STRIDE` input frames (0.32 s at EfficientAT's 10 ms hop), for sound event detection; each
    class is its own yes/no (sigmoid), so sounds can overlap. It is trained on soundscapes with
    frame targets (``augment.scenes``, :mod:`escnet.transforms.scenes`). ``frame_context``: the
    steps on each side each frame also reads (:class:`TemporalContext`, before the frame head):
    a sound that pauses, or takes turns with another, can be heard through its pauses.
    """

    def __init__(self, n_mels: int, frames: int, num_classes: int, width: float = 0.4,
                 head: str = "mlp", dropout: float = 0.2, freeze: bool = False,
                 frozen_norm: bool = False, audioset_head: bool = False,
                 frame_head: bool = False, frame_context: int = 0) -> None:
        super().__init__()
        check_args("mn", head=(head, head in ("mlp", "linear"), "must be mlp or linear"),
                   dropout=(dropout, 0 <= dropout < 1, "must be in [0, 1)"),
                   frame_head=(frame_head, not frame_head or head == "mlp", "needs head=mlp"),
                   frame_context=(frame_context, 0 <= frame_context <= 8
                                  and (frame_head or not frame_context),
                                  "must be 0 to 8 steps, and needs frame_head=true"))
        self.width, self.head_kind, self.freeze, self.frozen_norm = width, head, freeze, frozen_norm
        first = scaled(BLOCKS[0][0], width)
        layers: list[nn.Module] = [conv_bn(1, first, 3, 2, activation=nn.Hardswish)]
        for cin, kernel, expanded, cout, se, hs, stride in BLOCKS:
            layers.append(InvertedResidual(scaled(cin, width), kernel, scaled(expanded, width),
                                           scaled(cout, width), se, hs, stride))
        last = scaled(BLOCKS[-1][3], width)
        self.embed_dim = 6 * last
        layers.append(conv_bn(last, self.embed_dim, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        if head == "mlp":
            hidden = scaled(HEAD_WIDTH, width)
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                            nn.Linear(self.embed_dim, hidden), nn.Hardswish(),
                                            nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        else:  # the standardisation's statistics: a cumulative average over training batches
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                            nn.BatchNorm1d(self.embed_dim, affine=False, momentum=None),
                                            nn.Dropout(dropout), nn.Linear(self.embed_dim, num_classes))
        self.audioset = (nn.Sequential(nn.Linear(self.embed_dim, scaled(HEAD_WIDTH, width)),
                                       nn.Hardswish(), nn.Linear(scaled(HEAD_WIDTH, width),
                                                                 AUDIOSET_CLASSES))
                         if audioset_head else None)
        self.frame_head = copy.deepcopy(self.head) if frame_head else None
        self.tag_names: list[str] | None = None
        self._init_weights()
        self.frame_context = TemporalContext(self.embed_dim, frame_context) if frame_context else None
        if freeze:
            self.features.requires_grad_(False)
        if self.audioset is not None:
            self.audioset.requires_grad_(False)

    def _init_weights(self) -> None:
        for m in self.modules():  # EfficientAT's (torchvision's MobileNetV3) initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> MobileNet:
        """A frozen trunk stays in eval mode, and with ``frozen_norm`` its BatchNorm layers do:
        their statistics stay the pretrained ones."""
        super().train(mode)
        if self.freeze:
            self.features.eval()
        elif self.frozen_norm:
            for m in self.features.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def load_pretrained(self, state: dict[str, torch.Tensor], source: str) -> None:
        """An EfficientAT checkpoint, every tensor checked by name and shape. Its head is loaded
        too where it fits (the 527 AudioSet classes with ``head=mlp``; the hidden layer for
        other classes); the new classes' layer starts fresh."""
        skip = ("classifier.",) if self.head_kind == "linear" else \
            () if self.classifier[-1].out_features == AUDIOSET_CLASSES else ("classifier.5.",)
        if self.audioset is not None:
            head = state.get("classifier.5.weight")
            if head is None or head.shape[0] != AUDIOSET_CLASSES:
                raise ConfigError(f"setting model.args.audioset_head=true: {source} has no "
                                  f"{AUDIOSET_CLASSES}-class AudioSet head to keep")
            state = {**state, **{f"audioset.{new}.{p}": state[f"classifier.{old}.{p}"]
                                 for new, old in ((0, 2), (2, 5)) for p in ("weight", "bias")}}
        load_strict(self, state, skip=(*skip, "frame_head.", "frame_context."), source=source)
        self.start_frame_head()

    def tag_file(self) -> WeightsFile | None:
        """Where the names of the AudioSet head's outputs come from, with that head."""
        return AUDIOSET_LABELS if self.audioset is not None else None

    def start_frame_head(self) -> None:
        """Copy the clip head's weights into the frame head (after the clip head was probed, so
        that frame training starts from a head that already tells the classes apart)."""
        if self.frame_head is not None:
            self.frame_head.load_state_dict(self.head.state_dict())

    def frame_parameters(self) -> list[nn.Parameter]:
        """The parameters only the frames use (the frame head and its context): new layers,
        which the training loop lets learn faster than the pretrained trunk."""
        return [p for m in (self.frame_context, self.frame_head) if m is not None for p in m.parameters()]

    @property
    def head(self) -> nn.Sequential:
        """The layers after the pooling: embedding ``(batch, embed_dim)`` → logits."""
        return self.classifier[2:]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(batch, n_mels, frames)`` → the trunk's output ``(batch, embed_dim, bands,
        steps)`` (``steps = ceil(frames / TIME_STRIDE)``)."""
        return self.features(x.unsqueeze(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(batch, n_mels, frames)`` → the trunk's pooled embedding ``(batch, embed_dim)``."""
        return self.trunk(x).mean(dim=(2, 3))

    def frame_logits(self, trunk: torch.Tensor) -> torch.Tensor:
        """The trunk's output (:meth:`trunk`) → frame logits ``(batch, steps, num_classes)``:
        the frame head on each step, averaged over frequency only. Needs ``frame_head``."""
        if self.frame_head is None:
            raise ValueError("this model has no frame head (model.args.frame_head)")
        steps = trunk.mean(dim=2)
        if self.frame_context is not None:
            steps = self.frame_context(steps)
        return self.frame_head(steps.transpose(1, 2))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                with_frames: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x``: log-mel ``(batch, n_mels, frames)``, or embeddings ``(batch, embed_dim)`` from
        :meth:`embed` (a frozen trunk's, computed once) → logits ``(batch, num_classes)``;
        ``with_frames``: and the frame logits (:meth:`frame_logits`) from the same pass."""
        if x.dim() == 2:
            return self.head(x)
        trunk = self.trunk(x)
        logits = self.classifier(trunk)
        return (logits, self.frame_logits(trunk)) if with_frames else logits


def _register(name: str, width: float) -> None:
    def build(n_mels: int, frames: int, num_classes: int, head: str = "mlp", dropout: float = 0.2,
              freeze: bool = False, frozen_norm: bool = False, audioset_head: bool = False,
              frame_head: bool = False, frame_context: int = 0) -> MobileNet:
        return MobileNet(n_mels, frames, num_classes, width, head, dropout, freeze, frozen_norm,
                         audioset_head, frame_head, frame_context)

    build.__doc__ = f"EfficientAT {name}: :class:`MobileNet` at width {width}."
    register_model(name)(build)


for _name, _width in WIDTHS.items():
    _register(_name, _width)
