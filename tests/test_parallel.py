"""Carving under diffusers' Ulysses context parallelism: 2 gloo processes on the CPU, tiny Wan and HunyuanVideo.

Each worker computes the single-process references itself (same seeds on both ranks), then enables
``ContextParallelConfig(ulysses_degree=2)`` and checks: patched with no block dropped equals stock; with real
sparsity equals the single-process patched output and the same block lists; ``unpatch`` gives the parallel
stock output back; both orders of ``enable_parallelism`` and ``jenga.patch``. diffusers 0.42.1 divides by
``torch.accelerator.device_count()`` (0 on a CPU): the workers shim it to 1.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp
from diffusers import ContextParallelConfig

import jenga
from tests import _tiny

WORLD = 2
TIMEOUT_S = 55


def _wan_case(height: int = 16, width: int = 16):
    transformer = _tiny.wan_transformer()
    gen = torch.Generator().manual_seed(5)
    latent = torch.randn(2, 16, *_tiny.GRID[:1], height, width, generator=gen)
    inputs = dict(hidden_states=latent, timestep=torch.tensor([500.0, 500.0]),
                  encoder_hidden_states=torch.randn(2, 12, _tiny.WAN_TEXT_DIM, generator=gen), return_dict=False)
    return transformer, inputs


def _hunyuan_case(kind: str = "t2v"):
    extra = {"image_condition_type": "token_replace"} if kind == "token_replace" else {}
    transformer = _tiny.hunyuan_transformer(**extra)
    gen = torch.Generator().manual_seed(5)
    latent = torch.randn(2, 4, _tiny.GRID[0], 16, 16, generator=gen)
    mask = torch.zeros(2, 10, dtype=torch.int64)
    mask[0, :10], mask[1, :4] = 1, 1  # sample 1: padded text, its valid tokens all on rank 0
    inputs = dict(hidden_states=latent, timestep=torch.tensor([500, 500]),
                  encoder_hidden_states=torch.randn(2, 10, _tiny.HUNYUAN_TEXT_DIM, generator=gen),
                  encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, _tiny.HUNYUAN_POOLED_DIM, generator=gen),
                  guidance=torch.tensor([3500.0, 3500.0]), return_dict=False)
    return transformer, inputs


def _lists(transformer):
    stats = jenga.selection_stats(transformer, clear=True)
    return [s.kv_count for s in stats]


def _run_checks(case: str, rank: int) -> None:
    if case == "wan-pipeline":
        _run_pipeline_checks()
        return
    make = {"wan": _wan_case, "hunyuan": _hunyuan_case, "hunyuan-i2v": lambda: _hunyuan_case("token_replace"),
            "wan-uneven": lambda: _wan_case(14, 18)}[case]  # 3 x 7 x 9 = 189 tokens: shards of 95 and 94
    sparse = dict(block_size=16, drop_rates=0.6, dense_steps=0.0, cdf_threshold=0.3, collect_stats=True)
    exact = dict(block_size=16, drop_rates=0.3, dense_threshold=0.0, cdf_threshold=1.0, dense_steps=0.0)

    def run(t, inputs):
        with torch.no_grad():
            return t(**inputs)[0]

    transformer, inputs = make()
    stock = run(transformer, inputs)
    jenga.patch(transformer, **sparse)
    sparse_single = run(transformer, inputs)
    lists_single = _lists(transformer)
    jenga.unpatch(transformer)
    assert lists_single and not torch.equal(sparse_single, stock)

    uneven = case.endswith("uneven")
    if uneven:  # equal shards cannot cut 189 tokens: a clear error names the mode that can
        jenga.enable_parallelism(transformer, ContextParallelConfig(ulysses_degree=WORLD))
        jenga.patch(transformer, **sparse)
        try:
            run(transformer, inputs)
        except ValueError as err:
            assert "ulysses_anything=True" in str(err)
        else:
            raise AssertionError("uneven shards without ulysses_anything did not raise")
        # ulysses_anything itself cannot run here: gloo's all_gather takes equal sizes only (NCCL: uneven)
        return

    # order 1: enable_parallelism, then patch
    jenga.enable_parallelism(transformer, ContextParallelConfig(ulysses_degree=WORLD))
    stock_parallel = run(transformer, inputs)
    torch.testing.assert_close(stock_parallel, stock, atol=1e-5, rtol=1e-5)
    jenga.patch(transformer, **exact)  # cdf 1.0 keeps every block: carving, no block dropped
    torch.testing.assert_close(run(transformer, inputs), stock, atol=1e-5, rtol=1e-5)
    jenga.unpatch(transformer)
    jenga.patch(transformer, **sparse)
    torch.testing.assert_close(run(transformer, inputs), sparse_single, atol=1e-5, rtol=1e-5)
    lists = _lists(transformer)
    heads = lists_single[0].shape[1] // WORLD
    assert len(lists) == len(lists_single)
    for mine, full in zip(lists, lists_single, strict=True):
        assert torch.equal(mine, full[:, rank * heads:(rank + 1) * heads]), "block lists differ from one process"
    jenga.unpatch(transformer)
    torch.testing.assert_close(run(transformer, inputs), stock_parallel, atol=0, rtol=0)

    # order 2: patch, then enable_parallelism (through jenga); the transformer's own call raises clearly
    transformer, inputs = make()
    jenga.patch(transformer, **sparse)
    jenga.enable_parallelism(transformer, ContextParallelConfig(ulysses_degree=WORLD))
    torch.testing.assert_close(run(transformer, inputs), sparse_single, atol=1e-5, rtol=1e-5)
    jenga.unpatch(transformer)
    torch.testing.assert_close(run(transformer, inputs), stock_parallel, atol=0, rtol=0)

    if case == "wan":
        transformer, inputs = make()
        jenga.patch(transformer, **sparse)
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=WORLD))
        try:
            run(transformer, inputs)
        except RuntimeError as err:
            assert "jenga.enable_parallelism" in str(err)
        else:
            raise AssertionError("enable_parallelism after jenga.patch did not raise")
        transformer, _ = make()
        try:
            jenga.enable_parallelism(transformer, ContextParallelConfig(ring_degree=WORLD))
            jenga.patch(transformer, **sparse)
        except NotImplementedError as err:
            assert "ring" in str(err)
        else:
            raise AssertionError("ring attention did not raise")


CASES = ("wan", "wan-uneven", "hunyuan", "hunyuan-i2v", "wan-pipeline")


def _run_pipeline_checks() -> None:
    """A tiny WanPipeline (CFG, 4 steps) with progressive resolution and a skipped step: the same latents
    with Ulysses degree 2 as in one process."""
    config = dict(block_size=16, drop_rates=0.6, dense_steps=0.0, cdf_threshold=0.3,
                  stages=((0.5, 0.5), (1.0, 1.0)), skip_steps=(0.75,))  # stage grids 3x4x4 and 3x8x8; step 3 skipped

    def run(pipe):
        return _tiny.run(pipe, _tiny.wan_inputs(pipe, steps=4))

    pipe = _tiny.wan_pipeline("t2v")
    jenga.patch(pipe, **{**config, "skip_steps": ()})
    computed = run(pipe)
    jenga.unpatch(pipe)
    jenga.patch(pipe, **config)
    single = run(pipe)
    jenga.unpatch(pipe)
    assert not torch.allclose(single, computed), "the skipped step changed nothing"
    stock = run(pipe)
    jenga.enable_parallelism(pipe, ContextParallelConfig(ulysses_degree=WORLD))
    jenga.patch(pipe, **config)
    torch.testing.assert_close(run(pipe), single, atol=1e-5, rtol=1e-5)
    jenga.unpatch(pipe)
    torch.testing.assert_close(run(pipe), stock, atol=1e-5, rtol=1e-5)


def _worker(rank: int, init_file: str, errors) -> None:
    import torch.distributed as dist

    torch.accelerator.device_count = lambda: 1  # test-only shim: diffusers 0.42.1 divides by it (0 on a CPU)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for case in CASES:  # one process group for all: workers start once
            _run_checks(case, rank)
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("n", [7, 189, 256, 32760])
@pytest.mark.parametrize("world", [2, 3, 8])
def test_shard_bounds_match_diffusers_sharders(n: int, world: int) -> None:
    """Our shard arithmetic is diffusers' (``chunk`` for equal shards, ``tensor_split`` for ulysses_anything)."""
    from jenga.parallel import shard_bounds

    x = torch.arange(n)
    for rank, part in enumerate(x.tensor_split(world)):
        start, stop = shard_bounds(n, world, rank, anything=True)
        assert torch.equal(x[start:stop], part)
    if n % world == 0:
        for rank, part in enumerate(x.chunk(world)):
            start, stop = shard_bounds(n, world, rank, anything=False)
            assert torch.equal(x[start:stop], part)


def test_video_then_text_order() -> None:
    """The gathered (video shard, text shard) per rank, uneven shards, back into (video, text)."""
    from jenga._parallel_state import ParallelState
    from jenga._parallel_state import video_then_text as _video_then_text

    state = ParallelState(config=None, world=3, rank=0, anything=True)
    video, text = torch.arange(10), 100 + torch.arange(4)
    gathered = torch.cat([torch.cat([v, t]) for v, t in zip(video.tensor_split(3), text.tensor_split(3), strict=True)])
    order = _video_then_text(state, 10, 14, local_text=2, device=torch.device("cpu"))
    assert torch.equal(gathered[order], torch.cat([video, text]))
    assert _video_then_text(state, 10, 10, local_text=0, device=torch.device("cpu")) is None


def _drain(errors) -> str:
    details = []
    while not errors.empty():
        rank, text = errors.get()
        details.append(f"rank {rank}:\n{text}")
    return "\n".join(details)


def test_ulysses_two_processes() -> None:
    ctx = mp.get_context("fork")  # the workers share this process's imports (spawn re-imports diffusers)
    errors = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = mp.start_processes(_worker, args=(os.path.join(tmp, "init"), errors), nprocs=WORLD,
                                   join=False, start_method="fork")
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not procs.join(timeout=1):
                if time.monotonic() > deadline:
                    pytest.fail(f"the {WORLD} gloo workers did not finish within {TIMEOUT_S} s\n" + _drain(errors))
        except mp.ProcessRaisedException:
            pytest.fail(_drain(errors) or "a worker failed")
        finally:
            for p in procs.processes:
                if p.is_alive():
                    p.terminate()


def test_generate_under_torchrun_refuses_offload(monkeypatch, capsys) -> None:
    """``jenga generate`` launched by torchrun (WORLD_SIZE > 1) takes one GPU per rank: no CPU offload."""
    from jenga import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    code = cli.main(["generate", "--model", "unused", "--prompt", "p", "--out", "clip.mp4", "--offload"])
    assert code == 2
    assert "--offload does not combine with torchrun" in capsys.readouterr().err
