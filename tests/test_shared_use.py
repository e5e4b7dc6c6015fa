"""A patched transformer used elsewhere (issue 15): by a second pipeline built from the patched one's components,
through ``copy.deepcopy``, and from two threads at once."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from _tiny import CARVING, hunyuan_inputs, hunyuan_pipeline, run, wan_inputs, wan_pipeline, wan_transformer
from diffusers import FlowMatchEulerDiscreteScheduler

import jenga


def _pipes(family: str):
    if family == "wan":
        pipe = wan_pipeline("t2v")
        return pipe, wan_inputs(pipe, steps=2), 5.0
    pipe = hunyuan_pipeline("t2v")
    return pipe, hunyuan_inputs(pipe, steps=2), 7.0


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_a_second_pipeline_on_the_patched_transformer_carves(family):
    """Carving belongs to the transformer: a pipeline built from a patched one's components carves too, with
    the step of its own loop (the patched pipeline's scheduler, stale from its last run, is not read)."""
    pipe, inputs, shift = _pipes(family)
    jenga.patch(pipe, **CARVING)
    carved = run(pipe, inputs)  # leaves the patched pipeline's scheduler at the end of its run
    jenga.selection_stats(pipe, clear=True)
    other = type(pipe)(**{**pipe.components, "scheduler": FlowMatchEulerDiscreteScheduler(shift=shift)})
    other.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(50)  # stale state of the patched pipeline's scheduler must not matter
    again = run(other, inputs)
    stats = jenga.selection_stats(pipe)
    assert stats and {s.step for s in stats} == {0, 1}
    assert any((s.kv_count < s.key_blocks).any() for s in stats)  # blocks really dropped
    torch.testing.assert_close(again, carved, rtol=0, atol=0)
    jenga.unpatch(pipe)


def test_a_second_pipeline_does_not_skip_steps_and_says_so(caplog):
    pipe, inputs, shift = _pipes("hunyuan")
    jenga.patch(pipe, **{**CARVING, "skip_steps": (0.5,)})
    other = type(pipe)(**{**pipe.components, "scheduler": FlowMatchEulerDiscreteScheduler(shift=shift)})
    other.set_progress_bar_config(disable=True)
    with caplog.at_level("WARNING", logger="jenga"):
        out = run(other, {**inputs, "num_inference_steps": 2})
    assert "outside that pipeline's call" in caplog.text
    assert torch.isfinite(out).all()
    jenga.unpatch(pipe)


def test_deepcopy_of_a_patched_object_is_refused_clearly():
    pipe = wan_pipeline("t2v")
    inputs = wan_inputs(pipe, steps=2)
    jenga.patch(pipe, "turbo", **CARVING)
    for target in (pipe, pipe.transformer):
        with pytest.raises(TypeError, match="cannot be deep-copied"):
            copy.deepcopy(target)
    before = run(pipe, inputs)
    jenga.unpatch(pipe)
    twin = copy.deepcopy(pipe)  # the documented way: unpatch, copy, patch each
    jenga.patch(pipe, "turbo", **CARVING)
    jenga.patch(twin, "turbo", **CARVING)
    jenga.unpatch(twin)  # leaves the original's patch and stage driver alone
    assert jenga.is_patched(pipe) and "_jenga_stock_class" in type(pipe).__dict__
    assert torch.equal(run(pipe, inputs), before)


def test_two_threads_on_one_patched_transformer_are_refused_clearly():
    """A second thread entering a forward while one runs gets a clear RuntimeError; the running one is exact."""
    transformer = wan_transformer()
    jenga.patch(transformer, **CARVING)
    gen = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, 3, 16, 16, generator=gen)
    text = torch.randn(1, 12, 32, generator=gen)
    step = torch.tensor([500.0])
    with torch.no_grad():
        expected = transformer(latent, step, text, return_dict=False)[0]

    inside, release = threading.Event(), threading.Event()
    first_block = transformer.blocks[0]

    def hold(module, args):  # keeps thread A inside its forward until B has tried
        if threading.current_thread().name == "A":
            inside.set()
            release.wait(30)

    handle = first_block.register_forward_pre_hook(hold)
    results: dict[str, object] = {}

    def call(name):
        try:
            with torch.no_grad():
                results[name] = transformer(latent, step, text, return_dict=False)[0]
        except Exception as err:  # noqa: BLE001 - the test inspects it
            results[name] = err

    a = threading.Thread(target=call, args=("A",), name="A")
    a.start()
    assert inside.wait(30)
    b = threading.Thread(target=call, args=("B",), name="B")
    b.start()
    b.join(60)
    release.set()
    a.join(60)
    handle.remove()
    assert isinstance(results["B"], RuntimeError) and "another thread" in str(results["B"])
    assert torch.equal(results["A"], expected)
    # one after the other, both threads are served
    b = threading.Thread(target=call, args=("B",), name="B")
    b.start()
    b.join(60)
    assert torch.equal(results["B"], expected)
    jenga.unpatch(transformer)
