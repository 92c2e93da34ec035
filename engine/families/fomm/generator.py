"""Occlusion-aware generator: warps the source's features by the dense motion and in-paints the rest."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.families.fomm.dense_motion import DenseMotion
from engine.layers.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, warp


@dataclass
class SourceFeatures:
    """What the generator needs from the source image; computed once per job, reused per frame."""

    image: torch.Tensor | None  # (N, C, H, W); only the inspection maps need it
    encoded: torch.Tensor  # (N, F, H / 2**num_down_blocks, W / 2**num_down_blocks)
    small: torch.Tensor  # the image at the dense motion network's resolution

    def expand(self, n: int) -> "SourceFeatures":
        """The same source repeated to a batch of n frames, without copying memory."""
        image = None if self.image is None else self.image.expand(n, *self.image.shape[1:])
        return SourceFeatures(image, *(t.expand(n, *t.shape[1:]) for t in (self.encoded, self.small)))

    @staticmethod
    def joined(parts: list["SourceFeatures"]) -> "SourceFeatures":
        """Several sources' features as one batch, in order (one source per driving frame)."""
        return SourceFeatures(
            *(
                torch.cat(tensors)
                for tensors in zip(*((p.image, p.encoded, p.small) for p in parts), strict=True)
            )
        )


def resize_flow(deformation: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Resize a (N, h', w', 2) flow to (N, h, w, 2) bilinearly, as the published generator does."""
    if deformation.shape[1:3] == (h, w):
        return deformation
    flow = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
    return flow.permute(0, 2, 3, 1)


class Generator(nn.Module):
    """Encoder, feature warping with occlusion, residual bottleneck, decoder, sigmoid output."""

    def __init__(
        self,
        num_channels: int,
        num_kp: int,
        block_expansion: int,
        max_features: int,
        num_down_blocks: int,
        num_bottleneck_blocks: int,
        estimate_occlusion_map: bool = False,
        dense_motion_params: dict | None = None,
        estimate_jacobian: bool = False,
    ):
        super().__init__()
        self.dense_motion_network = None
        if dense_motion_params is not None:
            self.dense_motion_network = DenseMotion(
                num_kp=num_kp,
                num_channels=num_channels,
                estimate_occlusion_map=estimate_occlusion_map,
                **dense_motion_params,
            )
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)

        def width(level: int) -> int:
            return min(max_features, block_expansion * 2**level)

        self.down_blocks = nn.ModuleList(DownBlock2d(width(i), width(i + 1)) for i in range(num_down_blocks))
        self.up_blocks = nn.ModuleList(
            UpBlock2d(width(num_down_blocks - i), width(num_down_blocks - i - 1))
            for i in range(num_down_blocks)
        )
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(width(num_down_blocks)))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)

    def encode_source(self, source: torch.Tensor) -> SourceFeatures:
        """Everything that depends on the source alone."""
        encoded = self.first(source)
        for block in self.down_blocks:
            encoded = block(encoded)
        small = source if self.dense_motion_network is None else self.dense_motion_network.downscale(source)
        return SourceFeatures(source, encoded, small)

    def animate(
        self,
        features: SourceFeatures,
        kp_source: dict[str, torch.Tensor],
        kp_driving: dict[str, torch.Tensor],
        maps: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Render driving frames from cached source features (batch sizes must agree).

        `maps=False` (or no source image in `features`) skips the source warped at full resolution,
        which only serves inspection.
        """
        out: dict[str, torch.Tensor] = {}
        encoded = features.encoded
        if self.dense_motion_network is not None:
            motion = self.dense_motion_network(features.small, kp_driving, kp_source)
            out.update(motion)
            deformation = motion["deformation"]
            encoded = warp(encoded, resize_flow(deformation, *encoded.shape[2:]))
            occlusion = motion.get("occlusion_map")
            if occlusion is not None:
                if occlusion.shape[2:] != encoded.shape[2:]:
                    occlusion = F.interpolate(
                        occlusion, size=encoded.shape[2:], mode="bilinear", align_corners=False
                    )
                encoded = encoded * occlusion
            if maps and features.image is not None:
                out["deformed"] = warp(features.image, resize_flow(deformation, *features.image.shape[2:]))
        decoded = self.bottleneck(encoded)
        for block in self.up_blocks:
            decoded = block(decoded)
        out["prediction"] = torch.sigmoid(self.final(decoded))
        return out

    def forward(
        self,
        source: torch.Tensor,
        kp_source: dict[str, torch.Tensor],
        kp_driving: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """source (N, C, H, W) in [0, 1] -> prediction (N, C, H, W) and the intermediate maps."""
        return self.animate(self.encode_source(source), kp_source, kp_driving)
