"""Random smooth warps of the image plane (affine plus thin-plate spline), for the equivariance losses.

Keypoints must move with the image: detecting on a warped frame and mapping the result back through
the warp should give the keypoints of the original frame. Coordinates are (x, y) in [-1, 1].
"""

import torch
import torch.nn.functional as F

from engine.layers.blocks import coordinate_grid


class RandomWarp:
    """A batch of warps z -> A z + b + sum_p w_p U(|z - c_p|), with U(r) = r^2 log r (the TPS kernel).

    The control points c_p lie on a regular grid; with A = I, b = 0 and w = 0 it is the identity.
    `distance` is the L1 distance between points, as in the published training code.
    """

    def __init__(self, theta: torch.Tensor, control_points: torch.Tensor, control_params: torch.Tensor):
        self.theta = theta  # (N, 2, 3)
        self.control_points = control_points  # (P, 2)
        self.control_params = control_params  # (N, P, 2)

    @classmethod
    def random(
        cls,
        batch: int,
        sigma_affine: float,
        sigma_tps: float,
        points_tps: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> "RandomWarp":
        """Gaussian perturbations of the identity: affine by sigma_affine, TPS weights by sigma_tps."""
        noise = torch.randn(batch, 2, 3, generator=generator) * sigma_affine
        theta = noise + torch.eye(2, 3).unsqueeze(0)
        params = torch.randn(batch, points_tps**2, 2, generator=generator) * sigma_tps
        return cls(theta.to(device), cls._grid_points(points_tps, device), params.to(device))

    @classmethod
    def identity(cls, batch: int, points_tps: int = 5, device: torch.device | str = "cpu") -> "RandomWarp":
        theta = torch.eye(2, 3, device=device).expand(batch, 2, 3).clone()
        params = torch.zeros(batch, points_tps**2, 2, device=device)
        return cls(theta, cls._grid_points(points_tps, device), params)

    @staticmethod
    def _grid_points(points_tps: int, device) -> torch.Tensor:
        like = torch.empty(0, device=device)
        return coordinate_grid(points_tps, points_tps, like).view(-1, 2)

    def warp_coordinates(self, points: torch.Tensor) -> torch.Tensor:
        """points (N, M, 2) -> (N, M, 2)."""
        theta = self.theta.to(points.dtype)
        affine = points @ theta[:, :, :2].transpose(1, 2) + theta[:, :, 2].unsqueeze(1)
        distance = (points.unsqueeze(2) - self.control_points.view(1, 1, -1, 2)).abs().sum(-1)  # (N, M, P)
        kernel = distance**2 * torch.log(distance + 1e-6)
        return affine + kernel @ self.control_params.to(points.dtype)

    def jacobian(self, points: torch.Tensor) -> torch.Tensor:
        """d warp / d point at each point: (N, M, 2) -> (N, M, 2, 2), differentiable w.r.t. points."""
        with torch.enable_grad():
            if not points.requires_grad:
                points = points.detach().requires_grad_(True)
            warped = self.warp_coordinates(points)
            rows = [torch.autograd.grad(warped[..., i].sum(), points, create_graph=True)[0] for i in range(2)]
        return torch.stack(rows, dim=-2)

    def warp_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """The frame (N, C, H, W) seen through the warp: output pixel z shows input at warp(z)."""
        n, _, h, w = frame.shape
        grid = coordinate_grid(h, w, frame).view(1, h * w, 2).expand(n, h * w, 2)
        grid = self.warp_coordinates(grid).view(n, h, w, 2)
        return F.grid_sample(frame, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
