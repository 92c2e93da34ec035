"""LivePortrait's stitching (S) and eye/lip retargeting (R_eyes, R_lip) networks: small MLPs on
flattened keypoints and close ratios that return keypoint offsets."""

import torch
from torch import nn

# The three networks under the names the published wrapper indexes them by, with the entry of the
# published stitching_retargeting_module.pth that holds each one's state dict.
PART_ENTRIES = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}


class StitchingRetargetingNetwork(nn.Module):
    """Linear and ReLU layers through hidden_sizes, then a last Linear without activation
    (keys mlp.0, mlp.2, ...: the ReLUs take the odd indices)."""

    def __init__(self, input_size: int, hidden_sizes: list[int], output_size: int):
        super().__init__()
        sizes = [input_size, *hidden_sizes]
        layers: list[nn.Module] = []
        for size_in, size_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(size_in, size_out), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(sizes[-1], output_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def stitching_retargeting_module(params: dict[str, dict]) -> nn.ModuleDict:
    """The three networks keyed "stitching", "lip", "eye", from the published yaml's
    `stitching_retargeting_module_params` (input_size, hidden_sizes, output_size for each)."""
    return nn.ModuleDict({name: StitchingRetargetingNetwork(**params[name]) for name in PART_ENTRIES})
