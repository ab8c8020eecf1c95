"""Reach Hugging Face models and datasets from anywhere, including mainland China.

Model ids and dataset ids resolve through one chain (`resolve_model`, `resolve_dataset`):

1. an existing local path: used as is;
2. DATA_DIR, a folder of repos downloaded by hand (`data_dir=`, else $LABKIT_HUB_DATA_DIR):
   DATA_DIR/<owner>/<name> (e.g. DATA_DIR/openai/gsm8k) or DATA_DIR/<name> (DATA_DIR/gsm8k),
   each holding the repo's files in the hub's own layout (see LAYOUT_FILES);
3. the Hugging Face hub: HF_ENDPOINT if set, https://huggingface.co, then the mirror
   https://hf-mirror.com (with HF_HUB_OFFLINE=1: only the local Hugging Face cache);
4. ModelScope, when the modelscope package is installed (ids in MODELSCOPE_IDS);
5. otherwise one HubUnavailableError: every source tried, what happened there, what to do.
In a stand-in run ($LABKIT_STANDIN, see labkit.standin) the stand-in folder replaces steps 3-4.
Probes and downloaders are parameters, so tests never touch the network.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_DISABLE_XET once, when
`huggingface_hub.constants` is first imported (huggingface_hub 2.4.0, constants.py; `datasets.config`
does the same for the first two), so `configure_hub` must run before transformers / datasets / TRL
are imported. Xet: huggingface_hub fetches a Xet-stored file from the Xet server named in the
response headers, not from HF_ENDPOINT, so downloads through a mirror break; labkit turns Xet off
whenever the endpoint is not huggingface.co (`disable_xet_off_hub`).
"""

from __future__ import annotations

import http.client
import importlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import NoReturn

HF_ENDPOINT = "https://huggingface.co"
MIRROR_ENDPOINT = "https://hf-mirror.com"
DEFAULT_CANDIDATES = (HF_ENDPOINT, MIRROR_ENDPOINT)
# The folder of repos downloaded by hand (DATA_DIR), when no data_dir= is passed.
DATA_DIR_ENV = "LABKIT_HUB_DATA_DIR"

# Hub id -> its ids on ModelScope, tried in order; an id not listed is tried as is (Qwen's model
# ids are the same on both). What could be checked offline, from public code and docs:
# - openai/gsm8k: evalscope's GSM8K benchmark loads dataset_id "AI-ModelScope/gsm8k" (subset
#   main, splits train/test) and a published data note cites its main/test-00000-of-00001.parquet,
#   the hub's layout. "modelscope/gsm8k" is ModelScope's own copy (MsDataset.load examples, a git
#   clone URL in verl's docs); its file layout was not checked.
# - argilla/distilabel-math-preference-dpo: NOT verified, no ModelScope copy was found offline.
#   AI-ModelScope/<name> is where ModelScope mirrors hub datasets (ms-swift's dataset_info.json pairs
#   many ids that way); the hub id itself is tried next.
MODELSCOPE_IDS: dict[str, tuple[str, ...]] = {
    "openai/gsm8k": ("AI-ModelScope/gsm8k", "modelscope/gsm8k"),
    "argilla/distilabel-math-preference-dpo": ("AI-ModelScope/distilabel-math-preference-dpo",
                                               "argilla/distilabel-math-preference-dpo"),
}
# One file a complete copy holds, in the hub's layout (what a download by hand must produce);
# a model folder always has config.json.
LAYOUT_FILES: dict[str, str] = {
    "openai/gsm8k": "main/test-00000-of-00001.parquet",
    "argilla/distilabel-math-preference-dpo": "data/train-00000-of-00001.parquet",
}

# Modules that copy HF_ENDPOINT / HF_HUB_OFFLINE into constants at import time:
# module -> (endpoint attribute, offline attribute).
_IMPORT_TIME_SETTINGS = {
    "huggingface_hub.constants": ("ENDPOINT", "HF_HUB_OFFLINE"),
    "datasets.config": ("HF_ENDPOINT", "HF_HUB_OFFLINE"),
}


class HubConfigError(RuntimeError):
    """configure_hub was called too late: the hub libraries already read the old settings."""


class HubUnavailableError(RuntimeError):
    """No source has the model or dataset; the message lists each source tried and what to do.

    `tried` holds (source, what happened) pairs, in the order they were tried.
    """

    def __init__(self, message: str, tried: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.tried = list(tried)


def configure_hub(mirror: str | None = None, offline: bool = False,
                  data_dir: str | os.PathLike | None = None, allow_http: bool = False) -> None:
    """Set the hub environment variables. Call it first thing in a notebook.

    mirror: an endpoint such as "https://hf-mirror.com" (sets HF_ENDPOINT); None leaves
    HF_ENDPOINT as it is. offline=True sets HF_HUB_OFFLINE=1 (use only the local cache).
    data_dir: the folder of repos downloaded by hand (sets $LABKIT_HUB_DATA_DIR, absolute; it
    must exist); None leaves it as it is. An http:// mirror (weights and data in cleartext, open to
    tampering on the way) is refused unless `allow_http=True` says it is meant (a campus proxy). Telemetry is always turned off, and Xet whenever the
    endpoint is not huggingface.co. Raises HubConfigError if huggingface_hub (or datasets) has
    already read different values, because then the new ones would be silently ignored.
    """
    env = {"HF_HUB_DISABLE_TELEMETRY": "1"}
    if data_dir is not None:
        env[DATA_DIR_ENV] = _existing_data_dir(data_dir)
    if mirror is not None:
        if not mirror.startswith(("https://", "http://")):
            raise ValueError(f"mirror must be a URL such as {MIRROR_ENDPOINT!r}, got {mirror!r}")
        if mirror.startswith("http://") and not allow_http:
            raise ValueError(f"mirror {mirror!r} is plain http: model weights and data would travel unencrypted "
                             f"and could be altered on the way. Use https (e.g. {MIRROR_ENDPOINT!r}), or pass "
                             "allow_http=True if this is a trusted local proxy.")
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
    disable_xet_off_hub(os.environ.get("HF_ENDPOINT"))


def _existing_data_dir(data_dir: str | os.PathLike) -> str:
    """`data_dir` as an absolute path; FileNotFoundError if it is not a folder."""
    folder = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"DATA_DIR {os.fspath(data_dir)!r} is not an existing folder")
    return folder


def disable_xet_off_hub(endpoint: str | None) -> bool:
    """Turn huggingface_hub's Xet transfers off unless `endpoint` is huggingface.co; True if it did.

    Sets HF_HUB_DISABLE_XET=1 for a huggingface_hub not imported yet and, if it is imported,
    `huggingface_hub.constants.HF_HUB_DISABLE_XET` (file_download and is_xet_available read that
    attribute on every call). Files then come over plain HTTP from the endpoint itself.
    """
    if not endpoint or urllib.parse.urlsplit(endpoint).hostname == "huggingface.co":
        return False
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_DISABLE_XET = True
    return True


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


def _modelscope_download(kind: str) -> Callable[[str], str] | None:
    """modelscope's snapshot_download (models) or dataset_snapshot_download; None if not installed.

    Both take the ModelScope id first and return the local folder
    (modelscope/hub/snapshot_download.py).
    """
    try:
        import modelscope
    except ImportError:
        return None
    name = "snapshot_download" if kind == "model" else "dataset_snapshot_download"
    function = getattr(modelscope, name, None)
    if function is None:  # releases that export it only from its own module
        function = getattr(importlib.import_module("modelscope.hub.snapshot_download"), name)
    return function


# ---------------------------------------------------------------- the resolution chain


class _Miss(Exception):
    """A source that does not have the repo; the message says why (for HubUnavailableError)."""


def _fail(why: str) -> NoReturn:
    raise _Miss(why)


def data_dir_folders(repo_id: str, data_dir: str | os.PathLike) -> list[Path]:
    """Where `repo_id` may sit in DATA_DIR: <owner>/<name> (the hub id), then <name>."""
    root = Path(data_dir)
    return list(dict.fromkeys([root / repo_id, root / repo_id.split("/")[-1]]))


def _data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """`data_dir`, else $LABKIT_HUB_DATA_DIR, as an absolute path; None if neither is set."""
    value = os.fspath(data_dir) if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def _from_data_dir(repo_id: str, kind: str, root: Path | None) -> str:
    """The first non-empty folder of data_dir_folders; a model folder must have config.json."""
    if root is None:
        raise _Miss(f"not set (data_dir= / ${DATA_DIR_ENV})")
    if not root.is_dir():
        raise _Miss("no such folder")
    for folder in data_dir_folders(repo_id, root):
        if folder.is_dir() and any(folder.iterdir()):
            if kind == "model" and not (folder / "config.json").is_file():
                raise _Miss(f"{folder} has no config.json (an incomplete download?)")
            return str(folder)
    raise _Miss(f"no folder {' or '.join(str(f) for f in data_dir_folders(repo_id, root))}")


def _from_endpoint(repo_id: str, kind: str, endpoint: str, probe: Callable[[str], bool],
                   hf_download: Callable[..., str]) -> str:
    """Download from `endpoint` if it answers (Xet off unless it is huggingface.co)."""
    if not probe(endpoint):
        raise _Miss("unreachable")
    disable_xet_off_hub(endpoint)
    return hf_download(repo_id, repo_type=kind, endpoint=endpoint)


def _sources(repo_id: str, kind: str, root: Path | None, probe: Callable[[str], bool],
             hf_download: Callable[..., str], modelscope_download: Callable[[str], str] | None,
             modelscope_ids: Sequence[str]) -> Iterator[tuple[str, Callable[[], str]]]:
    """(source, fetch) pairs in the order of the chain; fetch returns a local path or raises."""
    yield f"DATA_DIR {root}" if root else "DATA_DIR", partial(_from_data_dir, repo_id, kind, root)
    if _offline():
        yield ("Hugging Face cache (HF_HUB_OFFLINE=1)",
               partial(hf_download, repo_id, repo_type=kind, endpoint=None))
        skipped = "skipped (HF_HUB_OFFLINE=1, set by the cpu profile too)"
        yield "hub, mirror and ModelScope", partial(_fail, skipped)
        return
    for endpoint in _candidates():
        yield endpoint, partial(_from_endpoint, repo_id, kind, endpoint, probe, hf_download)
    try:
        download = modelscope_download or _modelscope_download(kind)
    except Exception as error:  # installed, but its import fails
        yield "ModelScope", partial(_fail, f"cannot be imported ({_describe(error)})")
        return
    if download is None:
        yield "ModelScope", partial(_fail, "not installed (pip install modelscope)")
        return
    for ms_id in modelscope_ids:
        yield f"ModelScope {ms_id}", partial(download, ms_id)


def _describe(error: Exception) -> str:
    """'not found' for a repo the source does not have, else the error's type and first line."""
    name = type(error).__name__
    status = getattr(getattr(error, "response", None), "status_code", None)
    if name == "LocalEntryNotFoundError":
        return "no copy in the local cache"
    if "NotFound" in name or "NotExist" in name or status == 404:
        return f"not found ({name})"
    lines = str(error).strip().splitlines()
    return f"error: {name}: {lines[0][:200]}" if lines else f"error: {name}"


def _advice(repo_id: str, kind: str, root: Path | None, modelscope_ids: Sequence[str]) -> list[str]:
    """What a student can do, with the exact commands and folder layout."""
    base = str(root) if root else "<DATA_DIR>"
    folder, ms_id = f"{base}/{repo_id}", modelscope_ids[0]
    layout = LAYOUT_FILES.get(repo_id, "config.json" if kind == "model" else "<the repo's files>")
    repo_type = " --repo-type dataset" if kind == "dataset" else ""
    pick = "" if root else " (a folder of your choice, e.g. /root/autodl-tmp/data)"
    lines = [
        "Do one of:",
        f"  1. use the Hugging Face mirror: `export HF_ENDPOINT={MIRROR_ENDPOINT}` before starting "
        f"Jupyter,\n     or setup(..., mirror='{MIRROR_ENDPOINT}') before any other import, then "
        "restart the kernel;",
        f"  2. use ModelScope: `pip install modelscope` (there it is {ms_id});",
        f"  3. download it by hand into {base}{pick}, in the hub's layout:",
        f"       hf download {repo_id}{repo_type} --local-dir {folder}",
        f"       (or: modelscope download --{kind} {ms_id} --local_dir {folder})",
        f"     so that {folder}/{layout} exists,",
        f"     then set DATA_DIR = '{base}' in the parameters cell (or `export {DATA_DIR_ENV}={base}`);",
    ]
    if kind == "model":
        lines.append(f"  4. or set MODEL_ID to the model's own folder, e.g. MODEL_ID = '{folder}'.")
    lines.append("If you downloaded it before, configure_hub(offline=True) uses the local cache.")
    return lines


def _resolve(repo_id: str, kind: str, *, data_dir: str | os.PathLike | None,
             modelscope_id: str | None, probe: Callable[[str], bool],
             hf_download: Callable[..., str],
             modelscope_download: Callable[[str], str] | None) -> str:
    """The chain of the module docstring for a model or dataset id; see resolve_model."""
    from labkit.standin import snapshot, world

    local = _local_path(repo_id, kind)
    if local is not None:
        return local
    root = _data_dir(data_dir)
    if world() is not None:  # a stand-in run: DATA_DIR, then the stand-in folder is the hub
        try:
            return _from_data_dir(repo_id, kind, root)
        except _Miss:
            return snapshot(repo_id, kind)
    ms_ids = (modelscope_id,) if modelscope_id else MODELSCOPE_IDS.get(repo_id, (repo_id,))
    tried: list[tuple[str, str]] = []
    last: Exception | None = None
    sources = _sources(repo_id, kind, root, probe, hf_download, modelscope_download, ms_ids)
    for source, fetch in sources:
        try:
            return fetch()
        except _Miss as miss:
            tried.append((source, str(miss)))
        except Exception as error:  # a failed download: note it, try the next source
            tried.append((source, _describe(error)))
            last = error
    lines = [f"Cannot get {kind} {repo_id!r}. Tried, in order:"]
    lines += [f"  - {source}: {outcome}" for source, outcome in tried]
    lines += _advice(repo_id, kind, root, ms_ids)
    raise HubUnavailableError("\n".join(lines), tried) from last


def resolve_model(model_id: str, *, modelscope_id: str | None = None,
                  data_dir: str | os.PathLike | None = None,
                  probe: Callable[[str], bool] = hub_reachable,
                  hf_download: Callable[..., str] = _hf_snapshot_download,
                  modelscope_download: Callable[[str], str] | None = None) -> str:
    """A local directory holding `model_id`, downloading it if needed.

    The chain of the module docstring: an existing directory; DATA_DIR (`data_dir`, else
    $LABKIT_HUB_DATA_DIR); HF_ENDPOINT / huggingface.co / hf-mirror.com (HF_HUB_OFFLINE: the
    cache only); ModelScope as `modelscope_id` (default: MODELSCOPE_IDS, else the same id);
    else HubUnavailableError. Fakes for tests: `probe(endpoint) -> bool`,
    `hf_download(repo_id, *, repo_type, endpoint) -> str`, `modelscope_download(id) -> str`.
    """
    return _resolve(model_id, "model", data_dir=data_dir, modelscope_id=modelscope_id,
                    probe=probe, hf_download=hf_download, modelscope_download=modelscope_download)


def resolve_dataset(dataset_id: str, *, modelscope_id: str | None = None,
                    data_dir: str | os.PathLike | None = None,
                    probe: Callable[[str], bool] = hub_reachable,
                    hf_download: Callable[..., str] = _hf_snapshot_download,
                    modelscope_download: Callable[[str], str] | None = None) -> str:
    """A local file or directory holding `dataset_id`, downloading it if needed.

    The same chain as resolve_model (hub downloads with repo_type="dataset"; ModelScope through
    dataset_snapshot_download, as the ids in MODELSCOPE_IDS).
    """
    return _resolve(dataset_id, "dataset", data_dir=data_dir, modelscope_id=modelscope_id,
                    probe=probe, hf_download=hf_download, modelscope_download=modelscope_download)
