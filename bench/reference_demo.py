"""The published demo's way of animating, as a whole process: the baseline that bench/engine.py races.

    .venv/bin/python bench/reference_demo.py --checkpoint C --source IMG --driving VIDEO --out OUT.mp4

Like the published `demo.py` of the checkpoint's family (FOMM's, TPSMM's, LivePortrait's
`inference.py`): build the networks and
load the weights as they are (no folding, fusing or layout changes), read every driving frame into
memory first, then one frame at a time in float32 run the keypoint detector and the whole model
(FOMM: the generator, the source encoded again each frame, the full-resolution deformed map
included; TPSMM: the dense motion network and the inpainting network, relative motion with the
movement's scale adapted, no background motion, as its demo; LivePortrait: the source's features
and keypoints once, then per frame the motion extractor, the motion transfer with stitching, the
warping module and the decoder, 256x256 crops in and 512x512 out), keep every prediction, and write
the video at the end. Only the file formats are ours (our checkpoint loader, ffmpeg through
imageio-ffmpeg), so the race compares the inference path and the pipeline around it, not file parsing.
"""

import argparse
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import load_checkpoint  # noqa: E402
from engine.families.fomm import normalize_kp  # noqa: E402
from engine.families.tpsmm import relative_kp  # noqa: E402
from engine.media.video_io import load_image, probe_video, read_frames, resize_image  # noqa: E402


def published_step(model, source, initial):
    """For a source and the first driving frame (1, 3, 256, 256): a function of one driving frame
    computing it as the family's published demo does (relative motion). FOMM and TPSMM recompute
    everything but the source's keypoints; LivePortrait keeps the source's features and keypoints,
    as its pipeline does, and per frame runs the motion extractor, the motion transfer with
    stitching, the warping module and the decoder with its spectral norms."""
    if model.family == "liveportrait":
        source_info, initial_info = model.get_kp_info(source), model.get_kp_info(initial)
        f_s, x_s = model.extract_feature_3d(source), model.transform_keypoint(source_info)

        def step(frame):
            x_d = model.transfer_motion(source_info, model.get_kp_info(frame), driving_initial=initial_info)
            return model.warp_decode(f_s, x_s, x_d)["out"]

        return step
    kp_source, kp_initial = model.kp_detector(source), model.kp_detector(initial)
    return lambda frame: published_frame(model, source, kp_source, kp_initial, frame)["prediction"]


def published_frame(model, source, kp_source, kp_initial, driving_frame):
    """One FOMM or TPSMM frame as the published demo computes it (relative motion), everything recomputed."""
    kp = model.kp_detector(driving_frame)
    if model.family == "tpsmm":
        kp_norm = relative_kp(kp_source, kp, kp_initial)
        motion = model.dense_motion_network(source_image=source, kp_driving=kp_norm, kp_source=kp_source)
        return model.inpainting_network(source, motion)
    kp_norm = normalize_kp(kp_source, kp, kp_initial, True, True, True)
    return model.generator(source, kp_source=kp_source, kp_driving=kp_norm)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("--checkpoint", "--source", "--driving", "--out"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint).eval()
    h, w = getattr(model, "input_shape", model.frame_shape)  # LivePortrait: its 256x256 crops
    fps = probe_video(args.driving).fps
    source = (
        torch.from_numpy(resize_image(load_image(args.source), h, w)).permute(2, 0, 1)[None].float() / 255
    )
    driving = [
        torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255 for f in read_frames(args.driving, h, w)
    ]
    predictions = []
    with torch.no_grad():
        step = published_step(model, source, driving[0])
        for frame in driving:
            predictions.append(step(frame)[0].permute(1, 2, 0).numpy())
    h, w = predictions[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(args.out, (w, h), fps=fps, macro_block_size=1)
    writer.send(None)
    for image in predictions:
        writer.send(np.ascontiguousarray((image.clip(0, 1) * 255).round().astype(np.uint8)))
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
