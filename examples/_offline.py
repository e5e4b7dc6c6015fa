"""Shared by the examples: fail fast when a model can be neither found locally nor downloaded."""

from __future__ import annotations

import os
import socket
import sys


def require_model(model_id: str) -> None:
    """Exit with status 2 and a clear message, within seconds, when ``model_id`` is not a local folder, not in
    the Hugging Face cache, and the Hub is unreachable (or ``HF_HUB_OFFLINE=1``); return otherwise."""
    if os.path.isdir(model_id):
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model_id, local_files_only=True)
        return
    except Exception:  # noqa: BLE001 -- any miss of the local cache: look at the network next
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
            return
        except OSError:
            pass
    print(f"error: {model_id} is not in the local Hugging Face cache and the Hub cannot be reached"
          f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: download it first or pass a local folder", file=sys.stderr)
    sys.exit(2)
