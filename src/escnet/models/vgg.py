"""VGG19 in plain PyTorch, torchvision's layout and parameter names, with one input channel."""

from __future__ import annotations

import torch
from torch import nn

from escnet.config import TaskConfig
from escnet.errors import ConfigError
from escnet.models.pretrained import load_matching, read_state_dict, resolve_weights
from escnet.models.registry import register_model

LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"]
IMAGENET = {  # torchvision's published ImageNet weights (the hash prefix is in the name)
    False: "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    True: "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
}


@register_model("vgg19")
class VGG19(nn.Module):
    """VGG19 (``vgg_batch_norm`` for VGG19-BN) on a 1-channel log-mel image, ending in
    ``num_classes``. ``pretrained="imagenet"`` (or a path/URL to a torchvision-format state
    dict) loads ImageNet weights; the first conv's RGB filters are summed into one channel and
    the last layer is left at its fresh initialisation."""

    def __init__(self, config: TaskConfig) -> None:
        super().__init__()
        if min(config.n_mels, config.length) < 32:
            raise ConfigError(f"model vgg19: needs at least 32 mels and 32 frames (its 5 max-pools), "
                              f"got {config.n_mels} × {config.length}")
        layers: list[nn.Module] = []
        cin = 1
        for v in LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(cin, v, 3, padding=1))
            if config.vgg_batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, config.num_classes),
        )
        self._init_weights()
        if config.pretrained:
            self.load_torchvision(config)

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

    def load_torchvision(self, config: TaskConfig) -> None:
        path = resolve_weights(config, {"imagenet": IMAGENET[config.vgg_batch_norm]})
        state = dict(read_state_dict(path))
        first = state.get("features.0.weight")
        if first is not None and first.shape[1] == 3:
            state["features.0.weight"] = first.sum(dim=1, keepdim=True)  # RGB → one channel
        load_matching(self, state, skip=("classifier.6.",), source=path)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)`` → logits ``(batch, num_classes)``."""
        return self.classifier(self.avgpool(self.features(x.unsqueeze(1))).flatten(1))
