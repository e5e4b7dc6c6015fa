"""Is a model's pipeline here, or can it be fetched? One line that says what to do when not.

diffusers, asked for weights that are neither cached nor reachable, retries each download several times and
ends in long tracebacks. ``jenga generate``, ``jenga doctor --model`` and the example scripts ask here first:
:func:`cached` looks only at the local Hugging Face cache; :func:`availability_problem` adds, only when the
model is not cached and HF_HUB_OFFLINE is not set, one metadata request to the Hub (the caller is about to
download the model anyway), so that no network fails at once instead of after the retries.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["availability_problem", "cached", "exit_if_unavailable", "offline"]

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: nothing may be downloaded."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cached(model_id: str) -> bool:
    """The local Hugging Face cache holds ``model_index.json`` of this hub id (a diffusers pipeline)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "model_index.json")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


def _download_hint(model_id: str) -> str:
    return f"`hf download {model_id}` on a machine with network (then copy the cache, HF_HOME), or pass a local folder"


def availability_problem(model_id: str, timeout: float = 10.0) -> str | None:
    """``None`` when ``model_id`` (a hub id or a local folder) can be loaded as far as can be told here,
    else one line saying what is wrong and what to do."""
    path = Path(model_id).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            return f"{model_id}: not a diffusers pipeline folder (no model_index.json)"
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        return f"{model_id}: no such folder, and not a hub id like Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    if cached(model_id):
        return None
    if offline():
        return f"{model_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it first with " \
               + _download_hint(model_id)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(model_id, timeout=timeout)
    except GatedRepoError:
        return f"{model_id} is gated: accept its terms on the Hub and log in with `hf auth login`"
    except RepositoryNotFoundError:
        return f"{model_id}: no such model on the Hub (or private: `hf auth login`)"
    except Exception as err:  # noqa: BLE001 - any transport error: httpx, ssl, proxy, DNS
        return f"cannot reach the Hugging Face Hub to download {model_id} ({type(err).__name__}): " \
               f"download it with {_download_hint(model_id)}; set HF_HUB_OFFLINE=1 to use only the cache"
    return None


def exit_if_unavailable(model_id: str) -> None:
    """For scripts: print :func:`availability_problem`'s line and exit with code 2 when there is one."""
    problem = availability_problem(model_id)
    if problem is not None:
        print(f"{Path(sys.argv[0]).name}: {problem}", file=sys.stderr)
        raise SystemExit(2)
