"""What every registered family must do, checked on each alike (tests/families.py names their
fixtures): be recognised and loaded by the registry, describe what it offers, refuse what it does
not, and render through the fast path what its published loop renders."""

import pytest
import torch
from pydantic import ValidationError

from contract.options import MOTION_OPTIONS, AnimationOptions
from engine import load_checkpoint
from engine.animator import Animator
from engine.checkpoints import Checkpoint
from engine.errors import RenderError
from engine.families import FAMILIES, family_for, family_of
from engine.pipeline import RenderOptions
from tests.conftest import TPSMM, need_shared
from tests.families import CASES, FamilyCase


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.float() - b.float()) ** 2).mean()))


@pytest.fixture(scope="module")
def checkpoint_of(tmp_path_factory):
    """Each family's small checkpoint, made once for the module."""
    made = {}

    def checkpoint(family_case: FamilyCase):
        if family_case.name not in made:
            made[family_case.name] = family_case.checkpoint(tmp_path_factory.mktemp(family_case.name))
        return made[family_case.name]

    return checkpoint


@pytest.fixture(params=CASES, ids=str)
def case(request, checkpoint_of) -> tuple[FamilyCase, object]:
    return request.param, checkpoint_of(request.param)


def test_every_registered_family_has_its_test_fixtures():
    assert {c.name for c in CASES} == {family.name for family in FAMILIES}


def test_the_registry_recognises_loads_and_describes_it(case):
    family_case, path = case
    assert family_for(Checkpoint(path)).name == family_case.name
    model = load_checkpoint(path)
    family = family_of(model)
    assert family.name == model.family == family_case.name and not model.training
    capabilities = Animator(model, name="m").capabilities
    assert capabilities.family == family_case.name and capabilities.title == family.title
    assert capabilities.modes[0] == "relative" and set(capabilities.options) <= set(MOTION_OPTIONS)
    assert tuple(capabilities.frame_size) == tuple(model.frame_shape)
    report = family.report(load_checkpoint(path))
    assert report["family"] == family_case.name and report["modes"] == capabilities.modes
    assert set(report["parameters"]) == {name for name, _ in model.named_children()}


def test_options_it_does_not_offer_are_refused_naming_them(case):
    family_case, path = case
    animator = Animator(load_checkpoint(path), name="m")
    defaults = AnimationOptions()
    for field in MOTION_OPTIONS:
        if field == "mode" or field in animator.capabilities.options:
            continue
        value = AnimationOptions.model_fields[field].annotation
        other = {bool: not getattr(defaults, field), float: 2.0}.get(value)
        if other is None:  # a choice: any other of its values
            other = next(c for c in value.__args__ if c != getattr(defaults, field))
        with pytest.raises(RenderError, match=f"^{field}: ") as refused:
            animator.check_options(AnimationOptions(**{field: other}))
        assert refused.value.code == "invalid_option"


def test_fp32_batches_equal_the_published_loop(case, real_frames):
    family_case, path = case
    source, driving = real_frames
    expected = family_case.published_loop(load_checkpoint(path), source, driving)
    animator = Animator(load_checkpoint(path))
    state = animator.prepare_source(source, precision="fp32")
    got = torch.cat([animator.animate_batch(state, driving[:3]), animator.animate_batch(state, driving[3:])])
    assert float((got - expected).abs().max()) < family_case.tolerance


@pytest.mark.parametrize(
    "family_case, options",
    [(c, options) for c in CASES for options in c.option_sets],
    ids=[f"{c}-{'-'.join(map(str, options.values()))}" for c in CASES for options in c.option_sets],
)
def test_bf16_stays_above_35_db_against_fp32(family_case, options, checkpoint_of, real_frames):
    source, driving = real_frames
    animator = Animator(load_checkpoint(checkpoint_of(family_case)))
    fp32 = animator.animate_batch(animator.prepare_source(source, "fp32", **options), driving)
    bf16 = animator.animate_batch(animator.prepare_source(source, "bf16", **options), driving)
    assert bf16.dtype in (torch.float32, torch.bfloat16)
    assert psnr(bf16, fp32) >= 35, options


def test_modes_a_model_cannot_render_are_invalid_options(small_checkpoint):
    source = torch.rand(1, 3, 64, 64)
    without_background = Animator(load_checkpoint(need_shared(TPSMM / "tpsmm-small-nobg.pth.tar")))
    with pytest.raises(RenderError, match="no background motion predictor") as error:
        without_background.prepare_source(source, background_motion=True)
    assert error.value.code == "invalid_option"
    fomm = Animator(load_checkpoint(small_checkpoint))
    with pytest.raises(RenderError, match="mode 'avd' is not available with this fomm model") as error:
        fomm.prepare_source(source, mode="avd")
    assert error.value.code == "invalid_option"
    with pytest.raises(ValidationError, match="'relative', 'absolute' or 'avd'"):
        RenderOptions(mode="standard")
