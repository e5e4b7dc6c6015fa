"""Kernel tile choices from shipped data: lookup, nearest bucket, fallback, the user's cache, and no autotuning
in the default path (the launches are mocked: nothing here compiles a kernel)."""

from __future__ import annotations

import json

import pytest
import torch

from jenga.kernels import triton_block_sparse as tbs
from jenga.kernels import tuning

POINTER = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
TMA = {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3, "Q_TMA": True}


def _entry(bucket, best="tma", **paths):
    return dict(head_dim=128, dtype="bfloat16", block_size=128, len_bucket=bucket, best=best, **paths)


@pytest.fixture
def hopper(monkeypatch, tmp_path):
    """A pretend sm90 device, an empty user cache under a temporary XDG_CACHE_HOME, a given package table."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(tuning.AUTOTUNE_ENV, raising=False)
    tuning._cache_tables.clear()
    table = tuning.parse_table({"entries": [_entry(32768, pointer=POINTER, tma=TMA),
                                            _entry(131072, best="pointer", pointer={**POINTER, "num_stages": 3})]},
                               "test")
    monkeypatch.setattr(tuning, "package_table", lambda arch: table if arch == "sm90" else {})
    yield tmp_path
    tuning._cache_tables.clear()


def _choose(seq_k, tma_allowed=True, use_tma=None, dtype=torch.bfloat16, head_dim=128):
    return tuning.choose(torch.device("cpu"), head_dim, dtype, 128, seq_k, tma_allowed, use_tma)


def test_length_bucket_and_cache_dir(monkeypatch, tmp_path):
    assert [tuning.length_bucket(n) for n in (1, 4096, 32760, 75600, 119056)] == [1, 4096, 32768, 131072, 131072]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.cache_path("sm90") == tmp_path / "jenga" / "tuned-sm90.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.cache_dir() == tmp_path / "home" / ".cache" / "jenga"


def test_package_table_lookup_paths_and_nearest_bucket(hopper):
    exact = _choose(32760)
    assert (exact.config, exact.use_tma, exact.source) == (TMA, True, "package")
    # descriptors not possible for these inputs: the best plain-load config of the same entry
    assert _choose(32760, tma_allowed=False).config == {**POINTER, "Q_TMA": False}
    # the caller forces plain loads
    assert _choose(32760, use_tma=False).use_tma is False
    # 65,536 is missing: the nearest bucket on a log scale, ties to the smaller one
    assert _choose(40_000).config == TMA
    near_long = _choose(119_056)
    assert near_long.config["num_stages"] == 3 and near_long.use_tma is False
    # forced descriptors where the entry measured only plain loads: the safe default with descriptors
    forced = _choose(119_056, use_tma=True)
    assert forced.source == "default" and forced.use_tma is True


def test_fallback_default_elsewhere(hopper, monkeypatch):
    fp32 = _choose(32760, dtype=torch.float32)
    assert fp32.source == "default" and fp32.config["BLOCK_M"] == 64 and fp32.use_tma is False
    assert _choose(32760, head_dim=64).source == "default"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    ampere = _choose(32760)
    assert ampere.source == "default" and ampere.config == {**POINTER, "Q_TMA": False}
    assert tuning.default_choice(256, torch.float16, 128, (9, 0)).config["BLOCK_M"] == 64
    assert tuning.default_choice(128, torch.float16, 32, (9, 0)).config["BLOCK_M"] == 32


def test_malformed_entries_are_skipped(caplog):
    table = tuning.parse_table({"entries": [{"head_dim": 128}, _entry(4096, pointer={"BLOCK_M": 96}),
                                            _entry(4096, best="nope", pointer=POINTER)]}, "test")
    assert list(table) == [(128, "bfloat16", 128, 4096)] and table[(128, "bfloat16", 128, 4096)]["best"] == "pointer"
    assert "malformed" in caplog.text and "without a usable config" in caplog.text


def test_cache_write_read_and_precedence(hopper):
    device = torch.device("cpu")
    path = tuning.record_pick(device, 128, torch.bfloat16, 128, 32760, False, {**POINTER, "num_warps": 8})
    assert path == hopper / "jenga" / "tuned-sm90.json"
    cached = _choose(32760)
    assert cached.source == "cache" and cached.config["num_warps"] == 8 and cached.use_tma is False
    # the other path added later, not claiming best: the plain-load pick stays the best
    tuning.record_pick(device, 128, torch.bfloat16, 128, 32760, True, TMA, best=False)
    data = json.loads(path.read_text())
    assert data["arch"] == "sm90" and len(data["entries"]) == 1
    assert data["entries"][0]["best"] == "pointer" and data["entries"][0]["tma"] == TMA
    assert _choose(32760, use_tma=True).config == TMA
    # a damaged cache file is ignored, the package table answers
    path.write_text("{not json")
    tuning._cache_tables.clear()
    assert _choose(32760).source == "package"


class _FakeKernel:
    """Stands in for a jitted kernel: records the launch's keyword arguments instead of compiling."""

    def __init__(self, best_config=None):
        self.launches = []
        self.best_config = best_config

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(kwargs)


def _launch(monkeypatch, autotune=None):
    plain, tuned = _FakeKernel(), _FakeKernel()
    import triton

    tuned.best_config = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "Q_TMA": False}, num_warps=4, num_stages=3)
    monkeypatch.setattr(tbs, "_block_sparse_fwd", plain)
    monkeypatch.setattr(tbs, "_block_sparse_fwd_tuned", tuned)
    monkeypatch.setattr(tbs, "interpreting", lambda: False)
    q = k = v = torch.zeros(1, 256, 2, 128, dtype=torch.bfloat16)
    kv_index = torch.tensor([[[[0, 1], [0, 1]]]], dtype=torch.int32)
    kv_count = torch.tensor([[[2, 2]]], dtype=torch.int32)
    tbs.block_sparse_attention_triton(q, k, v, kv_index, kv_count, 128, None, 256, 0.0, False, autotune=autotune)
    return plain, tuned


def test_default_path_never_autotunes(hopper, monkeypatch):
    plain, tuned = _launch(monkeypatch)
    assert tuned.launches == [] and len(plain.launches) == 1
    assert {k: plain.launches[0][k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")} == POINTER
    assert not (hopper / "jenga").exists()  # nothing written without a request


def test_autotune_on_request_saves_the_pick(hopper, monkeypatch):
    monkeypatch.setenv(tuning.AUTOTUNE_ENV, "1")
    plain, tuned = _launch(monkeypatch)
    assert plain.launches == [] and len(tuned.launches) == 1
    saved = json.loads((hopper / "jenga" / "tuned-sm90.json").read_text())["entries"][0]
    assert saved["len_bucket"] == 256 and saved["pointer"]["num_stages"] == 3
    monkeypatch.delenv(tuning.AUTOTUNE_ENV)
    tbs._saved_picks.clear()
    plain, tuned = _launch(monkeypatch, autotune=True)  # the argument asks for it too
    assert len(tuned.launches) == 1


def test_tune_names_what_it_needs():
    from jenga.kernels import tune

    with pytest.raises(ValueError, match="CUDA device"):
        tune([256], device="cpu")
    with pytest.raises(ValueError, match="density"):
        tune([256], density=0.0, device="cuda")


def test_descriptor_allocator_is_set_in_every_thread():
    """Triton keeps its allocator in a ContextVar: a pipeline run from a worker thread must find it set too
    (it used to be set once per process, so a second thread's first descriptor launch failed)."""
    import threading

    from triton.runtime import _allocation

    from jenga.kernels import triton_block_sparse as tbs

    tbs._ensure_descriptor_allocator()
    seen = []

    def worker():
        seen.append(_allocation._allocator.get() is tbs._descriptor_scratch)
        tbs._ensure_descriptor_allocator()
        seen.append(_allocation._allocator.get() is tbs._descriptor_scratch)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen[1], "the worker thread's launches would find no allocator"  # seen[0]: Triton's own default
