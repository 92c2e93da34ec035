"""Training pipeline: warps, losses, a tiny real training run, checkpoints, resume and evaluation."""

import copy
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from engine import load_checkpoint
from engine.families import family_of
from engine.families.fomm import build_model
from engine.media.video_io import probe_video, read_frames
from engine.train.dataset import Augmentation, DataError, FramePairs
from engine.train.discriminator import MultiScaleDiscriminator
from engine.train.evaluate import evaluate, score_video
from engine.train.losses import equivariance_losses
from engine.train.trainer import Trainer, read_training_config
from engine.train.transforms import RandomWarp
from engine.train.vgg19 import Vgg19Error, Vgg19Features, load_vgg19
from tests.conftest import ROOT

ANIMATE = [sys.executable, "-m", "cli.main"]
TINY_MODEL = {
    "common_params": {"num_kp": 5, "num_channels": 3, "estimate_jacobian": True},
    "kp_detector_params": {
        "temperature": 0.1, "block_expansion": 8, "max_features": 32, "scale_factor": 0.5, "num_blocks": 2,
    },
    "generator_params": {
        "block_expansion": 8, "max_features": 32, "num_down_blocks": 1, "num_bottleneck_blocks": 1,
        "estimate_occlusion_map": True,
        "dense_motion_params": {
            "block_expansion": 8, "max_features": 32, "num_blocks": 2, "scale_factor": 0.5,
        },
    },
    "discriminator_params": {
        "scales": [1], "block_expansion": 8, "max_features": 32, "num_blocks": 3, "sn": True,
    },
}  # fmt: skip


def tiny_config(**train_params) -> dict:
    return {
        "dataset_params": {
            "frame_shape": [32, 32, 3],
            "augmentation_params": {
                "flip_param": {"horizontal_flip": True, "time_flip": True},
                "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1},
            },
        },
        "model_params": copy.deepcopy(TINY_MODEL),
        "train_params": {
            "num_epochs": 1, "num_repeats": 40, "batch_size": 4, "scales": [1, 0.5, 0.25],
            "lr_generator": 1e-3, "lr_kp_detector": 1e-3, "lr_discriminator": 1e-3,
            "log_every": 1, "checkpoint_every": 5, "picture_every": 5, **train_params,
        },
    }  # fmt: skip


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_animate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*ANIMATE, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data_dir(clip, tmp_path_factory) -> Path:
    """A short real clip, plus the same clip's first second as a folder of PNG frames."""
    root = tmp_path_factory.mktemp("data")
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-v", "error", "-i", str(clip), "-t", "1.5", str(root / "talk.mp4")], check=True)
    frames = root / "talk-frames"
    frames.mkdir()
    for i, frame in enumerate(read_frames(root / "talk.mp4", 48, 48)):
        if i < 25:
            Image.fromarray(frame).save(frames / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory) -> Path:
    """20 steps of real training at 32 px through the CLI."""
    run = tmp_path_factory.mktemp("run")
    config = write_config(run.parent / "tiny.yaml", tiny_config())
    result = run_animate(
        "train", "--config", config, "--data", data_dir, "--out", run, "--steps", "20", "--threads", "1"
    )
    assert result.returncode == 0, result.stderr
    return run


def test_zero_parameter_warp_is_the_identity():
    warp = RandomWarp.random(3, sigma_affine=0.0, sigma_tps=0.0, points_tps=5)
    points = torch.rand(3, 7, 2) * 2 - 1
    assert torch.allclose(warp.warp_coordinates(points), points, atol=1e-6)
    assert torch.allclose(warp.jacobian(points), torch.eye(2).expand(3, 7, 2, 2), atol=1e-5)
    frame = torch.rand(3, 3, 24, 20)
    assert torch.allclose(warp.warp_frame(frame), frame, atol=1e-5)
    identity = RandomWarp.identity(3)
    assert torch.equal(identity.theta, warp.theta) and torch.equal(
        identity.control_params, warp.control_params
    )


def test_random_warp_jacobian_matches_finite_differences():
    torch.manual_seed(0)
    warp = RandomWarp.random(2, sigma_affine=0.1, sigma_tps=0.05, points_tps=5)
    points = (torch.rand(2, 4, 2) * 1.6 - 0.8).double()
    warp.theta, warp.control_params = warp.theta.double(), warp.control_params.double()
    warp.control_points = warp.control_points.double()
    eps = 1e-6
    numeric = torch.stack(
        [
            (warp.warp_coordinates(points + eps * d) - warp.warp_coordinates(points - eps * d)) / (2 * eps)
            for d in torch.eye(2, dtype=torch.float64)
        ],
        dim=-1,
    )  # (N, M, 2 outputs, 2 inputs)
    assert torch.allclose(warp.jacobian(points), numeric, atol=1e-5)
    assert not torch.allclose(numeric, torch.eye(2, dtype=torch.float64).expand_as(numeric), atol=1e-3)


def test_equivariance_loss_is_zero_for_the_identity_and_not_for_a_warp():
    torch.manual_seed(0)
    detector = build_model(TINY_MODEL, (32, 32)).kp_detector.eval()
    with torch.no_grad():
        detector.jacobian.weight.normal_(std=0.05)  # jacobians that differ from the identity
    frame = torch.rand(2, 3, 32, 32)
    kp = detector(frame)
    identity = RandomWarp.identity(2)
    value, jacobian = equivariance_losses(kp, detector(identity.warp_frame(frame)), identity, 10, 10)
    assert float(value.detach()) < 1e-5 and float(jacobian.detach()) < 1e-5
    warp = RandomWarp.random(2, sigma_affine=0.1, sigma_tps=0.01, points_tps=5)
    value, jacobian = equivariance_losses(kp, detector(warp.warp_frame(frame)), warp, 10, 10)
    assert float(value.detach()) > 1e-3 and float(jacobian.detach()) > 1e-3


def test_dataset_decodes_videos_and_frame_folders_once_as_uint8(data_dir):
    dataset = FramePairs(data_dir, (32, 32), num_repeats=3, seed=1)
    assert [p.name for p in dataset.paths] == ["talk-frames", "talk.mp4"]
    assert [v.shape for v in dataset.videos] == [
        (25, 32, 32, 3),
        (probe_video(data_dir / "talk.mp4").frames, 32, 32, 3),
    ]
    assert all(v.dtype == np.uint8 for v in dataset.videos)
    assert len(dataset) == 6
    item = dataset[1]
    assert item["source"].shape == item["driving"].shape == (3, 32, 32)
    assert float(item["source"].min()) >= 0 and float(item["driving"].max()) <= 1


AFFINE = Augmentation(False, False, 0.0, 0.0, 0.0, 0.0, degrees=10, scale=0.1, translate=0.05)


@pytest.fixture()
def stills_dir(portrait, tmp_path) -> Path:
    """A portrait photo, and a still video: a folder of three copies of the same portrait."""
    root = tmp_path / "stills"
    frames = root / "static-frames"
    frames.mkdir(parents=True)
    image = Image.open(portrait).convert("RGB").resize((96, 96))
    for i in range(3):
        image.save(frames / f"{i}.png")
    (root / "portrait.jpg").symlink_to(portrait)
    return root


def test_photos_need_affine_views(stills_dir):
    with pytest.raises(DataError, match="portrait.jpg.*affine_param"):
        FramePairs(stills_dir, (32, 32))
    result = run_animate(
        "train", "--config", write_config(stills_dir.parent / "c.yaml", tiny_config()),
        "--data", stills_dir, "--out", stills_dir.parent / "run", "--steps", "1",
    )  # fmt: skip
    assert result.returncode == 2 and "affine_param" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_affine_views_move_a_photo_and_move_both_frames_of_a_video_together(stills_dir):
    dataset = FramePairs(stills_dir, (32, 32), num_repeats=20, augmentation=AFFINE, seed=2)
    assert [p.name for p in dataset.paths] == ["portrait.jpg", "static-frames"]
    assert [v.shape[:3] for v in dataset.videos] == [(1, 64, 64), (3, 64, 64)]  # cached at 2x
    photo = [dataset[i] for i in range(0, 40, 2)]
    video = [dataset[i] for i in range(1, 40, 2)]
    unwarped = torch.nn.functional.avg_pool2d(
        torch.from_numpy(dataset.videos[1][0]).permute(2, 0, 1).float()[None] / 255, 2
    )[0]
    for item in photo + video:
        assert item["source"].shape == item["driving"].shape == (3, 32, 32)
        assert float(item["source"].min()) >= 0 and float(item["source"].max()) <= 1
    # A photo's two views are two different warps of it.
    assert min(float((i["source"] - i["driving"]).abs().mean()) for i in photo) > 0.005
    # Every frame of the still video is the same, so one shared warp per pair gives equal frames,
    # which still differ from the unwarped frame.
    assert all(torch.equal(i["source"], i["driving"]) for i in video)
    assert min(float((i["source"] - unwarped).abs().mean()) for i in video) > 0.005


@pytest.mark.parametrize(
    "section, values",
    [("affine_param", {"scale": 1.5}), ("affine_param", {"degrees": "ten"}), ("jitter_param", {"hue": -0.1})],
)
def test_out_of_range_augmentation_is_refused_in_one_line(section, values, data_dir, tmp_path):
    config = tiny_config()
    config["dataset_params"]["augmentation_params"][section] = values
    result = run_animate(
        "train", "--config", write_config(tmp_path / "c.yaml", config),
        "--data", data_dir, "--out", tmp_path / "run", "--steps", "1",
    )  # fmt: skip
    key = next(iter(values))
    assert result.returncode == 2 and f"{section}.{key} must be a number" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_near_identity_affine_view_is_the_frame_averaged_down(stills_dir):
    tiny = Augmentation(False, False, 0.0, 0.0, 0.0, 0.0, degrees=1e-6, scale=1e-6, translate=1e-6)
    dataset = FramePairs(stills_dir, (32, 32), augmentation=tiny)
    frame = torch.from_numpy(dataset.videos[0][0]).permute(2, 0, 1).float()[None] / 255
    expected = torch.nn.functional.avg_pool2d(frame, 2)[0]
    assert torch.allclose(dataset[0]["source"], expected, atol=1e-4)


def test_tiny_training_run_lowers_the_loss(tiny_run):
    lines = (tiny_run / "log.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    totals = [float(line.split("\t")[header.index("total")]) for line in lines[1:]]
    assert len(totals) == 20
    assert {"reconstruction", "equivariance_value", "equivariance_jacobian"} <= set(header)
    assert np.mean(totals[-5:]) < 0.8 * np.mean(totals[:5])
    assert sorted(p.name for p in (tiny_run / "pictures").iterdir()) == [
        f"step-{s:07d}.png" for s in (5, 10, 15, 20)
    ]
    assert Image.open(tiny_run / "pictures" / "step-0000020.png").size == (4 * 32, 4 * 32)


def test_trained_checkpoint_loads_in_the_engine_and_renders(tiny_run, data_dir, portrait, tmp_path):
    model = load_checkpoint(tiny_run / "model.pth.tar")
    assert model.frame_shape == (32, 32) and model.num_kp == 5
    assert model.config["generator_params"]["num_down_blocks"] == 1
    step = load_checkpoint(tiny_run / "checkpoints" / "step-0000020.pth.tar")
    for a, b in zip(model.parameters(), step.parameters(), strict=True):
        assert torch.equal(a, b)
    # the final file's batch-norm statistics are recomputed for the final weights
    means = [(k, v) for k, v in model.state_dict().items() if k.endswith("running_mean")]
    assert any(not torch.equal(v, step.state_dict()[k]) for k, v in means)
    out = tmp_path / "out.mp4"
    result = run_animate(
        "render", "--source", portrait, "--driving", data_dir / "talk.mp4",
        "--checkpoint", tiny_run / "model.pth.tar", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rendered = probe_video(out)
    assert (rendered.width, rendered.height) == (32, 32)
    assert rendered.frames == probe_video(data_dir / "talk.mp4").frames


def test_resume_continues_from_the_saved_step(tiny_run, data_dir, tmp_path):
    trainer = Trainer(
        read_training_config(write_config(tmp_path / "c.yaml", tiny_config())), data_dir, tmp_path / "r"
    )
    trainer.resume(tiny_run / "checkpoints" / "step-0000015.pth.tar")
    saved = torch.load(tiny_run / "checkpoints" / "step-0000015.pth.tar", weights_only=True)
    assert trainer.step == 15
    assert torch.equal(trainer.model.kp_detector.kp.weight, saved["kp_detector"]["kp.weight"])
    assert trainer.optimizers["generator"].state_dict()["state"]  # Adam moments came back
    result = trainer.train(17)
    assert result["steps"] == 17
    assert (tmp_path / "r" / "checkpoints" / "step-0000017.pth.tar").is_file()


def test_eval_of_a_model_that_copies_the_source_is_the_baseline(data_dir):
    frames = np.stack(list(read_frames(data_dir / "talk.mp4", 32, 32)))
    score = score_video("talk", frames, lambda source, driving: source.expand_as(driving), batch_size=7)
    assert score.model_l1 == score.baseline_l1
    expected = np.abs(frames.astype(np.float64) / 255 - frames[:1].astype(np.float64) / 255).mean()
    assert score.baseline_l1 == pytest.approx(expected, rel=1e-6)
    assert score.baseline_l1 > 0 and score.frames == len(frames)


def test_eval_cli_reports_model_and_baseline_per_video(tiny_run, data_dir):
    result = run_animate("eval", "--checkpoint", tiny_run / "model.pth.tar", "--data", data_dir, "--json")
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    assert [v["name"] for v in report["videos"]] == ["talk-frames", "talk"]
    model = load_checkpoint(tiny_run / "model.pth.tar")
    direct = evaluate(family_of(model).reconstructor(model, "cpu"), data_dir, model.frame_shape)
    assert report["model_l1"] == pytest.approx(direct.model_l1, rel=1e-5)
    assert report["baseline_l1"] == pytest.approx(direct.baseline_l1, rel=1e-9)
    assert report["model_l1"] != report["baseline_l1"]


def test_adversarial_training_writes_the_published_discriminator_layout(data_dir, tmp_path):
    config = tiny_config(loss_weights={"generator_gan": 1, "feature_matching": [10, 10, 10]})
    trainer = Trainer(
        read_training_config(write_config(tmp_path / "adv.yaml", config)), data_dir, tmp_path / "r"
    )
    result = trainer.train(2)
    assert {"generator_gan", "feature_matching", "discriminator_gan"} <= set(result["losses"])
    saved = torch.load(tmp_path / "r" / "checkpoints" / "step-0000002.pth.tar", weights_only=True)
    assert "discs.1.down_blocks.0.conv.weight_orig" in saved["discriminator"]
    assert "discs.1.conv.weight_orig" in saved["discriminator"]
    fresh = MultiScaleDiscriminator(**TINY_MODEL["common_params"], **TINY_MODEL["discriminator_params"])
    fresh.load_state_dict(saved["discriminator"])


def test_vgg19_loads_a_torchvision_layout_file_and_trains(data_dir, tmp_path):
    torch.manual_seed(0)
    state = {key: torch.randn_like(t) * 0.05 for key, t in Vgg19Features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files also hold the classifier
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    vgg = load_vgg19(path)
    assert torch.equal(vgg.features[28].weight, state["features.28.weight"])
    assert [f.shape[1] for f in vgg(torch.rand(1, 3, 32, 32))] == [64, 128, 256, 512, 512]
    config = tiny_config(scales=[1, 0.5])
    trainer = Trainer(
        read_training_config(write_config(tmp_path / "c.yaml", config)), data_dir, tmp_path / "r", vgg19=path
    )
    assert trainer.train(1)["losses"]["reconstruction"] > 0
    del state["features.0.bias"]
    torch.save(state, path)
    with pytest.raises(Vgg19Error, match="features.0.bias"):
        load_vgg19(path)


def test_bad_training_inputs_exit_2_with_one_line(data_dir, tmp_path):
    good = write_config(tmp_path / "good.yaml", tiny_config())
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_params: [1, 2]\n")
    big_batch = write_config(tmp_path / "big.yaml", tiny_config(batch_size=1000))
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ("train", "--config", bad, "--data", data_dir, "--out", tmp_path / "o1"),
        ("train", "--config", tmp_path / "missing.yaml", "--data", data_dir, "--out", tmp_path / "o2"),
        ("train", "--config", good, "--data", tmp_path / "nowhere", "--out", tmp_path / "o3"),
        ("train", "--config", good, "--data", empty, "--out", tmp_path / "o4"),
        ("train", "--config", big_batch, "--data", data_dir, "--out", tmp_path / "o5"),
        ("train", "--config", good, "--data", data_dir, "--out", tmp_path / "o6", "--resume", junk),
        ("train", "--config", good, "--data", data_dir, "--out", tmp_path / "o7", "--vgg19", junk),
        ("train", "--config", good, "--data", data_dir, "--out", tmp_path / "o8", "--steps", "0"),
        ("eval", "--checkpoint", junk, "--data", data_dir),
        ("eval", "--checkpoint", junk, "--data", empty),
    ]
    for args in cases:
        result = run_animate(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("animate: error: "), (args, result.stderr)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 9))


def test_bundled_starter_model_loads_with_its_config():
    model = load_checkpoint(ROOT / "weights" / "starter.pth.tar")
    config = read_training_config(ROOT / "engine" / "train" / "configs" / "starter-64.yaml")
    assert model.frame_shape == tuple(config["dataset_params"]["frame_shape"][:2]) == (64, 64)

    def agrees(stored: dict, given: dict) -> bool:
        """Every value the config gives is the one stored (the loader adds inferred defaults)."""
        return all(agrees(stored[k], v) if isinstance(v, dict) else stored[k] == v for k, v in given.items())

    for section in ("common_params", "kp_detector_params", "generator_params"):
        assert agrees(model.config[section], config["model_params"][section]), section


def test_batch_norm_statistics_are_recomputed_evenly_for_the_final_weights(data_dir, tmp_path):
    config = read_training_config(write_config(tmp_path / "tiny.yaml", tiny_config()))
    trainer = Trainer(config, data_dir, tmp_path / "run")
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.running_mean.fill_(100.0)
    trainer.recalibrate_batch_norm(batches=2)
    # two batches: networks run once per batch (generator) or twice (keypoints of source and driving)
    assert {int(m.num_batches_tracked) for m in norms} == {2, 4}
    assert all(float(m.running_mean.abs().max()) < 100.0 and m.momentum == 0.1 for m in norms)
