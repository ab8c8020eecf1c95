"""Reach Hugging Face models and datasets from anywhere, including mainland China.

Order of preference for `resolve_model`: a local directory, the Hugging Face hub or a mirror
(https://hf-mirror.com), then ModelScope (where Qwen ids are the same), else a clear error.
All downloads go through injectable functions so tests never touch the network.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, when `huggingface_hub.constants` is
first imported (huggingface_hub 2.4.0, constants.py; `datasets.config` does the same), so
`configure_hub` must run before transformers / datasets / TRL are imported.
"""

from __future__ import annotations

import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

HF_ENDPOINT = "https://huggingface.co"
MIRROR_ENDPOINT = "https://hf-mirror.com"
DEFAULT_CANDIDATES = (HF_ENDPOINT, MIRROR_ENDPOINT)

# Modules that copy HF_ENDPOINT / HF_HUB_OFFLINE into constants at import time:
# module -> (endpoint attribute, offline attribute).
_IMPORT_TIME_SETTINGS = {
    "huggingface_hub.constants": ("ENDPOINT", "HF_HUB_OFFLINE"),
    "datasets.config": ("HF_ENDPOINT", "HF_HUB_OFFLINE"),
}


class HubConfigError(RuntimeError):
    """configure_hub was called too late: the hub libraries already read the old settings."""


class HubUnavailableError(RuntimeError):
    """No route to the requested model or dataset; the message lists what to do."""


def configure_hub(mirror: str | None = None, offline: bool = False) -> None:
    """Set the hub environment variables. Call it first thing in a notebook.

    mirror: an endpoint such as "https://hf-mirror.com" (sets HF_ENDPOINT); None leaves
    HF_ENDPOINT as it is. offline=True sets HF_HUB_OFFLINE=1 (use only the local cache).
    Telemetry is always turned off. Raises HubConfigError if huggingface_hub (or datasets)
    has already read different values, because then the new ones would be silently ignored.
    """
    env = {"HF_HUB_DISABLE_TELEMETRY": "1"}
    if mirror is not None:
        if not mirror.startswith(("https://", "http://")):
            raise ValueError(f"mirror must be a URL such as {MIRROR_ENDPOINT!r}, got {mirror!r}")
        env["HF_ENDPOINT"] = mirror.rstrip("/")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"

    for module_name, (endpoint_attr, offline_attr) in _IMPORT_TIME_SETTINGS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue  # not imported yet: it will read the variables we set below
        stale = []
        if mirror is not None and getattr(module, endpoint_attr) != env["HF_ENDPOINT"]:
            stale.append(f"endpoint {getattr(module, endpoint_attr)!r}")
        if offline and not getattr(module, offline_attr):
            stale.append("online mode")
        if stale:
            raise HubConfigError(
                f"{module_name} was already imported with {' and '.join(stale)}, so this "
                "setting would be ignored. Restart the kernel (or Python) and call "
                "labkit.hub.configure_hub(...) before importing transformers, datasets, trl or "
                "huggingface_hub."
            )
    os.environ.update(env)


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether `endpoint` answers an HTTP HEAD request within `timeout` seconds.

    Any HTTP answer below 500 counts as reachable (the server is there); network errors,
    timeouts and server errors count as unreachable.
    """
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError as error:
        return error.code < 500
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False


def choose_endpoint(candidates: Sequence[str] = DEFAULT_CANDIDATES,
                    probe: Callable[[str], bool] = hub_reachable) -> str | None:
    """The first candidate endpoint that `probe` reports reachable, else None."""
    for endpoint in candidates:
        if probe(endpoint):
            return endpoint
    return None


def _candidates() -> tuple[str, ...]:
    """HF_ENDPOINT (if the user set one) first, then the official hub and the mirror."""
    configured = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    return tuple(dict.fromkeys(e for e in (configured, *DEFAULT_CANDIDATES) if e))


_OFFLINE_NOTE = ("\nNote: HF_HUB_OFFLINE=1 is set (the CPU profile sets it), so only the local "
                 "cache was searched and it has no copy.")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _local_path(repo_id: str, kind: str) -> str | None:
    """`repo_id` as an existing local path, None if it is a hub id; error for a missing path."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"expected a hub id like 'Qwen/Qwen3-0.6B' or a local path, "
                         f"got {repo_id!r}")
    path = os.path.expanduser(repo_id)
    if (os.path.isdir(path) if kind == "model" else os.path.exists(path)):
        return path
    # Hub ids are "name" or "owner/name"; anything else can only have meant a path.
    if repo_id.startswith(("/", ".", "~")) or repo_id.count("/") > 1 or "\\" in repo_id:
        wanted = "directory" if kind == "model" else "file or directory"
        raise FileNotFoundError(f"{repo_id!r} is not an existing {wanted}: pass an existing "
                                f"local path or a hub id like 'Qwen/Qwen3-0.6B'")
    return None


def _hf_snapshot_download(repo_id: str, *, repo_type: str, endpoint: str | None) -> str:
    """huggingface_hub.snapshot_download, imported only when needed."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, repo_type=repo_type, endpoint=endpoint)


def _modelscope_snapshot_download() -> Callable[[str], str] | None:
    """modelscope.snapshot_download if the modelscope package is installed, else None."""
    try:
        import modelscope
    except ImportError:
        return None
    return modelscope.snapshot_download


def _resolve_on_hf(repo_id: str, repo_type: str, probe: Callable[[str], bool],
                   hf_download: Callable[..., str]) -> str | None:
    """Download from the cache (offline mode) or the first reachable endpoint; None if none.

    In a stand-in run ($LABKIT_STANDIN, see labkit.standin) the stand-in folder is the hub.
    """
    from labkit.standin import snapshot, world

    if world() is not None:
        return snapshot(repo_id, repo_type)
    if _offline():
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return hf_download(repo_id, repo_type=repo_type, endpoint=None)
        except LocalEntryNotFoundError:
            return None  # not cached: fall through to ModelScope or the explanatory error
    endpoint = choose_endpoint(_candidates(), probe)
    if endpoint is None:
        return None
    return hf_download(repo_id, repo_type=repo_type, endpoint=endpoint)


def resolve_model(model_id: str, *, modelscope_id: str | None = None,
                  probe: Callable[[str], bool] = hub_reachable,
                  hf_download: Callable[..., str] = _hf_snapshot_download,
                  modelscope_download: Callable[[str], str] | None = None) -> str:
    """A local directory holding `model_id`, downloading it if needed.

    1. `model_id` is an existing directory: returned as is.
    2. HF_HUB_OFFLINE is set: the copy in the Hugging Face cache.
    3. HF_ENDPOINT, huggingface.co or hf-mirror.com is reachable: downloaded from there.
    4. ModelScope is installed (or `modelscope_download` given): downloaded from ModelScope,
       as `modelscope_id` if its id differs (Qwen ids are the same on both).
    5. Otherwise HubUnavailableError says what to do.
    The downloaders are parameters so tests can pass fakes: `hf_download(repo_id, *, repo_type,
    endpoint) -> str` and `modelscope_download(model_id) -> str`.
    """
    local = _local_path(model_id, "model")
    if local is not None:
        return local
    path = _resolve_on_hf(model_id, "model", probe, hf_download)
    if path is not None:
        return path
    download = modelscope_download or _modelscope_snapshot_download()
    if download is not None:
        return download(modelscope_id or model_id)
    name = model_id.split("/")[-1]
    raise HubUnavailableError(
        f"Cannot get model {model_id!r}: none of {', '.join(_candidates())} is reachable and "
        "the modelscope package is not installed. Do one of:\n"
        f"  1. use the Hugging Face mirror: labkit.hub.configure_hub(mirror='{MIRROR_ENDPOINT}')"
        f" before any other import (or `export HF_ENDPOINT={MIRROR_ENDPOINT}`), then restart;\n"
        "  2. use ModelScope: `pip install modelscope` (Qwen ids are the same there);\n"
        f"  3. download it yourself, e.g. `modelscope download --model {model_id} --local_dir "
        f"./{name}` or `hf download {model_id} --local-dir ./{name}`, and pass the local path "
        f"'./{name}' instead of {model_id!r}.\n"
        "If you downloaded it before, configure_hub(offline=True) uses the local cache."
        + _OFFLINE_NOTE * _offline()
    )


def resolve_dataset(dataset_id: str, *, probe: Callable[[str], bool] = hub_reachable,
                    hf_download: Callable[..., str] = _hf_snapshot_download) -> str:
    """A local file or directory holding `dataset_id`, downloading it if needed.

    A local path wins; then the Hugging Face cache (offline mode) or a reachable endpoint
    (snapshot_download with repo_type="dataset"); otherwise HubUnavailableError.
    """
    local = _local_path(dataset_id, "dataset")
    if local is not None:
        return local
    path = _resolve_on_hf(dataset_id, "dataset", probe, hf_download)
    if path is not None:
        return path
    name = dataset_id.split("/")[-1]
    raise HubUnavailableError(
        f"Cannot get dataset {dataset_id!r}: none of {', '.join(_candidates())} is reachable. "
        "Do one of:\n"
        f"  1. use the Hugging Face mirror: labkit.hub.configure_hub(mirror='{MIRROR_ENDPOINT}')"
        f" before any other import (or `export HF_ENDPOINT={MIRROR_ENDPOINT}`), then restart;\n"
        f"  2. download it yourself (`hf download {dataset_id} --repo-type dataset --local-dir "
        f"./{name}`, or from modelscope.cn) and pass the local path './{name}' instead of "
        f"{dataset_id!r}.\n"
        "If you downloaded it before, configure_hub(offline=True) uses the local cache."
        + _OFFLINE_NOTE * _offline()
    )
