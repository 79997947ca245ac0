"""Image classifiers: torchvision ResNet-18 with a 1-channel stem, a small CNN, ScatterNets."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from dpmed.errors import ConfigError, DataError

SCATTERNETS = {"scatternet": "linear", "scatternet-cnn": "cnn"}  # model name -> ScatterNet head


def build_model(
    name: str, *, num_classes: int = 2, weights: str | None = None, image_size: int = 28
) -> tuple[nn.Module, str]:
    """A fresh model for 1-channel images and a line saying how it was initialised
    (`image_size`: the side of the square images, which ScatterNet is built for)."""
    if name in SCATTERNETS:
        from dpmed.models.scatter import ANGLES, SCALES, ScatterNet  # loads kymatio

        head = SCATTERNETS[name]
        note = f"{name}: fixed scattering (J={SCALES}, L={ANGLES}), {head} head, random init"
        return ScatterNet(image_size, num_classes, head=head), note
    if name == "small-cnn":
        return SmallCNN(num_classes), "small-cnn from random init"
    if name == "resnet18-gn":
        return resnet18_groupnorm(num_classes), "resnet18-gn (GroupNorm) from random init"
    if name != "resnet18":
        raise ConfigError(
            f"unknown model {name!r}; choose resnet18, resnet18-gn, small-cnn, "
            f"{' or '.join(SCATTERNETS)}"
        )
    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights is None:
        return model, "resnet18 from random init (no --weights given)"
    return model, "resnet18 " + load_torchvision_weights(model, Path(weights))


def load_torchvision_weights(model: nn.Module, path: Path) -> str:
    """Load a torchvision ResNet-18 state dict into `model`.

    The RGB stem is summed over its colour channels (a grey image fed as R = G = B gives
    the same activations); the classifier head keeps its fresh init when its shape differs.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"weights file {path} does not exist; check --weights") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a bad file
        raise DataError(f"cannot load weights {path} as a torch state dict: {exc}") from None
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise DataError(f"{path} is not a torchvision ResNet-18 state dict (no conv1.weight)")
    if state["conv1.weight"].shape[1] == 3:
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    own = model.state_dict()
    skipped = [k for k in state if k in own and state[k].shape != own[k].shape]
    unknown = [k for k in state if k not in own]
    if unknown:
        raise DataError(f"{path} does not fit resnet18: unexpected key {unknown[0]!r}")
    kept = {k: v for k, v in state.items() if k not in skipped}
    model.load_state_dict(kept, strict=False)
    note = (
        f"; kept fresh: {', '.join(sorted({k.split('.')[0] for k in skipped}))}" if skipped else ""
    )
    return f"with weights from {path} ({len(kept)} tensors loaded{note})"


class SmallCNN(nn.Module):
    """Four conv blocks (GroupNorm, so DP-SGD can train it too) and a linear head."""

    def __init__(self, num_classes: int = 2, width: int = 32) -> None:
        super().__init__()
        layers, channels = [], 1
        for out in (width, 2 * width, 4 * width, 4 * width):
            layers += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.GroupNorm(8, out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _OutOfPlaceBlock(BasicBlock):
    """torchvision's BasicBlock without in-place ops, which Opacus's hooks cannot follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


def resnet18_groupnorm(num_classes: int = 2) -> ResNet:
    """ResNet-18 for DP-SGD: GroupNorm (per-example, unlike BatchNorm), out-of-place
    residuals, a 1-channel stem."""
    model = ResNet(
        _OutOfPlaceBlock,
        [2, 2, 2, 2],
        num_classes=num_classes,
        norm_layer=lambda channels: nn.GroupNorm(min(32, channels), channels),
    )
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.relu = nn.ReLU()
    return model
