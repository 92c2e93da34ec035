"""Thin-plate-spline transforms fitted to keypoints, as TPSMM uses them (Eq. 2 of the paper).

Each transform maps driving-frame coordinates to source-frame coordinates and is fitted so that
its 5 driving control points land on the matching source points: an affine part plus radial
terms U(r) = r^2 log r^2 around each control point.
"""

import torch

REGULARIZATION = 0.01  # added to the system's diagonal, as in the published fit
LOG_EPSILON = 1e-9  # keeps log finite at r = 0


def _radial(squared_distance: torch.Tensor) -> torch.Tensor:
    return squared_distance * torch.log(squared_distance + LOG_EPSILON)


class ThinPlateSpline:
    """K transforms per batch item, fitted to control points kp_driving -> kp_source (N, K, 5, 2)."""

    def __init__(self, kp_driving: torch.Tensor, kp_source: torch.Tensor):
        n, k, p, _ = kp_driving.shape
        distance = torch.linalg.vector_norm(kp_driving[:, :, :, None] - kp_driving[:, :, None, :], dim=-1)
        radial = _radial(distance**2)  # (N, K, P, P)
        homogeneous = torch.cat([kp_driving, kp_driving.new_ones(n, k, p, 1)], dim=3)  # (N, K, P, 3)
        # The saddle-point system [[U, P], [P^T, 0]] [w; a] = [kp_source; 0], regularized.
        system = torch.cat(
            [
                torch.cat([radial, homogeneous], dim=3),
                torch.cat([homogeneous.transpose(2, 3), kp_driving.new_zeros(n, k, 3, 3)], dim=3),
            ],
            dim=2,
        )
        system = system + REGULARIZATION * torch.eye(p + 3, dtype=system.dtype, device=system.device)
        target = torch.cat([kp_source, kp_source.new_zeros(n, k, 3, 2)], dim=2)
        params = torch.linalg.solve(system, target)  # (N, K, P + 3, 2)
        self.control_points = kp_driving
        self.radial_weights = params[:, :, :p]  # (N, K, P, 2)
        self.affine = params[:, :, p:].transpose(2, 3)  # (N, K, 2, 3): [A | b]

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """coordinates (M, 2), shared by the batch -> (N, K, M, 2) in the source frame."""
        linear = self.affine[..., :2] @ coordinates.T + self.affine[..., 2:]  # (N, K, 2, M)
        offsets = coordinates.view(1, 1, 1, -1, 2) - self.control_points.unsqueeze(3)  # (N, K, P, M, 2)
        radial = _radial((offsets**2).sum(-1))  # (N, K, P, M)
        return linear.transpose(2, 3) + radial.transpose(2, 3) @ self.radial_weights
