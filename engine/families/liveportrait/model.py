"""The LivePortrait networks that belong together, with the published wrapper's methods.

Method names, arguments and outputs are those of the published `LivePortraitWrapper`, so a step of
the reference pipeline maps onto one call here. Unlike the reference, nothing is cast: the dtype
of the weights and inputs (float32, float64, ...) is kept throughout, and every method accepts a
batch of driving frames against one source (the source's tensors are broadcast).
"""

import numpy as np
import torch
from torch import nn

from engine.families.liveportrait import motion
from engine.families.liveportrait.appearance_feature_extractor import AppearanceFeatureExtractor
from engine.families.liveportrait.camera import get_rotation_matrix, headpose_pred_to_degree
from engine.families.liveportrait.motion_extractor import MotionExtractor
from engine.families.liveportrait.regions import calc_eye_close_ratio, calc_lip_close_ratio
from engine.families.liveportrait.spade_generator import SPADEDecoder
from engine.families.liveportrait.warping_network import WarpingNetwork

PUBLISHED_INPUT_SHAPE = (256, 256)  # the published crops; the networks take other sizes too


def prepare_images(images: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) RGB uint8 -> (N, 3, H, W) in [0, 1]: u8 / 255, no normalisation."""
    batch = torch.from_numpy(np.ascontiguousarray(images))
    batch = batch[None] if batch.ndim == 3 else batch
    return (batch.to(dtype) / 255).clamp(0, 1).permute(0, 3, 1, 2)


def concat_feat(kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """(N or 1, ...) and (N, ...) -> (N, both flattened); a single source row serves every frame."""
    n = kp_driving.shape[0]
    source = kp_source.reshape(kp_source.shape[0], -1).expand(n, -1)
    return torch.cat([source, kp_driving.reshape(n, -1)], dim=1)


class LivePortraitModel(nn.Module):
    """Appearance feature extractor (F), motion extractor (M), warping module (W), SPADE decoder (G)
    and the stitching and retargeting MLPs (`stitching_retargeting_module["stitching" | "lip" |
    "eye"]`), under their published names; `config` is the published `model_params` structure."""

    family = "liveportrait"
    modes = ("relative", "absolute")  # contract.options.Mode's names, the default first

    def __init__(
        self,
        appearance_feature_extractor: AppearanceFeatureExtractor,
        motion_extractor: MotionExtractor,
        warping_module: WarpingNetwork,
        spade_generator: SPADEDecoder,
        stitching_retargeting_module: nn.ModuleDict,
        config: dict,
        input_shape: tuple[int, int] = PUBLISHED_INPUT_SHAPE,
    ):
        super().__init__()
        self.appearance_feature_extractor = appearance_feature_extractor
        self.motion_extractor = motion_extractor
        self.warping_module = warping_module
        self.spade_generator = spade_generator
        self.stitching_retargeting_module = stitching_retargeting_module
        self.config = config
        self.input_shape = tuple(input_shape)

    @property
    def num_kp(self) -> int:
        return self.config["motion_extractor_params"]["num_kp"]

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the frames it animates: its output's size. Frames come in at that size too and
        are resized to `input_shape`, as the published pipeline crops at 512 and feeds 256."""
        return self.output_shape()

    @property
    def dtype(self) -> torch.dtype:
        return self.spade_generator.fc.weight.dtype

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: the extractor's halvings, then the hourglass's."""
        afe = self.config["appearance_feature_extractor_params"]["num_down_blocks"]
        dense = self.config["warping_module_params"]["dense_motion_params"]["num_blocks"]
        return 2 ** (afe + dense)

    def output_shape(self, input_shape: tuple[int, int] | None = None) -> tuple[int, int]:
        """(H, W) of the decoded image for an input crop of `input_shape` (default the model's)."""
        height, width = input_shape or self.input_shape
        afe = self.config["appearance_feature_extractor_params"]["num_down_blocks"]
        factor = 4 * (2 if (self.config["spade_generator_params"]["upscale"] or 1) > 1 else 1)
        return height // 2**afe * factor, width // 2**afe * factor

    @torch.no_grad()
    def extract_feature_3d(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) in [0, 1] -> f_s (N, C, D, H / 4, W / 4) at the published depth of F."""
        return self.appearance_feature_extractor(x)

    @torch.no_grad()
    def get_kp_info(self, x: torch.Tensor, flag_refine_info: bool = True) -> dict[str, torch.Tensor]:
        """x (N, 3, H, W) -> pitch, yaw, roll, t, exp, scale, kp. Refined (the default): angles in
        degrees (N, 1), kp and exp (N, K, 3); else the motion extractor's raw outputs."""
        kp_info = self.motion_extractor(x)
        if flag_refine_info:
            n = kp_info["kp"].shape[0]
            for angle in ("pitch", "yaw", "roll"):
                kp_info[angle] = headpose_pred_to_degree(kp_info[angle])[:, None]
            kp_info["kp"] = kp_info["kp"].reshape(n, -1, 3)
            kp_info["exp"] = kp_info["exp"].reshape(n, -1, 3)
        return kp_info

    @staticmethod
    def rotation_matrix(kp_info: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, 3, 3) rotation of a kp_info's pose (degrees or logits), to be used as kp @ R: the
        published `get_rotation_matrix(pitch, yaw, roll)` (`camera.py`) on its angles."""
        pitch, yaw, roll = (headpose_pred_to_degree(kp_info[a]) for a in ("pitch", "yaw", "roll"))
        return get_rotation_matrix(pitch, yaw, roll)

    def transform_keypoint(self, kp_info: dict[str, torch.Tensor]) -> torch.Tensor:
        """x = scale * (kp @ R + exp), then x, y += t x, y (t_z is never used): (N, K, 3)."""
        kp = kp_info["kp"]
        n = kp.shape[0]
        kp = kp.reshape(n, -1, 3)
        transformed = kp @ self.rotation_matrix(kp_info) + kp_info["exp"].reshape(n, -1, 3)
        transformed = transformed * kp_info["scale"][..., None]
        return torch.cat([transformed[..., :2] + kp_info["t"][:, None, :2], transformed[..., 2:]], dim=-1)

    @torch.no_grad()
    def stitch(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """The stitching MLP's output (N, 3K + 2): an offset per keypoint, then one shared tx, ty."""
        return self.stitching_retargeting_module["stitching"](concat_feat(kp_source, kp_driving))

    def stitching(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """kp_driving (N, K, 3) moved by the stitching offsets so the animated crop pastes back
        without a seam."""
        n, k = kp_driving.shape[:2]
        delta = self.stitch(kp_source, kp_driving)
        moved = kp_driving + delta[:, : 3 * k].reshape(n, k, 3)
        shift = delta[:, 3 * k : 3 * k + 2].reshape(n, 1, 2)
        return torch.cat([moved[..., :2] + shift, moved[..., 2:]], dim=-1)

    @torch.no_grad()
    def retarget_eye(self, kp_source: torch.Tensor, eye_close_ratio: torch.Tensor) -> torch.Tensor:
        """kp_source (1 or N, K, 3), eye_close_ratio (N, 3) = [source left, source right, driving
        left] -> keypoint offsets (N, K, 3)."""
        delta = self.stitching_retargeting_module["eye"](concat_feat(kp_source, eye_close_ratio))
        return delta.reshape(-1, kp_source.shape[1], 3)

    @torch.no_grad()
    def retarget_lip(self, kp_source: torch.Tensor, lip_close_ratio: torch.Tensor) -> torch.Tensor:
        """kp_source (1 or N, K, 3), lip_close_ratio (N, 2) = [source, driving] -> offsets (N, K, 3)."""
        delta = self.stitching_retargeting_module["lip"](concat_feat(kp_source, lip_close_ratio))
        return delta.reshape(-1, kp_source.shape[1], 3)

    @torch.no_grad()
    def warp_decode(
        self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> dict:
        """f_s (1 or N, C, D, h, w), x_s (1 or N, K, 3), x_d (N, K, 3) -> occlusion_map
        (N, 1, h, w), deformation (N, D, h, w, 3) and out (N, 3, H', W'), the decoded image."""
        n = kp_driving.shape[0]
        feature_3d = feature_3d.expand(n, *feature_3d.shape[1:])
        kp_source = kp_source.expand(n, *kp_source.shape[1:])
        out = self.warping_module(feature_3d, kp_driving=kp_driving, kp_source=kp_source)
        out["out"] = self.spade_generator(out["out"])
        return out

    @staticmethod
    def parse_output(out: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, truncated as published (not rounded)."""
        images = np.transpose(out.detach().cpu().numpy(), (0, 2, 3, 1))
        return np.clip(np.clip(images, 0, 1) * 255, 0, 255).astype(np.uint8)

    @staticmethod
    def calc_ratio(lmk_lst) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per landmark set (203, 2): the eye close ratios (1, 2) and the lip close ratio (1, 1)."""
        eyes = [calc_eye_close_ratio(np.asarray(lmk)[None]) for lmk in lmk_lst]
        lips = [calc_lip_close_ratio(np.asarray(lmk)[None]) for lmk in lmk_lst]
        return eyes, lips

    def calc_combined_eye_ratio(self, c_d_eyes_i, source_lmk: np.ndarray) -> torch.Tensor:
        """(1, 3): the source's two eye ratios and the driving frame's left one (c_d_eyes_i[0][0])."""
        source = calc_eye_close_ratio(np.asarray(source_lmk)[None])[0]
        values = [source[0], source[1], float(np.asarray(c_d_eyes_i).reshape(-1)[0])]
        return torch.tensor([values], dtype=self.dtype)

    def calc_combined_lip_ratio(self, c_d_lip_i, source_lmk: np.ndarray) -> torch.Tensor:
        """(1, 2): the source's lip ratio and the driving frame's (c_d_lip_i[0])."""
        source = calc_lip_close_ratio(np.asarray(source_lmk)[None])[0, 0]
        return torch.tensor([[source, float(np.asarray(c_d_lip_i).reshape(-1)[0])]], dtype=self.dtype)

    def transfer_motion(self, source_info: dict, driving_infos: dict, **options) -> torch.Tensor:
        """The driving keypoints (T, K, 3) the published animate loop feeds to warp_decode; the
        options are `motion.transfer_motion`'s."""
        return motion.transfer_motion(self, source_info, driving_infos, **options)
