"""JengaConfig: validation messages, presets, round trips and the schedule helpers."""

from __future__ import annotations

import dataclasses

import pytest

from jenga import JengaConfig, Stage
from jenga.attention import BACKENDS
from jenga.config import MODELS, PRESETS


def test_defaults_are_one_full_resolution_stage():
    cfg = JengaConfig()
    assert cfg.stages == (Stage(1.0, 1.0, None),)
    assert cfg.drop_rates == (0.75,)
    assert cfg.curve == "zorder" and cfg.block_size == 128 and cfg.backend == "auto"


def test_float_drop_rate_applies_to_every_stage():
    cfg = JengaConfig(drop_rates=0.5, stages=((0.5, 0.3, 7), (1.0, 1.0)))
    assert cfg.drop_rates == (0.5, 0.5)
    assert cfg.stages == (Stage(0.5, 0.3, 7.0), Stage(1.0, 1.0, None))


@pytest.mark.parametrize("field, value, needle", [
    ("curve", "peano", "'zorder', 'hilbert', 'raster'"),
    ("block_size", 100, "(16, 32, 64, 128, 256)"),
    ("block_size", True, "(16, 32, 64, 128, 256)"),
    ("drop_rates", 1.0, "[0, 1)"),
    ("drop_rates", (0.5, 0.6), "one per stage (1 stages)"),
    ("cdf_threshold", 1.5, "[0, 1]"),
    ("dense_steps", 5, "fraction of the run"),
    ("dense_layers", (-1,), "ints >= 0"),
    ("dense_threshold", 1.0, "[0, 1)"),
    ("min_video_blocks", 0, ">= 1"),
    ("adjacency", 1, "True or False"),
    ("first_frame", "yes", "None (auto)"),
    ("text_amplifier", -0.5, ">= 0"),
    ("skip_steps", (0.0, 0.5), "(0, 1)"),
    ("skip_steps", (0.5, 0.2), "increase strictly"),
    ("backend", "cuda", str(BACKENDS)),
    ("stages", (), "non-empty"),
    ("stages", ((0.5, 1.0),), "full resolution"),
    ("stages", ((1.0, 0.6), (1.0, 0.5)), "increase strictly"),
    ("stages", ((1.0, 0.5),), "finish at 1.0"),
    ("stages", ((1.0, 1.0, -2),), "positive float or None"),
])
def test_bad_values_name_field_and_accepted_values(field, value, needle):
    with pytest.raises(ValueError) as err:
        JengaConfig(**{field: value})
    assert field.split("_")[0] in str(err.value) or "stage" in str(err.value)
    assert needle in str(err.value)


def test_frozen_and_replace_validates():
    cfg = JengaConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.curve = "hilbert"
    assert dataclasses.replace(cfg, curve="hilbert").curve == "hilbert"
    with pytest.raises(ValueError, match="curve"):
        dataclasses.replace(cfg, curve="snake")


def test_normalised_fields():
    cfg = JengaConfig(dense_layers=[3, 1, 3], skip_steps=[0.1, 0.2])
    assert cfg.dense_layers == (1, 3)
    assert cfg.skip_steps == (0.1, 0.2)


@pytest.mark.parametrize("model", MODELS)
def test_every_preset_builds_and_round_trips(model):
    for name in PRESETS[model]:
        cfg = JengaConfig.preset(name, model=model)
        assert JengaConfig.from_dict(cfg.to_dict()) == cfg
        assert len(cfg.drop_rates) == len(cfg.stages)


def test_reference_values():
    hunyuan = JengaConfig.preset("turbo", model="hunyuan")
    assert hunyuan.drop_rates == (0.7, 0.8) and hunyuan.cdf_threshold == 0.3
    assert [s.scale for s in hunyuan.stages] == [0.75, 1.0] and [s.shift for s in hunyuan.stages] == [7.0, 9.0]
    assert hunyuan.text_amplifier == 0.5
    # 23 of 50 steps computed: 27 skipped, as fractions (the named schedule gives the same)
    assert len(hunyuan.skip_steps) == 27 and 0.1 in hunyuan.skip_steps and 0.5 not in hunyuan.skip_steps
    assert JengaConfig(stages=hunyuan.stages, skip_steps="hunyuan-23-of-50").skip_steps == hunyuan.skip_steps
    # the first step of every stage is computed: step 15 (0.3) starts stage 1 of the 3-stage preset
    three_skip = JengaConfig.preset("3stage", model="hunyuan")
    assert len(three_skip.skip_steps) == 26 and 0.3 not in three_skip.skip_steps
    with pytest.raises(ValueError, match="unknown skip_steps schedule"):
        JengaConfig(skip_steps="teacache")
    three = JengaConfig.preset("3stage", model="hunyuan")
    assert [s.until for s in three.stages] == [0.3, 0.5, 1.0] and three.drop_rates == (0.75, 0.85, 0.85)
    flash = JengaConfig.preset("flash", model="hunyuan")
    assert flash.drop_rates == (0.8, 0.95) and flash.cdf_threshold == 0.5
    wan = JengaConfig.preset("base", model="wan")
    assert wan.drop_rates == (0.75, 0.85) and wan.cdf_threshold == 0.9 and wan.dense_steps == 0.1
    assert wan.dense_threshold == 0.25
    wan14 = JengaConfig.preset("base", model="wan-14b")
    assert wan14.drop_rates == (0.7, 0.8) and wan14.cdf_threshold == 0.8
    assert JengaConfig.preset("turbo", model="wan").stages[0].scale == 0.75


def test_preset_overrides_and_unknown_names():
    assert JengaConfig.preset("base", model="wan", block_size=64).block_size == 64
    with pytest.raises(ValueError, match="'base', 'turbo', 'flash', '3stage'"):
        JengaConfig.preset("ultra", model="hunyuan")
    with pytest.raises(ValueError, match="'hunyuan', 'wan', 'wan-14b'"):
        JengaConfig.preset("base", model="cogvideo")
    with pytest.raises(ValueError, match="unknown JengaConfig fields"):
        JengaConfig.from_dict({"curve": "zorder", "speed": 2})


def test_stage_at_uses_fractions_of_the_run():
    cfg = JengaConfig.preset("3stage", model="hunyuan")
    steps = 50
    stages = [cfg.stage_at(i / steps) for i in range(steps)]
    assert stages.count(0) == 15 and stages.count(1) == 10 and stages.count(2) == 25
    assert cfg.stage_at(1.0) == 2


def test_dense_threshold_and_ever_sparse():
    cfg = JengaConfig(drop_rates=0.2)
    assert not cfg.carves(0.2) and not cfg.ever_sparse
    assert JengaConfig(drop_rates=0.0, dense_threshold=None).ever_sparse  # all blocks, block-sparse path
    assert not JengaConfig(drop_rates=0.8, dense_steps=1.0).ever_sparse
