"""Context parallelism for families jenga does not carve sharded (CogVideoX, LTX, SkyReels-V2, Wan VACE,
HunyuanVideo 1.5) is refused with a clear error, before anything changes: ``jenga.enable_parallelism`` shards
nothing, and ``jenga.patch`` of a transformer already sharded (the transformer's own ``enable_parallelism``)
rolls back. The supported families (Wan, HunyuanVideo) run under two gloo processes in tests/test_parallel.py."""

from __future__ import annotations

import _tiny_hunyuan15
import pytest
import torch
from _tiny import CARVING, hunyuan_transformer, run, wan_transformer
from _tiny_video import cogvideox_transformer, ltx_inputs, ltx_pipeline, ltx_transformer
from _tiny_wan_family import skyreels_pipeline, vace_transformer
from diffusers import ContextParallelConfig, ParallelConfig

import jenga
from jenga._record import record_of
from jenga.adapters import check_context_parallel

UNSUPPORTED = {
    "cogvideox": cogvideox_transformer,
    "hunyuan15": _tiny_hunyuan15.transformer,
    "ltx": ltx_transformer,
    "skyreels-v2": lambda: skyreels_pipeline("t2v").transformer,
    "wan-vace": vace_transformer,
}


def _sharded(transformer: torch.nn.Module) -> None:
    """What ``enable_parallelism`` leaves on a model, as far as jenga reads it: a set-up context-parallel config
    (``_world_size`` is filled in by diffusers' mesh setup, which needs a process group; set here by hand)."""
    cp = ContextParallelConfig(ulysses_degree=2)
    cp._world_size = 2
    transformer._parallel_config = ParallelConfig(context_parallel_config=cp)


@pytest.mark.parametrize("family", sorted(UNSUPPORTED))
def test_enable_parallelism_refuses_a_family_it_does_not_carve_sharded(family):
    transformer = UNSUPPORTED[family]()
    with pytest.raises(NotImplementedError, match="under context parallelism.*HunyuanVideoTransformer3DModel"):
        jenga.enable_parallelism(transformer, ContextParallelConfig(ulysses_degree=2))
    assert getattr(transformer, "_parallel_config", None) is None  # nothing was sharded


def test_patch_of_a_sharded_transformer_rolls_back_and_says_why():
    pipe = ltx_pipeline("t2v")
    inputs = ltx_inputs(pipe, batch=1, steps=2)
    stock = run(pipe, inputs)
    _sharded(pipe.transformer)
    with pytest.raises(NotImplementedError, match="LTXVideoTransformer3DModel under context parallelism"):
        jenga.patch(pipe, **CARVING)
    assert record_of(pipe.transformer) is None and type(pipe).__name__ == "LTXPipeline"
    pipe.transformer._parallel_config = None
    assert torch.equal(run(pipe, inputs), stock)  # the failed patch left the pipeline stock


def test_wan_and_hunyuanvideo_pass_the_check():
    for transformer in (wan_transformer(), hunyuan_transformer()):
        check_context_parallel(transformer)  # no error: tests/test_parallel.py runs them sharded
