"""Paste-back on a real photo: the photo is kept where nothing changes, the blend has no edge, the
colour is the photo's and never one it lacks, and the photo's detail follows the motion."""

import cv2
import numpy as np
import pytest

from engine.subject.box import Box
from engine.subject.cutout import cut_out
from engine.subject.gamut import LUMA, ColourGamut, luma_and_chroma
from engine.subject.paste import ModelFrame, Paster
from tests.conftest import MEDIA, need_shared

MODEL = 64  # the model's side in these tests


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from engine.media.video_io import load_image

    return load_image(need_shared(MEDIA / "images" / "s0.jpg"))  # 600x704


def identity_grid(side: int, shift_x: float = 0.0) -> np.ndarray:
    """(side, side, 2) sampling grid (corners aligned) that reads `shift_x` model pixels to the left:
    the content appears moved right by shift_x."""
    axis = np.linspace(-1, 1, side, dtype=np.float32)
    grid = np.dstack(np.meshgrid(axis, axis)).astype(np.float32)
    grid[..., 0] -= shift_x * 2 / (side - 1)
    return grid


def perfect_still(photo: np.ndarray, box: Box) -> ModelFrame:
    """What an ideal model renders of the crop with no motion: the crop at model resolution."""
    return ModelFrame(
        cut_out(photo, box, MODEL, MODEL), identity_grid(MODEL), np.ones((MODEL, MODEL), np.float32)
    )


def reddest(image: np.ndarray) -> np.ndarray:
    """The colour of an image's reddest pixel (R - luma): a colour it has, for a mouth opening."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    return pixels[np.argmax(pixels[:, 0] - pixels @ LUMA)].astype(np.uint8)


def test_pixels_outside_the_mask_are_the_photos_exactly(photo):
    box = Box(200, 30, 200, 200)
    still = perfect_still(photo, box)
    changed = still.image.copy()
    mouth = reddest(cut_out(photo, box, 200, 200))
    changed[28:36, 20:44] = mouth  # a mouth opening: the only change
    paster = Paster(photo, box, still)
    out, weights = paster.composite(ModelFrame(changed, still.deformation, still.occlusion))
    assert out.shape == photo.shape
    untouched = weights == 0
    assert 0.9 < untouched.mean() < 1, "only the changed region and its soft edge are blended"
    assert untouched[30:230, 200:400].mean() > 0.5, "most of the crop is the photo's too"
    assert np.array_equal(out[untouched], photo[untouched])
    region = out[30 + 28 * 200 // 64 : 30 + 36 * 200 // 64, 200 + 20 * 200 // 64 : 200 + 44 * 200 // 64]
    assert np.abs(region.astype(int).mean(axis=(0, 1)) - mouth).max() < 40, "the change shows"
    assert np.array_equal(paster(still), photo), "a frame equal to the still leaves the photo as it is"


def test_the_mask_has_no_step_at_the_crop_border(photo):
    box = Box(200, 30, 200, 200)
    still = perfect_still(photo, box)
    everywhere = np.clip(still.image.astype(int) + 60, 0, 255).astype(np.uint8)  # the whole crop changes
    _, weights = Paster(photo, box, still).composite(ModelFrame(everywhere))
    assert weights[130, 300] == pytest.approx(1.0), "the changed crop is fully blended in its middle"
    steps = max(np.abs(np.diff(weights, axis=0)).max(), np.abs(np.diff(weights, axis=1)).max())
    assert steps < 0.12, f"largest change of weight between neighbouring pixels: {steps:.3f}"
    for inner_side in (
        weights[30, 200:400],
        weights[229, 200:400],
        weights[30:230, 200],
        weights[30:230, 399],
    ):
        assert inner_side.max() < 0.01, "the weights fall to zero at the crop's inner sides"


def test_a_box_on_the_photos_border_is_not_faded_there(photo):
    box = Box(-20, 50, 200, 200)
    still = perfect_still(photo, box)
    everywhere = np.clip(still.image.astype(int) + 60, 0, 255).astype(np.uint8)
    out, weights = Paster(photo, box, still).composite(ModelFrame(everywhere))
    assert weights[150, 0] == pytest.approx(1.0), "no fade where the box meets the image border"
    assert (weights[:50] == 0).all() and (weights[:, 180:] == 0).all()
    assert np.array_equal(out[:50], photo[:50])


def test_colour_matching_moves_the_mean_toward_the_photo(photo):
    box = Box(200, 30, 200, 200)
    crop = cut_out(photo, box, MODEL, MODEL).astype(np.float32)
    cast = np.array([25, -10, -20], np.float32)  # the model renders warmer and darker than the photo
    still_image = np.clip(crop * 0.85 + cast, 0, 255).astype(np.uint8)
    moved = np.roll(still_image, 3, axis=0)  # the whole crop moves down: every pixel changes
    still = ModelFrame(still_image, identity_grid(MODEL), None)
    frame = ModelFrame(moved, None, None)  # a model without a motion field: colour matching only
    out, weights = Paster(photo, box, still).composite(frame)
    core = weights > 0.99
    photo_mean = photo[core].mean(axis=0)
    rendered = cv2.resize(moved, (200, 200), interpolation=cv2.INTER_CUBIC)
    rendered_full = np.zeros_like(photo)
    rendered_full[30:230, 200:400] = rendered
    before = np.abs(rendered_full[core].mean(axis=0) - photo_mean).max()
    after = np.abs(out[core].mean(axis=0) - photo_mean).max()
    assert before > 15 and after < before / 4, (before, after)


def test_the_photos_detail_follows_the_motion(photo):
    box = Box(200, 30, 256, 256)
    still = perfect_still(photo, box)
    shift = 2  # model pixels to the right: 8 photo pixels
    moved = np.ascontiguousarray(np.roll(still.image, shift, axis=1))
    frame = ModelFrame(moved, identity_grid(MODEL, shift), still.occlusion)
    out = Paster(photo, box, still)(frame)
    expected = np.roll(photo, shift * 256 // MODEL, axis=1)
    inner = (slice(30 + 64, 30 + 192), slice(200 + 64, 200 + 192))
    upscaled = photo.copy()
    upscaled[30:286, 200:456] = cv2.resize(moved, (256, 256), interpolation=cv2.INTER_CUBIC)
    transported_error = np.abs(out[inner].astype(int) - expected[inner]).mean()
    upscaled_error = np.abs(upscaled[inner].astype(int) - expected[inner]).mean()
    unmoved_error = np.abs(out[inner].astype(int) - photo[inner]).mean()
    assert transported_error < upscaled_error / 2, (transported_error, upscaled_error)
    assert transported_error < unmoved_error / 2, "the detail moved with the content, not left in place"


def test_a_colour_the_photo_lacks_shows_only_as_its_lightness(photo):
    """A model's tint (green hair tips) is held to the photo's colours, its luma kept."""
    box = Box(200, 30, 200, 200)
    still = perfect_still(photo, box)
    changed = still.image.copy()
    changed[4:20, 10:54] = (40, 200, 40)  # green in the hair: the photo has none
    frame = ModelFrame(changed, still.deformation, still.occlusion)
    out, weights = Paster(photo, box, still).composite(frame)
    blended = weights > 0

    def greenness(pixels: np.ndarray) -> np.ndarray:  # linear: no mixture is greener than its colours
        return pixels[..., 1].astype(float) - (pixels[..., 0].astype(float) + pixels[..., 2]) / 2

    assert greenness(out[blended]).max() <= greenness(cut_out(photo, box, 200, 200)).max() + 3  # rounding
    region = out[30 + 6 * 200 // 64 : 30 + 18 * 200 // 64, 200 + 12 * 200 // 64 : 200 + 52 * 200 // 64]
    lightness = float(luma_and_chroma(region)[0].mean())
    assert abs(lightness - float(LUMA @ (40, 200, 40))) < 25, "the change shows"


def test_a_grayscale_gamut_takes_every_colour_to_its_gray():
    rng = np.random.default_rng(0)
    gray = np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    colours = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    held = ColourGamut(gray).hold(colours)
    assert (held.max(axis=2) == held.min(axis=2)).all(), "R = G = B everywhere"
    assert np.abs(held[..., 0] - luma_and_chroma(colours)[0]).max() <= 0.5, "each at its own luma"
    assert ColourGamut(gray).hold(gray) is gray, "an image inside its gamut is left as it is"


def test_a_two_colour_gamut_keeps_their_mixtures_and_nothing_else():
    red, blue = np.array([200, 40, 40], np.uint8), np.array([40, 40, 200], np.uint8)
    image = np.stack([np.tile(red, (8, 8, 1)), np.tile(blue, (8, 8, 1))])
    gamut = ColourGamut(image)
    purple = ((red.astype(int) + blue) // 2).astype(np.uint8)[None]
    assert np.array_equal(gamut.hold(purple), purple), "a mixture of the two is a colour it has"
    green = np.array([[40, 200, 40]], np.uint8)
    held = gamut.hold(green)[0].astype(int)
    assert held[1] < max(held[0], held[2]), "green is not: it becomes a red-blue of the same luma"
    assert abs(float(LUMA @ held) - float(LUMA @ green[0])) < 1
