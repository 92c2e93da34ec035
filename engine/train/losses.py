"""The training objective: multi-scale reconstruction, keypoint equivariance, optional GAN terms.

Every function returns a scalar tensor already multiplied by its weight, so the total is a sum.
"""

import torch
from torch import nn

from engine.layers.blocks import AntiAliasDownsample
from engine.train.transforms import RandomWarp
from engine.train.vgg19 import Vgg19Features


class ImagePyramid(nn.Module):
    """The image at each scale (1, 0.5, ...), each downscale anti-aliased."""

    def __init__(self, scales, num_channels: int = 3):
        super().__init__()
        self.scales = list(scales)
        self.downs = nn.ModuleDict(
            {str(s).replace(".", "-"): AntiAliasDownsample(num_channels, s) for s in self.scales if s != 1}
        )

    def forward(self, x: torch.Tensor) -> dict[float, torch.Tensor]:
        return {s: x if s == 1 else self.downs[str(s).replace(".", "-")](x) for s in self.scales}


def reconstruction_loss(
    predicted: dict[float, torch.Tensor],
    real: dict[float, torch.Tensor],
    vgg: Vgg19Features | None,
    perceptual_weights: list[float],
    l1_weight: float,
) -> torch.Tensor:
    """Sum over pyramid levels: weighted L1 between VGG-19 features when `vgg` is given, else pixels."""
    total = predicted[next(iter(predicted))].new_zeros(())
    for scale, prediction in predicted.items():
        if vgg is None:
            total = total + l1_weight * (prediction - real[scale]).abs().mean()
            continue
        with torch.no_grad():
            real_features = vgg(real[scale])
        for weight, a, b in zip(perceptual_weights, vgg(prediction), real_features, strict=True):
            total = total + weight * (a - b).abs().mean()
    return total


def equivariance_losses(
    kp_driving: dict[str, torch.Tensor],
    kp_warped: dict[str, torch.Tensor],
    warp: RandomWarp,
    value_weight: float,
    jacobian_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints detected on the warped frame, mapped back through the warp, must match the originals.

    kp_warped are detected on `warp.warp_frame(driving)`. For jacobians: J_driving should equal
    J_warp(kp_warped) @ J_warped, so J_driving^-1 @ that product should be the identity.
    """
    value = (kp_driving["value"] - warp.warp_coordinates(kp_warped["value"])).abs().mean() * value_weight
    if "jacobian" not in kp_driving or jacobian_weight == 0:
        return value, value.new_zeros(())
    mapped = warp.jacobian(kp_warped["value"]) @ kp_warped["jacobian"]  # (N, K, 2, 2)
    product = torch.inverse(kp_driving["jacobian"]) @ mapped
    eye = torch.eye(2, dtype=product.dtype, device=product.device)
    jacobian = (eye - product).abs().mean() * jacobian_weight
    return value, jacobian


def generator_gan_loss(fake_scores: dict, weight: float) -> torch.Tensor:
    """Least-squares GAN: the generator wants the discriminator to score its output 1."""
    return sum(((1 - scores) ** 2).mean() for _, scores in fake_scores.values()) * weight


def discriminator_gan_loss(real_scores: dict, fake_scores: dict, weight: float) -> torch.Tensor:
    """Least-squares GAN: real frames scored 1, generated ones 0."""
    total = sum(((1 - real_scores[s][1]) ** 2 + fake_scores[s][1] ** 2).mean() for s in real_scores)
    return total * weight


def feature_matching_loss(real_scores: dict, fake_scores: dict, weights: list[float]) -> torch.Tensor:
    """L1 between the discriminator's feature maps for real and generated frames, per layer."""
    terms = [
        weight * (real.detach() - fake).abs().mean()
        for scale, (real_features, _) in real_scores.items()
        for weight, real, fake in zip(weights, real_features, fake_scores[scale][0], strict=False)
        if weight
    ]
    if not terms:
        return next(iter(fake_scores.values()))[1].new_zeros(())
    return torch.stack(terms).sum()
