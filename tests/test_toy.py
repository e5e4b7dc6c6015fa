"""jenga.toy: the synthetic clips and prompts, the scores read off them, and the pixel-space toy Wan model."""

from __future__ import annotations

import dataclasses
import logging
import math
import re

import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput

from jenga.toy.data import (
    CLEAR_FRAMES,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SPEED,
    ObjectSpec,
    Prompt,
    all_single_prompts,
    random_prompts,
    render,
)
from jenga.toy.model import (
    TRANSFORMER_CONFIG,
    VOCAB,
    WEIGHTS,
    PixelVAE,
    PromptEncoder,
    build_pipeline,
    build_transformer,
    load_pretrained,
    quiet_frame_rounding,
    save_pretrained,
)
from jenga.toy.score import psnr, read_object, ssim, task_score

PIPELINE_LOGGER = "diffusers.pipelines.wan.pipeline_wan"
OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}
TIGHT = 0.2  # RGB distance in [0, 1] units: the object's own pixels, not its anti-aliased rim nor the background


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _colour_mask(video: torch.Tensor, colours: list[str]) -> torch.Tensor:
    """``[B, T, H, W]``: pixels of clip b within TIGHT of ``colours[b]``."""
    unit = (video + 1) / 2
    rgb = torch.tensor([COLOURS[c] for c in colours]).view(-1, 3, 1, 1, 1)
    return (unit - rgb).pow(2).sum(1) < TIGHT**2  # a squared distance: much faster than norm(dim=1) here


def _centroids(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Area and (y, x) centroid per clip and frame of a ``[B, T, H, W]`` mask."""
    height, width = mask.shape[-2:]
    weights = mask.float()
    area = weights.sum((-2, -1))
    yy = torch.arange(height, dtype=torch.float32).view(height, 1)
    xx = torch.arange(width, dtype=torch.float32).view(1, width)
    cy = (weights * yy).sum((-2, -1)) / area.clamp_min(1)
    cx = (weights * xx).sum((-2, -1)) / area.clamp_min(1)
    return area, cy, cx


@pytest.fixture(scope="module")
def singles() -> list[Prompt]:
    return all_single_prompts()


@pytest.fixture(scope="module")
def clips64(singles) -> torch.Tensor:
    return render(singles, 16, 64, 64, _gen(0))


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained()


# ----------------------------------------------------------------------------------------------- render


def test_render_shape_range_and_determinism():
    prompts = random_prompts(6, _gen(3))
    video = render(prompts, 5, 24, 40, _gen(7))
    assert video.shape == (6, 3, 5, 24, 40) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    assert torch.equal(video, render(prompts, 5, 24, 40, _gen(7)))
    assert not torch.allclose(video, render(prompts, 5, 24, 40, _gen(8)))


def test_render_coverage_maps_objects_and_the_shape_deciding_corners(singles):
    """Channel 0: how much the objects cover (1 inside, 0 far away); channel 1: square minus disc of the
    object's size, the corners only, never negative and never inside the disc; the clips are unchanged."""
    prompts = [p for p in singles if p.objects[0].direction == "right"][:4]  # both shapes, several colours
    video, coverage = render(prompts, 3, 64, 64, _gen(5), with_coverage=True)
    assert torch.equal(video, render(prompts, 3, 64, 64, _gen(5)))
    assert coverage.shape == (4, 2, 3, 64, 64) and coverage.min() >= 0 and coverage.max() <= 1
    objects, corners = coverage[:, 0], coverage[:, 1]
    assert objects.amax(dim=(-2, -1)).min() == 1.0 and corners.amax() > 0.5
    for b, prompt in enumerate(prompts):
        corner_share = float((corners[b] > 0).float().mean())
        assert 0.002 < corner_share < 0.03, corner_share  # (4 - pi) r^2 of a frame: about 1 %
        if prompt.objects[0].shape == "disc":  # the disc's corners are background: no coverage there
            assert float((objects[b] * corners[b]).amax()) < 0.5
        else:  # the square fills its corners
            assert float((objects[b][corners[b] > 0.99]).min()) > 0.99


def test_random_prompts_are_seeded_and_mix_one_and_two_objects():
    prompts = random_prompts(40, _gen(1))
    assert prompts == random_prompts(40, _gen(1)) and prompts != random_prompts(40, _gen(2))
    counts = {len(p.objects) for p in prompts}
    assert counts == {1, 2}
    for p in prompts:
        if len(p.objects) == 2:
            assert p.objects[0].colour != p.objects[1].colour
    assert all(len(p.objects) == 1 for p in random_prompts(10, _gen(1), two_objects=0.0))


@pytest.mark.parametrize("frames, height, width", [(0, 16, 16), (4, 7, 16), (4, 16, 7)])
def test_render_validates_size(frames, height, width):
    with pytest.raises(ValueError, match="frames >= 1 and height, width >= 8"):
        render(all_single_prompts()[:1], frames, height, width, _gen())


def test_all_single_prompts_cover_every_combination(singles):
    assert len(singles) == 48 == len(SHAPES) * len(COLOURS) * len(DIRECTIONS)
    assert len(set(singles)) == 48 and all(len(p.objects) == 1 for p in singles)


def test_prompted_colour_in_every_frame_and_no_other(clips64, singles):
    colours = [p.objects[0].colour for p in singles]
    area = _colour_mask(clips64, colours).sum((-2, -1))  # [B, T]
    smallest = math.pi * (0.09 * 64) ** 2
    assert (area >= 0.5 * smallest).all()
    for other in COLOURS:  # no colour the prompt does not name, anywhere
        absent = [i for i, c in enumerate(colours) if c != other]
        assert _colour_mask(clips64[absent], [other] * len(absent)).sum() == 0


def test_two_object_clips_show_the_top_object_in_every_frame():
    prompts = [p for p in random_prompts(30, _gen(5)) if len(p.objects) == 2]
    video = render(prompts, 12, 48, 48, _gen(6))
    area = _colour_mask(video, [p.objects[1].colour for p in prompts]).sum((-2, -1))  # drawn last: never hidden
    assert prompts and (area > 0).all()


def test_centroid_moves_in_prompted_direction_over_first_frames(clips64, singles):
    mask = _colour_mask(clips64[:, :, :CLEAR_FRAMES], [p.objects[0].colour for p in singles])
    _, cy, cx = _centroids(mask)
    step_y, step_x = cy.diff(dim=1), cx.diff(dim=1)  # [B, CLEAR_FRAMES - 1]
    want = torch.tensor([DIRECTIONS[p.objects[0].direction] for p in singles], dtype=torch.float32)
    along = step_y * want[:, :1] + step_x * want[:, 1:]
    across = (step_y * want[:, 1:]).abs() + (step_x * want[:, :1]).abs()
    assert (along >= 0.5 * SPEED[0] * 64).all(), along.min()  # every frame, at least half the slowest speed
    assert (across < 0.5).all(), across.max()  # and straight


def test_objects_never_leave_the_frame(singles):
    video = render(singles, 40, 48, 48, _gen(11))  # long enough for every object to bounce off a wall
    area, _, _ = _centroids(_colour_mask(video, [p.objects[0].colour for p in singles]))
    ratio = area / area.median(dim=1, keepdim=True).values
    assert ((ratio - 1).abs() < 0.25).all(), ratio  # a clipped object would lose up to half its area


# ----------------------------------------------------------------------------------------------- prompts


def test_prompt_parse_round_trips_through_str(singles):
    prompt = Prompt.parse("red disc right")
    assert prompt == Prompt((ObjectSpec("disc", "red", "right"),))
    assert str(prompt) == "a red disc moving right"
    two = Prompt.parse("A Blue square moving up, and a cyan disc moving left")
    assert two.objects == (ObjectSpec("square", "blue", "up"), ObjectSpec("disc", "cyan", "left"))
    for p in [*singles, *random_prompts(20, _gen(2))]:
        assert Prompt.parse(str(p)) == p


@pytest.mark.parametrize("text, needle", [
    ("red disc", "'<colour> <shape> <direction>'"),
    ("red disc moving right quickly", "colours ('red', 'green'"),
    ("red disc right and", "directions ('up', 'down', 'left', 'right')"),
    ("", "shapes ('disc', 'square')"),
    ("purple disc right", "'purple' is not one of ('red', 'green', 'blue', 'yellow', 'magenta', 'cyan')"),
    ("red circle right", "'circle' is not one of ('disc', 'square')"),
    ("red disc sideways", "'sideways' is not one of ('up', 'down', 'left', 'right')"),
])
def test_prompt_parse_rejects_bad_text(text, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        Prompt.parse(text)


@pytest.mark.parametrize("field, value", [("shape", "triangle"), ("colour", "Red"), ("direction", "north")])
def test_object_spec_validates_each_field(field, value):
    good = dict(shape="square", colour="green", direction="down")
    ObjectSpec(**good)
    with pytest.raises(ValueError, match=f"{value!r} is not one of"):
        ObjectSpec(**{**good, field: value})


@pytest.mark.parametrize("count", [0, 3])
def test_prompt_has_one_or_two_objects(count):
    spec = ObjectSpec("disc", "red", "up")
    with pytest.raises(ValueError, match=f"one or two objects, got {count}"):
        Prompt((spec,) * count)


def test_prompt_and_spec_are_frozen():
    prompt = Prompt.parse("red disc up")
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompt.objects = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompt.objects[0].colour = "blue"  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------- task score


def _flip(prompt: Prompt) -> Prompt:
    first = prompt.objects[0]
    return Prompt((dataclasses.replace(first, direction=OPPOSITE[first.direction]), *prompt.objects[1:]))


def _recolour(prompt: Prompt) -> Prompt:
    first = prompt.objects[0]
    colours = list(COLOURS)
    other = colours[(colours.index(first.colour) + 1) % len(colours)]
    return Prompt((dataclasses.replace(first, colour=other), *prompt.objects[1:]))


def test_task_score_is_perfect_on_rendered_clips_64(clips64, singles):
    assert task_score(clips64, singles) == {"task": 100.0, "colour": 100.0, "direction": 100.0, "shape": 100.0,
                                            "single": 100.0}


@pytest.mark.parametrize("shape", ["disc", "square"])
def test_shape_is_read_off_the_largest_blob_and_copies_are_counted(shape):
    """A copy of the object elsewhere in the frame (a generated clip's failure) must not turn a square into an
    "empty box" nor a disc into a square; it shows in ``blobs`` and in the ``single`` score instead."""
    prompt = Prompt((ObjectSpec(shape, "red", "right"),))
    clip = render([prompt], 16, 64, 64, _gen(21))[0]
    shifted = clip.roll(shifts=(32, 32), dims=(2, 3))  # the same object again, half a frame away
    colour = torch.tensor(COLOURS["red"]).view(3, 1, 1) * 2 - 1
    doubled = clip.clone()
    on_copy = (shifted[:, 0] - colour).norm(dim=0) < 0.1
    doubled[:, 0] = torch.where(on_copy, shifted[:, 0], clip[:, 0])  # the copy in the first frame only
    single, twice = read_object(clip, prompt), read_object(doubled, prompt)
    assert single.blobs == 1 and twice.blobs == 2
    assert single.shape_ok and twice.shape_ok
    assert twice.fill == pytest.approx(single.fill, abs=0.02)
    scores = task_score(torch.stack([clip, doubled]), [prompt, prompt])
    assert scores["shape"] == 100 and scores["single"] == 50


def test_task_score_is_perfect_on_rendered_clips_32(singles):
    scores = task_score(render(singles, 8, 32, 32, _gen(1)), singles)
    assert scores["task"] == 100 and scores["direction"] == 100 and scores["colour"] == 100


def test_task_score_catches_wrong_direction_and_colour(clips64, singles):
    flipped = task_score(clips64, [_flip(p) for p in singles])
    assert flipped["direction"] == 0 and flipped["task"] == 0 and flipped["colour"] == 100
    recoloured = task_score(clips64, [_recolour(p) for p in singles])
    assert recoloured["colour"] == 0 and recoloured["task"] == 0


def test_task_score_reads_the_first_object_of_two():
    prompts = [p for p in random_prompts(24, _gen(9)) if len(p.objects) == 2]
    video = render(prompts, 16, 64, 64, _gen(10))
    swapped = [Prompt(p.objects[::-1]) for p in prompts]  # the top object, never hidden
    assert task_score(video, swapped)["task"] == 100


def test_read_object_displacement_follows_direction(clips64, singles):
    for clip, prompt in zip(clips64[:4], singles[:4], strict=True):
        reading = read_object(clip, prompt)
        assert reading.correct and reading.present and reading.direction_ok
        dy, dx = reading.displacement
        want_y, want_x = DIRECTIONS[prompt.objects[0].direction]
        assert dy * want_y + dx * want_x > 0


def test_task_score_validates_inputs(clips64, singles):
    with pytest.raises(ValueError, match="48 clips but 47 prompts"):
        task_score(clips64, singles[:-1])
    with pytest.raises(ValueError, match=r"expected videos \[B, 3, T, H, W\]"):
        task_score(clips64[:, :, 0], singles)  # [B, 3, H, W]: frames missing
    with pytest.raises(ValueError, match=r"expected videos \[B, 3, T, H, W\]"):
        task_score(clips64[:, :2], singles)


# ----------------------------------------------------------------------------------------------- psnr, ssim


def test_psnr_identical_is_very_high(clips64):
    assert (psnr(clips64[:4], clips64[:4]) >= 100).all()


@pytest.mark.parametrize("offset", [0.01, 0.05, 0.25])
def test_psnr_constant_offset_matches_analytic_value(offset):
    reference = torch.zeros(2, 3, 3, 16, 16)  # 0.5 in [0, 1] units: no clamping either way
    other = reference + 2 * offset * torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1)  # [-1, 1] is twice [0, 1]
    expected = 10 * math.log10(1 / offset**2)
    assert psnr(reference, other) == pytest.approx([expected, expected], abs=1e-3)


def test_psnr_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected videos"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_ssim_identical_is_one_and_falls_with_noise(clips64):
    clips = clips64[:2, :, :4]
    assert ssim(clips, clips) == pytest.approx([1.0, 1.0], abs=1e-6)
    noise = torch.randn(clips.shape, generator=_gen(4))
    values = [ssim(clips, (clips + sigma * noise).clamp(-1, 1)) for sigma in (0.02, 0.05, 0.1, 0.2, 0.4)]
    for less, more in zip(values, values[1:], strict=False):
        assert (more < less).all()
    assert (values[0] < 1).all() and (values[-1] > -1).all()
    assert ssim(clips, clips.flip(-1)).shape == (2,)


def test_ssim_rejects_frames_smaller_than_window():
    small = torch.zeros(1, 3, 2, 6, 6)
    with pytest.raises(ValueError, match="smaller than the SSIM window 7"):
        ssim(small, small)
    ssim(small, small, window=5)
    with pytest.raises(ValueError, match="smaller than the SSIM window 11"):
        ssim(torch.zeros(1, 3, 1, 10, 32), torch.zeros(1, 3, 1, 10, 32), window=11)


# ----------------------------------------------------------------------------------------------- model parts


def test_pixel_vae_is_the_clamped_identity():
    vae = PixelVAE()
    assert vae.config.scale_factor_temporal == 1 and vae.config.scale_factor_spatial == 1
    assert vae.config.z_dim == 3
    assert list(vae.config.latents_mean) == [0.0] * 3 and list(vae.config.latents_std) == [1.0] * 3
    z = torch.linspace(-2, 2, 3 * 2 * 4 * 4).view(1, 3, 2, 4, 4)
    out = vae.decode(z)
    assert isinstance(out, DecoderOutput) and torch.equal(out.sample, z.clamp(-1, 1))
    (video,) = vae.decode(z, return_dict=False)
    assert torch.equal(video, z.clamp(-1, 1))
    with pytest.raises(NotImplementedError):
        vae.encode(z)


def test_prompt_encoder_token_ids_and_shape():
    one = Prompt.parse("yellow square left")
    two = Prompt.parse("red disc up and blue square down")
    ids = PromptEncoder.token_ids([None, one, two])
    assert ids.shape == (3, 6) and ids.dtype == torch.long
    assert ids[0].tolist() == [0] * 6 and VOCAB[0] == "<null>"
    assert ids[1].tolist() == [VOCAB.index(w) for w in ("square", "yellow", "left")] + [1, 1, 1]
    assert VOCAB[1] == "<none>"
    assert [VOCAB[i] for i in ids[2].tolist()] == ["disc", "red", "up", "square", "blue", "down"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = PromptEncoder()
    embeds = encoder([None, one, two])
    assert embeds.shape == (3, 6, 64)
    assert torch.equal(embeds[0], encoder.token.weight[0].expand(6, 64) + encoder.slot)


def test_build_transformer_is_seeded():
    a, b, c = build_transformer(1), build_transformer(1), build_transformer(2)
    assert a.config.in_channels == 3 and a.config.num_layers == TRANSFORMER_CONFIG["num_layers"]
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_save_load_round_trip(tmp_path):
    transformer = build_transformer(seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        prompts = PromptEncoder()
    path = tmp_path / "nested" / "toy.safetensors"
    save_pretrained(transformer, prompts, path)
    assert path.is_file()
    loaded_transformer, loaded_prompts = load_pretrained(path)
    assert not loaded_transformer.training and not loaded_prompts.training
    assert not any(p.requires_grad for p in loaded_transformer.parameters())
    for original, loaded in ((transformer, loaded_transformer), (prompts, loaded_prompts)):
        before, after = original.state_dict(), loaded.state_dict()
        assert before.keys() == after.keys()
        for key, value in before.items():
            assert after[key].dtype == torch.float32
            assert torch.equal(after[key], value.half().float()), key  # exactly float16 rounding
            torch.testing.assert_close(after[key], value, rtol=1e-3, atol=1e-4)


def test_load_pretrained_missing_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_pretrained(missing)


def test_shipped_weights_exist_small_and_load(shipped):
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 16 * 2**20
    transformer, prompts = shipped  # load_state_dict(strict=True) inside: every key matched
    assert transformer.config.patch_size == TRANSFORMER_CONFIG["patch_size"]
    assert all(torch.isfinite(p).all() for p in transformer.parameters())
    assert prompts.token.weight.shape == (len(VOCAB), 64)
    assert prompts.token.weight.std() > 0.1  # trained, not zeros


# ----------------------------------------------------------------------------------------------- pipeline


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def pipeline_log():
    """Messages of the Wan pipeline's logger. diffusers' loggers do not propagate to the root logger (so
    ``caplog`` misses them) and their level comes from ``DIFFUSERS_VERBOSITY``: listen on the logger itself,
    with its level pinned to WARNING for the test."""
    logger = logging.getLogger(PIPELINE_LOGGER)
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_pipeline_runs_and_frame_rounding_is_quiet(shipped, pipeline_log):
    transformer, prompts = shipped
    pipe = build_pipeline(transformer)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor_temporal == 1 and pipe.vae_scale_factor_spatial == 1

    def call(steps: int) -> torch.Tensor:
        # WanPipeline rounds num_frames to num_frames // f * f + 1 whenever num_frames % f != 1, for the VAE's
        # temporal factor f; the pixel VAE's f is 1, so num_frames=3 always becomes 3 // 1 * 1 + 1 = 4 frames.
        return pipe(prompt_embeds=prompts([Prompt.parse("red disc right")]), negative_prompt_embeds=prompts([None]),
                    height=32, width=32, num_frames=3, num_inference_steps=steps, guidance_scale=3.0,
                    output_type="latent", generator=_gen(0)).frames

    with quiet_frame_rounding():
        latents = call(2)
        logging.getLogger(PIPELINE_LOGGER).warning("another warning")  # only the rounding one is dropped
    assert latents.shape == (1, 3, 4, 32, 32) and torch.isfinite(latents).all()
    assert pipeline_log == ["another warning"]

    call(1)  # outside the context manager the filter is gone again and the warning shows
    assert len(pipeline_log) == 2 and "has to be divisible by 1" in pipeline_log[1]


def test_read_object_axis_ignores_the_sign_but_not_the_axis(clips64, singles):
    """A reversed prompt keeps the axis right (direction wrong); a perpendicular one gets neither."""
    perpendicular = {"up": "left", "down": "right", "left": "up", "right": "down"}
    for clip, prompt in zip(clips64[:8], singles[:8], strict=True):
        assert read_object(clip, prompt).axis_ok
        reversed_reading = read_object(clip, _flip(prompt))
        assert reversed_reading.axis_ok and not reversed_reading.direction_ok
        first = prompt.objects[0]
        turned = Prompt((dataclasses.replace(first, direction=perpendicular[first.direction]),))
        turned_reading = read_object(clip, turned)
        assert not turned_reading.axis_ok and not turned_reading.direction_ok
