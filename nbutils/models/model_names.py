"""Model names given by the user: an existing folder, or a Hugging Face hub id. Checked before anything loads.

    name = resolve_model_name(config.decoder_model, "decoder_model")   # then from_pretrained(name)

Without this check a misspelt name is tried as a hub id, and on a machine without network the hub client
retries for about 30 s before failing with a message that names neither the parameter nor the folder it
looked for. `resolve_model_name` answers at once instead:
    an existing folder (`~` expanded)            -> that folder
    a hub id, the hub reachable                  -> the hub id (a ValueError if the hub has no such model)
    a hub id in the local hub cache, hub offline -> the cached snapshot folder, which loads without network
    anything else                                -> ValueError naming the parameter, the absolute path tried
                                                    and why the hub could not supply it
"Offline" is HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, or the hub endpoint (HF_ENDPOINT, through the
HTTPS proxy if one is set) not answering a TCP connection within CONNECT_TIMEOUT seconds.
"""

from __future__ import annotations

import difflib
import os
import socket
import threading
import urllib.request
from urllib.parse import urlparse

CONNECT_TIMEOUT = 1.5  # seconds; a reachable hub answers in well under one
TRUE = ("1", "on", "yes", "true")


def resolve_model_name(name: str | os.PathLike, parameter: str) -> str:
    """What to pass to `from_pretrained` for `parameter`'s value `name` (see the module docstring)."""
    from huggingface_hub import constants

    name = os.fspath(name)
    if not name.strip():
        raise ValueError(f"{parameter} is empty: give a model folder or a hub id")
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return path
    where = os.path.abspath(path)
    if os.path.exists(path):
        raise ValueError(
            f"{parameter}={name!r}: {where} is a file; give the folder that holds it (a save_pretrained "
            f"folder with config.json) or a hub id"
        )
    missing = f"{parameter}={name!r}: no such folder: {where}{_did_you_mean(path)}"
    if os.path.isabs(path) or name.startswith((".", "~")):  # written as a path: only a folder was meant
        raise ValueError(f"{missing}.")
    if not is_hub_id(name):
        raise ValueError(
            f"{missing}. Nor is it a hub id, which has the form 'name' or 'owner/name' (a revision or "
            f"subfolder cannot be part of it)."
        )
    offline = hub_unreachable()
    if offline:
        cached = cached_snapshot(name)
        if cached:
            return cached
        raise ValueError(
            f"{missing}. As a hub id it cannot be downloaded: the Hugging Face hub is not reachable "
            f"({offline}), and {name!r} is not in the local hub cache ({constants.HF_HUB_CACHE})."
        )
    if hub_has_no_model(name):
        raise ValueError(
            f"{missing}. Nor does the Hugging Face hub have a model {name!r} (check the spelling; a "
            f"private or gated model needs `hf auth login`)."
        )
    return name


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a hub repo id ('gpt2', 'owner/name'); it need not exist."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_unreachable() -> str | None:
    """None if the hub endpoint accepts a connection now; otherwise why not, in a few words."""
    from huggingface_hub import constants

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in TRUE:
            return f"{variable} is set"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE was set when huggingface_hub was imported"
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname, proxy_url.port or 80
    failure: list[str] = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
        except OSError as e:
            failure.append(f"no connection to {host}:{port}: {e.strerror or e}")
        else:
            failure.append("")

    # A thread, because a name lookup with an unreachable DNS server ignores the socket timeout.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT)
    if not failure:
        return f"{host}:{port} did not answer within {CONNECT_TIMEOUT} s"
    return failure[0] or None


def cached_snapshot(hub_id: str) -> str | None:
    """The local hub cache's folder of `hub_id` (its main revision), or None if it was never downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except LocalEntryNotFoundError:
        return None


def hub_has_no_model(hub_id: str) -> bool:
    """True only when the hub answers that `hub_id` does not exist (any other failure: False, loading will say)."""
    from huggingface_hub import repo_exists

    try:
        return not repo_exists(hub_id)
    except Exception:  # a timeout or server error is not evidence that the model is missing
        return False


def _did_you_mean(path: str) -> str:
    parent, base = os.path.split(os.path.abspath(path))
    try:
        folders = [entry.name for entry in os.scandir(parent) if entry.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(base, folders, n=1)
    return f" (did you mean {os.path.join(os.path.dirname(path), close[0])!r}?)" if close else ""
