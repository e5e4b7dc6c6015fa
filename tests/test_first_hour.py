"""What a newcomer meets first: the package docstring, error wording of the public functions, the preset a
bare ``JengaConfig.preset`` picks, and the one-line answers of :mod:`jenga.hub` (no network: offline only)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jenga
from jenga import hub

ROOT = Path(__file__).resolve().parents[1]


def test_package_docstring_shows_the_three_line_usage():
    doc = jenga.__doc__
    for line in ("jenga.patch(pipe)", "video = pipe(prompt=", "jenga.unpatch(pipe)"):
        assert line in doc


@pytest.mark.parametrize("name", ["unpatch", "is_patched", "selection_stats"])
def test_errors_name_the_function_that_was_called(name):
    with pytest.raises(TypeError, match=rf"^jenga\.{name} expects a diffusers pipeline or transformer, got object"):
        getattr(jenga, name)(object())


def test_patched_names_itself():
    with pytest.raises(TypeError, match=r"^jenga\.patched expects"), jenga.patched(object()):
        pass


def test_preset_without_a_model_logs_the_family_it_chose(caplog):
    with caplog.at_level(logging.INFO, logger="jenga"):
        config = jenga.JengaConfig.preset("base")
    assert config == jenga.JengaConfig.preset("base", model="wan")
    assert "using the 'wan' family's values" in caplog.text
    assert "Without ``model`` the Wan (1.3B/5B) family's preset" in jenga.JengaConfig.preset.__doc__


def test_drop_rate_error_states_the_value_once():
    with pytest.raises(ValueError) as info:
        jenga.JengaConfig(drop_rates=1.5)
    assert str(info.value) == "each drop rate must be a float in [0, 1), got 1.5"
    with pytest.raises(ValueError, match=r"got 1\.5 in \(0\.5, 1\.5\)$"):
        jenga.JengaConfig(drop_rates=(0.5, 1.5), stages=((0.5, 0.5), (1.0, 1.0)))


def test_block_size_accepts_only_powers_of_two_from_16_to_256():
    for size in (16, 32, 64, 128, 256):
        assert jenga.JengaConfig(block_size=size).block_size == size
    for size in (8, 48, 100, 512):
        with pytest.raises(ValueError, match="block_size"):
            jenga.JengaConfig(block_size=size)


def test_local_folder_answers(tmp_path):
    assert "not a diffusers pipeline folder (no model_index.json)" in hub.availability_problem(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{}")
    assert hub.availability_problem(str(tmp_path)) is None
    assert "no such folder, and not a hub id" in hub.availability_problem(str(tmp_path / "a b"))


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    # a fresh interpreter: huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is first imported
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env})


def test_offline_hub_id_not_in_the_cache_is_one_line_with_the_download_command(tmp_path):
    proc = _run("from jenga.hub import exit_if_unavailable; exit_if_unavailable('jenga-test/absent')",
                HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "jenga-test/absent is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in err
    assert "`hf download jenga-test/absent`" in err


def test_a_cached_pipeline_is_found_without_the_network(tmp_path):
    repo = tmp_path / "hub" / "models--jenga-test--cached"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    proc = _run("from jenga import hub; print(hub.cached('jenga-test/cached'), "
                "hub.availability_problem('jenga-test/cached'))", HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    assert proc.stdout.split() == ["True", "None"], proc.stderr
