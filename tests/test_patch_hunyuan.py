"""jenga.patch on tiny HunyuanVideo pipelines (T2V, I2V latent_concat and token_replace)."""

from __future__ import annotations

import pytest
import torch
from _tiny import ALL_BLOCKS, CARVING, hunyuan_inputs, hunyuan_pipeline, hunyuan_transformer, lora_state_dict, run

import jenga
from jenga import selection_stats
from jenga._state import BranchStates

KINDS = ["t2v", "i2v", "i2v-replace"]
ATOL = 1e-4
NUM_VIDEO = 192  # 3 x 8 x 8 tokens
TEXT_LEN = 10


def _close(a, b, atol=ATOL):
    return (a - b).abs().max().item() <= atol


@pytest.mark.parametrize("kind", KINDS)
def test_all_blocks_equals_stock(kind):
    """Batch of 2 with different text padding, true CFG: drop rate 0 through the carving path == stock."""
    pipe = hunyuan_pipeline(kind)
    inputs = hunyuan_inputs(pipe)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    out = run(pipe, inputs)
    stats = selection_stats(pipe)
    assert stats and all(bool((s.kv_count == s.key_blocks).all()) for s in stats)
    assert {(s.key_blocks, s.video_blocks) for s in stats} == {(13, 12)}  # 192 video + 10 text tokens
    assert {s.layer for s in stats} == {0, 1}  # one dual-stream and one single-stream block
    assert _close(out, stock), (out - stock).abs().max()


@pytest.mark.parametrize("kind", ["t2v", "i2v-replace"])
def test_unpatch_restores_bitwise(kind):
    pipe = hunyuan_pipeline(kind)
    inputs = hunyuan_inputs(pipe)
    reference = run(pipe, inputs)
    processors = dict(pipe.transformer.attn_processors)
    jenga.patch(pipe, **CARVING)
    assert not torch.equal(run(pipe, inputs), reference)
    jenga.unpatch(pipe)
    assert all(pipe.transformer.attn_processors[k] is v for k, v in processors.items())
    assert torch.equal(run(pipe, inputs), reference)


def test_token_refiner_keeps_its_processor():
    pipe = hunyuan_pipeline("t2v")
    refiner = pipe.transformer.context_embedder.token_refiner.refiner_blocks[0].attn
    stock = refiner.processor
    jenga.patch(pipe, **CARVING)
    assert refiner.processor is stock
    carving = [k for k, v in pipe.transformer.attn_processors.items() if "Carving" in type(v).__name__]
    assert carving == ["transformer_blocks.0.attn.processor", "single_transformer_blocks.0.attn.processor"]


def test_carving_keeps_text_and_masks_padding(monkeypatch):
    """Video queries: every text key block kept, some video blocks dropped; text queries dense; padded
    text keys masked by each sample's key length."""
    import jenga.adapters.base as base

    lists_seen, lengths_seen = [], []
    select, attend = base.select_blocks, base.block_sparse_attention

    def spy_select(q, k, **kwargs):
        lists = select(q, k, **kwargs)
        lists_seen.append(lists)
        return lists

    def spy_attend(q, k, v, kv_index, kv_count, **kwargs):
        lengths_seen.append(kwargs["key_lengths"])
        return attend(q, k, v, kv_index, kv_count, **kwargs)

    monkeypatch.setattr(base, "select_blocks", spy_select)
    monkeypatch.setattr(base, "block_sparse_attention", spy_attend)
    pipe = hunyuan_pipeline("t2v")
    jenga.patch(pipe, **{**CARVING, "drop_rates": 0.9, "cdf_threshold": 0.1, "adjacency": False})
    out = run(pipe, hunyuan_inputs(pipe, steps=2))
    assert torch.isfinite(out).all()
    video_blocks = NUM_VIDEO // 16
    for lists in lists_seen:
        dense = lists.to_dense()  # [B, H, 13, 13]; block 12 holds the text tokens
        assert dense[:, :, :video_blocks, video_blocks:].all()
        assert dense[:, :, video_blocks:, :].all()
        assert not dense[:, :, :video_blocks, :video_blocks].all()
    valid = torch.tensor([TEXT_LEN, TEXT_LEN - 3])  # hunyuan_inputs pads sample b by 3 * b tokens
    for lengths in lengths_seen:
        assert torch.equal(lengths.cpu(), NUM_VIDEO + valid)


def test_condition_switch_off_lets_text_blocks_compete(monkeypatch):
    import jenga.adapters.base as base

    kept = []
    to_lists = base.dense_to_lists

    def spy(mask):
        kept.append(mask)
        return to_lists(mask)

    monkeypatch.setattr(base, "dense_to_lists", spy)
    pipe = hunyuan_pipeline("t2v")
    jenga.patch(pipe, **{**CARVING, "condition": False, "drop_rates": 0.9, "cdf_threshold": 0.0,
                         "adjacency": False})
    assert torch.isfinite(run(pipe, hunyuan_inputs(pipe, steps=2))).all()
    assert kept
    for mask in kept:
        assert mask[:, :, 12:, :].all()  # text queries stay dense
    assert any(not bool(mask[:, :, :12, 12].all()) for mask in kept)  # the text block was dropped somewhere


def test_steps_and_branches_without_step_context():
    """HunyuanVideo pipelines name the CFG branch but pass no step: the scheduler gives it."""
    pipe = hunyuan_pipeline("t2v")
    jenga.patch(pipe, **{**CARVING, "dense_steps": 0.5})
    run(pipe, hunyuan_inputs(pipe, steps=4))
    seen = sorted({(s.step, s.branch) for s in selection_stats(pipe)})
    assert seen == [(2, "cond"), (2, "uncond"), (3, "cond"), (3, "uncond")]
    i2v = hunyuan_pipeline("i2v")  # no cache context at all
    jenga.patch(i2v, **{**CARVING, "dense_steps": 0.5})
    run(i2v, hunyuan_inputs(i2v, steps=4))
    steps = [s.step for s in selection_stats(i2v) if s.layer == 0]
    assert steps == [2, 2, 3, 3] and {s.branch for s in selection_stats(i2v)} == {None}


def test_image_to_video_layouts():
    concat = hunyuan_pipeline("i2v")
    jenga.patch(concat, **CARVING)
    runtime = concat.transformer._jenga_patch.runtime
    assert runtime.first_frame and runtime.first_frame_prefix
    replace = hunyuan_pipeline("i2v-replace")
    jenga.patch(replace, **{**CARVING, "first_frame": False})
    runtime = replace.transformer._jenga_patch.runtime
    # token_replace modulates the first H'*W' tokens apart: the prefix order is needed even without keep
    assert not runtime.first_frame and runtime.first_frame_prefix
    layouts = []

    def keep_layout(pipe, step, timestep, tensors):
        layouts.append(runtime.plan.layout)  # the plan of the step's last forward
        return {}

    run(replace, hunyuan_inputs(replace, steps=2, callback_on_step_end=keep_layout))
    assert len(layouts) == 2 and layouts[0] is layouts[1]
    assert torch.equal(torch.sort(layouts[0].perm[:64]).values, torch.arange(64))  # frame 0 first


def test_bf16():
    pipe = hunyuan_pipeline("t2v").to(dtype=torch.bfloat16)
    inputs = hunyuan_inputs(pipe)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    out = run(pipe, inputs)
    assert out.dtype == stock.dtype and _close(out.float(), stock.float(), atol=0.1)
    jenga.unpatch(pipe)
    jenga.patch(pipe, **CARVING)
    assert torch.isfinite(run(pipe, inputs)).all()


def test_lora_after_patch():
    pytest.importorskip("peft")
    paths = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
             "single_transformer_blocks.0.attn.to_v"]
    pipe = hunyuan_pipeline("t2v")
    inputs = hunyuan_inputs(pipe)
    reference_pipe = hunyuan_pipeline("t2v")
    reference_pipe.load_lora_weights(lora_state_dict(reference_pipe.transformer, paths), adapter_name="tiny")
    reference = run(reference_pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    pipe.load_lora_weights(lora_state_dict(pipe.transformer, paths), adapter_name="tiny")
    assert _close(run(pipe, inputs), reference)


@pytest.mark.parametrize("block", ["transformer_blocks", "single_transformer_blocks"])
def test_processor_compiles_without_graph_break(block):
    transformer = hunyuan_transformer()
    jenga.patch(transformer, **{**CARVING, "collect_stats": False})
    runtime = transformer._jenga_patch.runtime
    latent = torch.randn(2, 4, 3, 16, 16)
    with torch.no_grad():
        rope = transformer.rope(latent)
        runtime.set_step(None, torch.tensor([500.0]), BranchStates())
        assert runtime.plan.sparse
        attn = getattr(transformer, block)[0].attn
        video, text = torch.randn(2, NUM_VIDEO, 64), torch.randn(2, TEXT_LEN, 64)
        mask = torch.ones(2, 1, 1, NUM_VIDEO + TEXT_LEN, dtype=torch.bool)
        mask[1, ..., -3:] = False

        def call(v, t):
            return attn.processor(attn, v, t, mask, rope)

        torch._dynamo.reset()
        compiled = torch.compile(call, backend="aot_eager", fullgraph=True)
        for got, want in zip(compiled(video, text), call(video, text), strict=True):
            assert torch.equal(got, want)


def test_partial_blocks_equal_stock():
    """147 video tokens: the last video block is partial and shares its block with the text tokens."""
    pipe = hunyuan_pipeline("t2v")
    inputs = hunyuan_inputs(pipe, height=112, width=112)
    stock = run(pipe, inputs)
    jenga.patch(pipe, **ALL_BLOCKS)
    out = run(pipe, inputs)
    assert {(s.key_blocks, s.video_blocks) for s in selection_stats(pipe)} == {(10, 10)}
    assert _close(out, stock)
    jenga.unpatch(pipe)
    jenga.patch(pipe, **CARVING)
    assert torch.isfinite(run(pipe, inputs)).all()
