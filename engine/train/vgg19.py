"""VGG-19 convolutional features for the perceptual loss, loadable from a torchvision weights file.

Only the layers up to relu5_1 are built; module indices inside `features` match torchvision's
`vgg19().features`, so a state dict saved from torchvision (`features.N.weight`, ...) loads as it
is, with weights_only=True and no download. Classifier weights in the file are ignored.
"""

from pathlib import Path

import torch
from torch import nn

# torchvision's configuration "E" up to conv5_1; "M" is 2x2 max pooling.
_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512]
# Outputs taken after relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (indices into `features`).
_TAPS = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Vgg19Error(ValueError):
    """The VGG-19 weights file is unusable; the message says why."""


class Vgg19Features(nn.Module):
    """Frozen VGG-19; input (N, 3, H, W) in [0, 1], output five feature maps, shallow to deep."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = (x - self.mean) / self.std
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                out.append(x)
        return out


def load_vgg19(path: str | Path, device: str = "cpu") -> Vgg19Features:
    """Vgg19Features with the convolution weights of a torchvision VGG-19 state dict file."""
    path = Path(path)
    if not path.is_file():
        raise Vgg19Error(f"VGG-19 weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # hostile or foreign files raise many types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Vgg19Error(f"{path.name} is not a readable torch weights file ({reason})") from exc
    if not isinstance(state, dict):
        raise Vgg19Error(f"{path.name} holds a {type(state).__name__}, not a state dict")
    model = Vgg19Features()
    expected = model.state_dict()
    for key, tensor in expected.items():
        found = state.get(key)
        if not isinstance(found, torch.Tensor):
            raise Vgg19Error(f"{path.name} has no tensor {key!r}: not a torchvision VGG-19 state dict")
        if found.shape != tensor.shape:
            raise Vgg19Error(f"{path.name}: {key} is {tuple(found.shape)}, expected {tuple(tensor.shape)}")
    model.load_state_dict({key: state[key] for key in expected})
    return model.to(device).eval()
