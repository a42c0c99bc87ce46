"""VGG19 in plain PyTorch, torchvision's layout and parameter names, with one input channel."""

from __future__ import annotations

import torch
from torch import nn

from escnet.errors import ConfigError
from escnet.models.pretrained import load_matching
from escnet.models.registry import register_model

LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"]

@register_model("vgg19")
class VGG19(nn.Module):
    """VGG19 (``batch_norm=True`` for VGG19-BN) on a 1-channel log-mel image, ending in
    ``num_classes``. ``model.pretrained=imagenet`` (the cards ``vgg19_imagenet`` and
    ``vgg19_bn_imagenet``, or a path/URL to a torchvision-format state dict) loads ImageNet
    weights; the first conv's RGB filters are summed into one channel and the last layer is
    left at its fresh initialisation."""

    def __init__(self, n_mels: int, frames: int, num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        if min(n_mels, frames) < 32:
            raise ConfigError(f"model vgg19: needs at least 32 mels and 32 frames (its 5 max-pools), "
                              f"got {n_mels} × {frames}")
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        cin = 1
        for v in LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(cin, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation. PyTorch's default (fan-in uniform, a third of He's
        # variance) shrinks the signal at each of the 16 plain convs: at initialisation every clip
        # then gets the same logits (relative difference 3e-6), and from scratch it stays at chance.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def load_pretrained(self, state: dict[str, torch.Tensor], source: str) -> None:
        """A torchvision-format state dict; every tensor but the last layer."""
        state = dict(state)
        first = state.get("features.0.weight")
        if first is not None and first.shape[1] == 3:
            state["features.0.weight"] = first.sum(dim=1, keepdim=True)  # RGB → one channel
        load_matching(self, state, skip=("classifier.6.",), source=source)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)`` → logits ``(batch, num_classes)``."""
        return self.classifier(self.avgpool(self.features(x.unsqueeze(1))).flatten(1))
