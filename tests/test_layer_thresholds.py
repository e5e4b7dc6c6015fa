"""Per-layer mass thresholds (``JengaConfig.layer_cdf_thresholds``): validation, JSON round trip, and on a tiny
Wan pipeline a layer's own ``p`` changes that layer's kept blocks only, in the stages it names."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import CARVING, run, run_regionally_compiled, wan_inputs, wan_pipeline

import jenga
from jenga import JengaConfig, selection_stats

TWO_STAGES = ((1.0, 0.5), (1.0, 1.0))


def test_mapping_is_normalised_and_read_per_layer_and_stage():
    cfg = JengaConfig(stages=TWO_STAGES, cdf_threshold=0.9, layer_cdf_thresholds={3: 0.7, 1: [0.8, 0.95]})
    assert cfg.layer_cdf_thresholds == ((1, (0.8, 0.95)), (3, (0.7, 0.7)))
    assert (cfg.cdf_threshold_at(1, 0), cfg.cdf_threshold_at(1, 1), cfg.cdf_threshold_at(3, 1)) == (0.8, 0.95, 0.7)
    assert cfg.cdf_threshold_at(0, 1) == 0.9  # not listed: the global p
    hash(cfg)  # frozen configs are hashable (the skip schedule is cached per config)
    assert JengaConfig(layer_cdf_thresholds=None).layer_cdf_thresholds == ()
    assert JengaConfig(layer_cdf_thresholds=cfg.layer_cdf_thresholds, stages=TWO_STAGES) == cfg  # pairs accepted


def test_round_trip_through_json():
    cfg = JengaConfig.preset("base", model="wan", layer_cdf_thresholds={0: 0.5, 12: (0.7, 0.99)})
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["layer_cdf_thresholds"] == {"0": [0.5, 0.5], "12": [0.7, 0.99]}
    assert JengaConfig.from_dict(data) == cfg
    assert JengaConfig.from_dict(JengaConfig().to_dict()).layer_cdf_thresholds == ()


@pytest.mark.parametrize("value, needle", [
    ({-1: 0.5}, "ints >= 0, got -1"),
    ({"a": 0.5}, "ints >= 0, got 'a'"),
    ({True: 0.5}, "ints >= 0, got True"),
    ({1: 1.5}, "float in [0, 1], got 1.5"),
    ({1: "0.5"}, "one p or one per stage (2 stages)"),
    ({1: (0.5,)}, "one p or one per stage (2 stages)"),
    ({1: (0.5, float("nan"))}, "float in [0, 1], got nan"),
    ([1, 2], "a mapping {layer id"),
    (0.5, "a mapping {layer id"),
])
def test_bad_values_name_what_is_wrong_and_what_is_accepted(value, needle):
    with pytest.raises(ValueError) as err:
        JengaConfig(stages=TWO_STAGES, layer_cdf_thresholds=value)
    assert "layer_cdf_thresholds" in str(err.value) and needle in str(err.value)


def test_a_layer_cannot_be_dense_and_thresholded():
    with pytest.raises(ValueError, match=r"layers \[3\] are in both dense_layers and layer_cdf_thresholds"):
        JengaConfig(dense_layers=(3,), layer_cdf_thresholds={3: 0.5})


def _kept(pipe, **overrides) -> dict[tuple[int, str | None, int], torch.Tensor]:
    jenga.patch(pipe, **{**CARVING, "stages": TWO_STAGES, **overrides})
    try:
        run(pipe, wan_inputs(pipe))
        return {(s.step, s.branch, s.layer): s.kv_count for s in selection_stats(pipe)}
    finally:
        jenga.unpatch(pipe)


def test_a_layer_s_threshold_changes_only_that_layer_s_kept_blocks():
    pipe = wan_pipeline("t2v")
    steps = wan_inputs(pipe)["num_inference_steps"]
    reference = _kept(pipe)  # p 0.3 everywhere
    # layer 1 keeps 0.3 in the first stage and every block up to the whole mass in the second
    changed = _kept(pipe, layer_cdf_thresholds={1: (0.3, 1.0)})
    assert reference.keys() == changed.keys() and {layer for *_, layer in reference} == {0, 1}
    second_stage = {step for step, *_ in reference if step >= steps / 2}
    assert second_stage, "the run has no step in the second stage"
    for key, counts in reference.items():
        step, _, layer = key
        if layer == 1 and step in second_stage:
            assert bool((changed[key] >= counts).all()) and bool((changed[key] > counts).any()), key
        else:
            assert torch.equal(changed[key], counts), key  # layer 0, and layer 1 before its change


def test_patch_rejects_a_threshold_for_a_layer_the_model_lacks():
    pipe = wan_pipeline("t2v")
    with pytest.raises(ValueError, match=r"layer_cdf_thresholds \[5\] out of range: .* has layers 0..1"):
        jenga.patch(pipe, **{**CARVING, "layer_cdf_thresholds": {5: 0.5}})
    assert not jenga.is_patched(pipe)


def test_regional_compilation_shares_graphs_between_layers_with_the_same_threshold():
    """The layer's p is a value on its processor, not a lookup by layer id: blocks compiled one by one share a
    graph when their thresholds agree (distinct values cost a graph each, per stage)."""
    from _tiny import wan_transformer

    pipe = wan_pipeline("t2v")
    pipe.transformer = wan_transformer(num_layers=10)  # more blocks than the recompile limit below
    jenga.patch(pipe, **{**CARVING, "stages": TWO_STAGES, "layer_cdf_thresholds": {x: (0.3, 0.9) for x in range(10)}})
    inputs = wan_inputs(pipe, steps=4)
    eager = run(pipe, inputs)
    compiled = run_regionally_compiled(pipe, inputs)
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=1e-5)
