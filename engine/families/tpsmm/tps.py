"""Thin-plate-spline transforms fitted to keypoints, as TPSMM uses them (Eq. 2 of the paper).

Each transform maps driving-frame coordinates to source-frame coordinates and is fitted so that
its 5 driving control points land on the matching source points: an affine part plus radial
terms U(r) = r^2 log r^2 around each control point.
"""

import torch

from engine.layers.blocks import exporting

REGULARIZATION = 0.01  # added to the system's diagonal, as in the published fit
LOG_EPSILON = 1e-9  # keeps log finite at r = 0


def _radial(squared_distance: torch.Tensor) -> torch.Tensor:
    return squared_distance * torch.log(squared_distance + LOG_EPSILON)


def gauss_jordan_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """X with matrix @ X = rhs, for matrix (..., n, n) and rhs (..., n, m): what torch.linalg.solve
    computes, to float rounding, in operations that both the ONNX exporter and OpenVINO's PyTorch
    frontend convert (neither takes torch.linalg.solve or torch.inverse).

    Gauss-Jordan elimination with partial pivoting, unrolled over the n columns (n is fixed when
    traced): at column j the row of largest magnitude among rows j.. (argmax) is swapped into row j
    by masks, scaled to a unit pivot and subtracted from every other row. Each step drops the
    finished column, so what remains after n steps is X. No data-dependent control flow, no in-place
    writes; a singular matrix gives inf or nan rather than an error.

    Only traced models use it (`ThinPlateSpline`); eager torch keeps torch.linalg.solve. Both are as
    exact (float32: within 1e-5 of each other on the splines' systems; float64: 1e-14), but on the
    CPU LAPACK solves a batch of these 8x8 systems 10-20x faster than this chain of ~100 small
    operations (40-150 us against 0.8-1.6 ms): about 1 ms more per batch, 1-2% of the small
    fixture's forward (lost in the noise of the published vox-256 model's), for nothing in return.
    """
    n = matrix.shape[-1]
    augmented = torch.cat([matrix, rhs], dim=-1)  # (..., n, n + m), then one column fewer per step
    rows = torch.arange(n, dtype=torch.long, device=matrix.device)  # typed: a plain Range in ONNX
    for j in range(n):
        column = augmented[..., 0]  # (..., n): the coefficients of unknown j in every row
        pivot = torch.where(rows >= j, column.abs(), -1).argmax(dim=-1, keepdim=True)  # (..., 1)
        is_pivot = (rows == pivot).unsqueeze(-1)  # (..., n, 1)
        is_j = (rows == j).unsqueeze(-1)  # (n, 1)
        pivot_row = torch.where(is_pivot, augmented, 0).sum(dim=-2, keepdim=True)  # (..., 1, columns)
        row_j = augmented[..., j : j + 1, :]
        swapped = torch.where(is_j, pivot_row, torch.where(is_pivot, row_j, augmented))
        unit_row = pivot_row[..., 1:] / pivot_row[..., :1]
        augmented = torch.where(is_j, unit_row, swapped[..., 1:] - swapped[..., :1] * unit_row)
    return augmented


def fit_system(kp_driving: torch.Tensor, kp_source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The regularised saddle-point system [[U, P], [P^T, 0]] [w; a] = [kp_source; 0] of K splines
    per batch item: control points (N, K, P, 2) -> matrix (N, K, P + 3, P + 3), rhs (N, K, P + 3, 2)."""
    n, k, p, _ = kp_driving.shape
    distance = torch.linalg.vector_norm(kp_driving[:, :, :, None] - kp_driving[:, :, None, :], dim=-1)
    radial = _radial(distance**2)  # (N, K, P, P)
    homogeneous = torch.cat([kp_driving, kp_driving.new_ones(n, k, p, 1)], dim=3)  # (N, K, P, 3)
    system = torch.cat(
        [
            torch.cat([radial, homogeneous], dim=3),
            torch.cat([homogeneous.transpose(2, 3), kp_driving.new_zeros(n, k, 3, 3)], dim=3),
        ],
        dim=2,
    )
    system = system + REGULARIZATION * torch.eye(p + 3, dtype=system.dtype, device=system.device)
    return system, torch.cat([kp_source, kp_source.new_zeros(n, k, 3, 2)], dim=2)


class ThinPlateSpline:
    """K transforms per batch item, fitted to control points kp_driving -> kp_source (N, K, 5, 2)."""

    def __init__(self, kp_driving: torch.Tensor, kp_source: torch.Tensor):
        p = kp_driving.shape[2]
        solve = gauss_jordan_solve if exporting() else torch.linalg.solve
        params = solve(*fit_system(kp_driving, kp_source))  # (N, K, P + 3, 2)
        self.control_points = kp_driving
        self.radial_weights = params[:, :, :p]  # (N, K, P, 2)
        self.affine = params[:, :, p:].transpose(2, 3)  # (N, K, 2, 3): [A | b]

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """coordinates (M, 2), shared by the batch -> (N, K, M, 2) in the source frame."""
        linear = self.affine[..., :2] @ coordinates.T + self.affine[..., 2:]  # (N, K, 2, M)
        offsets = coordinates.view(1, 1, 1, -1, 2) - self.control_points.unsqueeze(3)  # (N, K, P, M, 2)
        radial = _radial((offsets**2).sum(-1))  # (N, K, P, M)
        return linear.transpose(2, 3) + radial.transpose(2, 3) @ self.radial_weights
