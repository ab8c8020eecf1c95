"""Tests for labkit.hub. No test touches the network: probes and downloaders are fakes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import shutil
import textwrap
import types
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import pytest

from labkit import hub
from labkit.hub import (
    HubConfigError,
    HubUnavailableError,
    choose_endpoint,
    configure_hub,
    hub_reachable,
    resolve_dataset,
    resolve_model,
)

HF, MIRROR = "https://huggingface.co", "https://hf-mirror.com"
HUB_ENV = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE",
           "HF_HUB_DISABLE_XET", hub.DATA_DIR_ENV, "LABKIT_STANDIN")


@pytest.fixture(autouse=True)
def no_network_and_clean_env(monkeypatch):
    """Fail loudly on any real HTTP request; start each test with no hub variables set, modelscope
    not installed, and huggingface_hub's Xet switch restored afterwards."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    for name in HUB_ENV:
        monkeypatch.setenv(name, "")  # recorded, so what configure_hub sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setitem(sys.modules, "modelscope", None)  # makes `import modelscope` fail
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)


@pytest.fixture
def hub_not_imported(monkeypatch):
    """Pretend huggingface_hub / datasets have not read their settings yet (restored after)."""
    for name in hub._IMPORT_TIME_SETTINGS:
        monkeypatch.delitem(sys.modules, name, raising=False)


class FakeHF:
    """Records calls the way huggingface_hub.snapshot_download would be called."""

    def __init__(self):
        self.calls = []

    def __call__(self, repo_id, *, repo_type, endpoint):
        self.calls.append((repo_id, repo_type, endpoint))
        return f"/cache/{repo_type}s/{repo_id}"


def never(*args, **kwargs):
    raise AssertionError("should not be called")


def reachable_only(*endpoints):
    probed = []

    def probe(endpoint):
        probed.append(endpoint)
        return endpoint in endpoints

    probe.probed = probed
    return probe


# ---------------------------------------------------------------- resolve_model

def test_local_directory_wins(tmp_path):
    assert resolve_model(str(tmp_path), probe=never, hf_download=never,
                         modelscope_download=never) == str(tmp_path)


def test_missing_local_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        resolve_model("./models/Qwen3-0.6B", probe=never, hf_download=never)


def test_main_hub_used_when_reachable():
    fake = FakeHF()
    path = resolve_model("Qwen/Qwen3-0.6B", probe=reachable_only(HF, MIRROR), hf_download=fake)
    assert path == "/cache/models/Qwen/Qwen3-0.6B"
    assert fake.calls == [("Qwen/Qwen3-0.6B", "model", HF)]


def test_mirror_chosen_when_main_hub_unreachable():
    fake, probe = FakeHF(), reachable_only(MIRROR)
    resolve_model("Qwen/Qwen3-0.6B", probe=probe, hf_download=fake, modelscope_download=never)
    assert probe.probed == [HF, MIRROR]
    assert fake.calls == [("Qwen/Qwen3-0.6B", "model", MIRROR)]


def test_configured_endpoint_is_tried_first(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hf.example.edu.cn/")
    fake, probe = FakeHF(), reachable_only("https://hf.example.edu.cn", HF)
    resolve_model("Qwen/Qwen3-0.6B", probe=probe, hf_download=fake)
    assert probe.probed == ["https://hf.example.edu.cn"]
    assert fake.calls[0][2] == "https://hf.example.edu.cn"


def test_offline_mode_uses_the_cache_without_probing(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake = FakeHF()
    resolve_model("Qwen/Qwen3-0.6B", probe=never, hf_download=fake, modelscope_download=never)
    assert fake.calls == [("Qwen/Qwen3-0.6B", "model", None)]


def fake_modelscope(monkeypatch, calls: list, missing: tuple[str, ...] = ()) -> None:
    """Install a fake `modelscope` package: both downloaders record calls; ids in `missing` raise
    NotExistError, as modelscope does for an id it does not have."""
    class NotExistError(Exception):
        pass

    def download(kind):
        def fetch(repo_id):
            calls.append((kind, repo_id))
            if repo_id in missing:
                raise NotExistError(f"{repo_id} does not exist")
            return f"/ms/{kind}s/{repo_id}"
        return fetch

    module = types.ModuleType("modelscope")
    module.snapshot_download = download("model")
    module.dataset_snapshot_download = download("dataset")
    monkeypatch.setitem(sys.modules, "modelscope", module)


def test_modelscope_used_when_hf_unreachable(monkeypatch):
    calls = []
    fake_modelscope = types.ModuleType("modelscope")
    fake_modelscope.snapshot_download = lambda model_id: calls.append(model_id) or "/ms/" + model_id
    monkeypatch.setitem(sys.modules, "modelscope", fake_modelscope)

    path = resolve_model("Qwen/Qwen3-0.6B", probe=reachable_only(), hf_download=never)
    assert path == "/ms/Qwen/Qwen3-0.6B" and calls == ["Qwen/Qwen3-0.6B"]
    resolve_model("org/model", modelscope_id="OrgOnMS/model", probe=reachable_only(),
                  hf_download=never)
    assert calls[-1] == "OrgOnMS/model"


def test_error_when_nothing_works_says_what_to_do():
    with pytest.raises(HubUnavailableError) as info:
        resolve_model("Qwen/Qwen3-0.6B", probe=reachable_only(), hf_download=never)
    message = str(info.value)
    assert info.value.tried == [("DATA_DIR", f"not set (data_dir= / ${hub.DATA_DIR_ENV})"),
                                (HF, "unreachable"), (MIRROR, "unreachable"),
                                ("ModelScope", "not installed (pip install modelscope)")]
    assert f"HF_ENDPOINT={MIRROR}" in message and f"mirror='{MIRROR}'" in message
    assert "pip install modelscope" in message
    assert "modelscope download --model Qwen/Qwen3-0.6B --local_dir <DATA_DIR>/Qwen/Qwen3-0.6B" in message
    assert "<DATA_DIR>/Qwen/Qwen3-0.6B/config.json exists" in message
    assert "MODEL_ID = '<DATA_DIR>/Qwen/Qwen3-0.6B'" in message


# ---------------------------------------------------------------- resolve_dataset

def test_dataset_local_file_wins(tmp_path):
    rows = tmp_path / "rl.jsonl"
    rows.write_text('{"id": "1"}\n')
    assert resolve_dataset(str(rows), probe=never, hf_download=never) == str(rows)


def test_dataset_downloaded_as_dataset_repo():
    fake = FakeHF()
    resolve_dataset("openai/gsm8k", probe=reachable_only(MIRROR), hf_download=fake)
    assert fake.calls == [("openai/gsm8k", "dataset", MIRROR)]


def test_dataset_error_names_mirror_modelscope_and_the_data_dir_layout(tmp_path):
    with pytest.raises(HubUnavailableError) as info:
        resolve_dataset("openai/gsm8k", data_dir=tmp_path, probe=reachable_only(), hf_download=never)
    message = str(info.value)
    assert f"HF_ENDPOINT={MIRROR}" in message and "pip install modelscope" in message
    assert (f"hf download openai/gsm8k --repo-type dataset --local-dir {tmp_path}/openai/gsm8k"
            in message)
    assert f"modelscope download --dataset AI-ModelScope/gsm8k --local_dir {tmp_path}/openai/gsm8k" \
        in message
    assert f"{tmp_path}/openai/gsm8k/main/test-00000-of-00001.parquet exists" in message
    assert f"DATA_DIR = '{tmp_path}'" in message and "MODEL_ID" not in message


def test_bad_ids_are_rejected():
    with pytest.raises(ValueError, match="hub id"):
        resolve_model("  ", probe=never, hf_download=never)


# ---------------------------------------------------------------- the chain, models and datasets alike

KINDS = [(resolve_model, "model", "Qwen/Qwen3-0.6B"), (resolve_dataset, "dataset", "openai/gsm8k")]


class RepositoryNotFoundError(Exception):
    """Named like huggingface_hub's, which is what the chain looks at."""


class LocalEntryNotFoundError(Exception):
    pass


def hub_copy(folder: Path, kind: str) -> Path:
    """A non-empty folder as a hand download leaves it (a model has config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ("config.json" if kind == "model" else "README.md")).write_text("{}")
    return folder


@pytest.mark.parametrize("resolve, kind, repo_id", KINDS)
def test_every_source_is_tried_in_order_then_one_error_lists_them(tmp_path, monkeypatch,
                                                                  resolve, kind, repo_id):
    calls = []
    fake_modelscope(monkeypatch, calls)

    def hf_download(repo, *, repo_type, endpoint):
        calls.append(("hf", endpoint))
        raise RepositoryNotFoundError("404 Client Error") if endpoint == HF else OSError("reset\nmore")

    def broken_modelscope(ms_id):
        calls.append(("ms", ms_id))
        raise RuntimeError("quota exceeded")

    with pytest.raises(HubUnavailableError) as info:
        resolve(repo_id, data_dir=tmp_path / "nope", probe=reachable_only(HF, MIRROR),
                hf_download=hf_download, modelscope_download=broken_modelscope)
    ms_id = hub.MODELSCOPE_IDS.get(repo_id, (repo_id,))[0]
    assert info.value.tried[:4] == [
        (f"DATA_DIR {tmp_path / 'nope'}", "no such folder"),
        (HF, "not found (RepositoryNotFoundError)"),
        (MIRROR, "error: OSError: reset"),
        (f"ModelScope {ms_id}", "error: RuntimeError: quota exceeded")]
    assert calls[:3] == [("hf", HF), ("hf", MIRROR), ("ms", ms_id)]
    assert all(f"  - {source}: {outcome}" in str(info.value) for source, outcome in info.value.tried)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("resolve, kind, repo_id", KINDS)
def test_local_path_then_data_dir_win_without_probing(tmp_path, resolve, kind, repo_id):
    local = hub_copy(tmp_path / "mine", kind)
    assert resolve(str(local), data_dir=tmp_path, probe=never, hf_download=never) == str(local)
    in_data_dir = hub_copy(tmp_path / repo_id, kind)
    assert resolve(repo_id, data_dir=tmp_path, probe=never, hf_download=never,
                   modelscope_download=never) == str(in_data_dir)


@pytest.mark.parametrize("resolve, kind, repo_id", KINDS)
def test_data_dir_layouts(tmp_path, monkeypatch, resolve, kind, repo_id):
    """DATA_DIR/<owner>/<name> or DATA_DIR/<name>; the full id first; empty folders do not count;
    $LABKIT_HUB_DATA_DIR when no data_dir is passed."""
    name = repo_id.split("/")[-1]
    (tmp_path / repo_id).mkdir(parents=True)  # empty: an aborted download
    short = hub_copy(tmp_path / name, kind)
    assert resolve(repo_id, data_dir=tmp_path, probe=never, hf_download=never) == str(short)
    full = hub_copy(tmp_path / repo_id, kind)
    assert resolve(repo_id, data_dir=str(tmp_path), probe=never, hf_download=never) == str(full)
    monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path))
    assert resolve(repo_id, probe=never, hf_download=never) == str(full)
    assert hub.data_dir_folders(repo_id, "/d") == [Path("/d") / repo_id, Path("/d") / name]


def test_data_dir_model_without_config_is_reported_and_skipped(tmp_path):
    (tmp_path / "Qwen" / "Qwen3-0.6B").mkdir(parents=True)
    (tmp_path / "Qwen" / "Qwen3-0.6B" / "model.safetensors").write_text("")
    fake = FakeHF()
    assert resolve_model("Qwen/Qwen3-0.6B", data_dir=tmp_path, probe=reachable_only(HF),
                         hf_download=fake) == "/cache/models/Qwen/Qwen3-0.6B"
    with pytest.raises(HubUnavailableError) as info:
        resolve_model("Qwen/Qwen3-0.6B", data_dir=tmp_path, probe=reachable_only(), hf_download=never)
    assert "has no config.json" in info.value.tried[0][1]


@pytest.mark.parametrize("resolve, kind, repo_id", KINDS)
def test_a_failed_hub_download_falls_through_to_the_mirror(resolve, kind, repo_id):
    def flaky(repo, *, repo_type, endpoint):
        if endpoint == HF:
            raise TimeoutError("read timed out")
        return f"/cache/{repo_type}s/{repo}"

    assert resolve(repo_id, probe=reachable_only(HF, MIRROR), hf_download=flaky) == \
        f"/cache/{kind}s/{repo_id}"


def test_datasets_fall_back_to_modelscope_under_its_own_ids(monkeypatch):
    calls = []
    fake_modelscope(monkeypatch, calls, missing=("AI-ModelScope/distilabel-math-preference-dpo",))
    assert resolve_dataset("openai/gsm8k", probe=reachable_only(), hf_download=never) == \
        "/ms/datasets/AI-ModelScope/gsm8k"
    prefs = "argilla/distilabel-math-preference-dpo"
    assert resolve_dataset(prefs, probe=reachable_only(), hf_download=never) == f"/ms/datasets/{prefs}"
    assert calls == [("dataset", "AI-ModelScope/gsm8k"),
                     ("dataset", "AI-ModelScope/distilabel-math-preference-dpo"), ("dataset", prefs)]
    assert resolve_model("Qwen/Qwen3-0.6B", probe=reachable_only(), hf_download=never) == \
        "/ms/models/Qwen/Qwen3-0.6B"
    assert resolve_dataset("someone/set", modelscope_id="other/set", probe=reachable_only(),
                           hf_download=never) == "/ms/datasets/other/set"


def test_modelscope_that_cannot_be_imported_is_reported(monkeypatch):
    module = types.ModuleType("modelscope")  # an old or broken install: no dataset downloader
    monkeypatch.setitem(sys.modules, "modelscope", module)
    with pytest.raises(HubUnavailableError) as info:
        resolve_dataset("openai/gsm8k", probe=reachable_only(), hf_download=never)
    source, outcome = info.value.tried[-1]
    assert source == "ModelScope" and outcome.startswith("cannot be imported (")


@pytest.mark.parametrize("resolve, kind, repo_id", KINDS)
def test_offline_uses_the_cache_only(monkeypatch, resolve, kind, repo_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_modelscope(monkeypatch, [])

    def not_cached(repo, *, repo_type, endpoint):
        assert endpoint is None
        raise LocalEntryNotFoundError("not cached")

    with pytest.raises(HubUnavailableError) as info:
        resolve(repo_id, probe=never, hf_download=not_cached, modelscope_download=never)
    assert info.value.tried[1:] == [
        ("Hugging Face cache (HF_HUB_OFFLINE=1)", "no copy in the local cache"),
        ("hub, mirror and ModelScope", "skipped (HF_HUB_OFFLINE=1, set by the cpu profile too)")]


def test_a_404_response_reads_not_found():
    error = OSError("404 Client Error")
    error.response = types.SimpleNamespace(status_code=404)
    assert hub._describe(error) == "not found (OSError)"
    assert hub._describe(ValueError()) == "error: ValueError"


def test_standin_world_comes_after_data_dir(tmp_path, monkeypatch):
    world = tmp_path / "world"
    hub_copy(world / "datasets" / "openai" / "gsm8k", "dataset")
    monkeypatch.setenv("LABKIT_STANDIN", str(world))
    assert resolve_dataset("openai/gsm8k", probe=never, hf_download=never) == \
        str(world / "datasets" / "openai" / "gsm8k")
    mine = hub_copy(tmp_path / "data" / "gsm8k", "dataset")
    assert resolve_dataset("openai/gsm8k", data_dir=tmp_path / "data", probe=never,
                           hf_download=never) == str(mine)


# ---------------------------------------------------------------- the same data from every source

ROUTES = ("local path", "DATA_DIR/<owner>/<name>", "DATA_DIR/<name>", "huggingface.co",
          "hf-mirror.com", "ModelScope", "stand-in world")


@pytest.fixture(scope="module")
def standin_datasets(tmp_path_factory) -> Path:
    """The stand-in world's GSM8K and preference parquet files, in the hub's layout."""
    from labkit import standin

    root = tmp_path_factory.mktemp("standin") / "datasets"
    standin.build_gsm8k(root / standin.GSM8K)
    standin.build_prefs(root / standin.PREFS)
    return root


def serve(route: str, repo_id: str, source: Path, tmp_path: Path, monkeypatch) -> str:
    """Make `route` the only source holding a copy of `source` as `repo_id`; what to load."""
    if route == "local path":
        return str(shutil.copytree(source, tmp_path / "mine"))
    folders = {"DATA_DIR/<owner>/<name>": tmp_path / "data" / repo_id,
               "DATA_DIR/<name>": tmp_path / "data" / repo_id.split("/")[-1],
               "stand-in world": tmp_path / "world" / "datasets" / repo_id}
    if route in folders:
        shutil.copytree(source, folders[route])
        monkeypatch.setenv(hub.DATA_DIR_ENV, str(tmp_path / "data"))
        if route == "stand-in world":
            monkeypatch.setenv("LABKIT_STANDIN", str(tmp_path / "world"))
    endpoint = {"huggingface.co": HF, "hf-mirror.com": MIRROR}.get(route)

    def hf_download(repo, *, repo_type, endpoint):
        return str(shutil.copytree(source, tmp_path / "hf-cache" / repo, dirs_exist_ok=True))

    def modelscope_download(ms_id):
        return str(shutil.copytree(source, tmp_path / "ms-cache" / ms_id, dirs_exist_ok=True))

    monkeypatch.setattr(hub, "resolve_dataset", partial(
        resolve_dataset, probe=reachable_only(*filter(None, [endpoint])),
        hf_download=hf_download if endpoint else never,
        modelscope_download=modelscope_download if route == "ModelScope" else never))
    return repo_id


@pytest.mark.parametrize("route", ROUTES)
def test_gsm8k_is_the_same_from_every_source(route, standin_datasets, tmp_path, monkeypatch):
    from labkit.data import load_gsm8k

    source = standin_datasets / "openai" / "gsm8k"
    expected = {split: load_gsm8k(split, path=source) for split in ("train", "test")}
    assert len(expected["test"]) == 40
    path = serve(route, "openai/gsm8k", source, tmp_path, monkeypatch)
    assert {split: load_gsm8k(split, path=path) for split in ("train", "test")} == expected


@pytest.mark.parametrize("route", ROUTES)
def test_preference_pairs_are_the_same_from_every_source(route, standin_datasets, tmp_path,
                                                         monkeypatch):
    from labkit.preferences import load_preferences

    prefs = "argilla/distilabel-math-preference-dpo"
    source = standin_datasets / prefs
    expected = {split: load_preferences(str(source), split) for split in ("train", "heldout")}
    assert len(expected["heldout"]) == 12
    path = serve(route, prefs, source, tmp_path, monkeypatch)
    assert {split: load_preferences(path, split) for split in ("train", "heldout")} == expected


# ---------------------------------------------------------------- Xet


def test_xet_is_off_for_a_mirror_download_only():
    import huggingface_hub.constants as constants

    seen = []

    def record(repo, *, repo_type, endpoint):
        seen.append((endpoint, os.environ.get("HF_HUB_DISABLE_XET"), constants.HF_HUB_DISABLE_XET))
        return "/cache"

    resolve_model("Qwen/Qwen3-0.6B", probe=reachable_only(HF), hf_download=record)
    resolve_model("Qwen/Qwen3-0.6B", probe=reachable_only(MIRROR), hf_download=record)
    assert seen == [(HF, None, False), (MIRROR, "1", True)]


def test_configure_hub_turns_xet_off_for_a_mirror(hub_not_imported, monkeypatch):
    configure_hub(mirror=HF)
    assert "HF_HUB_DISABLE_XET" not in os.environ
    configure_hub(mirror=MIRROR)
    assert os.environ["HF_HUB_DISABLE_XET"] == "1"
    monkeypatch.delenv("HF_HUB_DISABLE_XET")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf.example.edu.cn")  # exported in the shell
    configure_hub()
    assert os.environ["HF_HUB_DISABLE_XET"] == "1"


@pytest.mark.parametrize("endpoint, xet", [(HF, "True"), (MIRROR, "False")])
def test_huggingface_hub_uses_xet_on_huggingface_co_only(endpoint, xet):
    """The real library, in a fresh interpreter (hf_xet is installed): the check its downloads make."""
    script = textwrap.dedent(f"""
        from labkit.hub import configure_hub
        configure_hub(mirror="{endpoint}")
        from huggingface_hub import file_download
        print(file_download.is_xet_available())
    """)
    env = {"PYTHONPATH": str(Path(hub.__file__).resolve().parents[1])}  # no HF_* variables
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [xet]


# ---------------------------------------------------------------- DATA_DIR through configure_hub


def test_configure_hub_stores_the_data_dir_absolute(hub_not_imported, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    configure_hub(data_dir="data")
    assert os.environ[hub.DATA_DIR_ENV] == str(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="not an existing folder"):
        configure_hub(data_dir="missing")
    assert os.environ[hub.DATA_DIR_ENV] == str(tmp_path / "data")


# ---------------------------------------------------------------- configure_hub

def test_configure_hub_sets_the_environment(hub_not_imported):
    configure_hub(mirror=MIRROR + "/", offline=True)
    assert os.environ["HF_ENDPOINT"] == MIRROR
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"


def test_configure_hub_without_arguments_only_disables_telemetry(hub_not_imported):
    configure_hub()
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert "HF_ENDPOINT" not in os.environ and "HF_HUB_OFFLINE" not in os.environ


@pytest.mark.parametrize("module", list(hub._IMPORT_TIME_SETTINGS))
def test_configure_hub_refuses_after_import_with_other_endpoint(monkeypatch, hub_not_imported,
                                                                module):
    endpoint_attr, offline_attr = hub._IMPORT_TIME_SETTINGS[module]
    already_read = types.SimpleNamespace(**{endpoint_attr: HF, offline_attr: False})
    monkeypatch.setitem(sys.modules, module, already_read)
    with pytest.raises(HubConfigError, match="Restart the kernel"):
        configure_hub(mirror=MIRROR)
    with pytest.raises(HubConfigError, match="online mode"):
        configure_hub(offline=True)
    assert "HF_ENDPOINT" not in os.environ  # nothing half-applied
    configure_hub(mirror=HF + "/")  # the endpoint it already has: fine


def test_configure_hub_rejects_a_non_url():
    with pytest.raises(ValueError, match="must be a URL"):
        configure_hub(mirror="hf-mirror.com")


def test_huggingface_hub_reads_the_endpoint_at_import():
    """The real library, in a fresh interpreter: why configure_hub must come first."""
    script = textwrap.dedent(f"""
        from labkit.hub import configure_hub, HubConfigError
        configure_hub(mirror="{MIRROR}")
        import huggingface_hub.constants as constants
        assert constants.ENDPOINT == "{MIRROR}", constants.ENDPOINT
        try:
            configure_hub(mirror="https://other.example")
        except HubConfigError:
            print("refused")
    """)
    env = {"PYTHONPATH": str(Path(hub.__file__).resolve().parents[1])}  # no HF_* variables
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused"


# ---------------------------------------------------------------- probing

class FakeResponse(io.BytesIO):
    pass


def test_hub_reachable_sends_a_head_request(monkeypatch):
    seen = {}

    def fake_urlopen(request, timeout):
        seen.update(url=request.full_url, method=request.get_method(), timeout=timeout)
        return FakeResponse(b"")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert hub_reachable(MIRROR, timeout=1.5)
    assert seen == {"url": MIRROR, "method": "HEAD", "timeout": 1.5}


@pytest.mark.parametrize("error, expected", [
    (urllib.error.URLError("no route to host"), False),
    (TimeoutError("timed out"), False),
    (ConnectionResetError("reset"), False),
    (urllib.error.HTTPError(HF, 405, "Method Not Allowed", {}, None), True),  # server answered
    (urllib.error.HTTPError(HF, 503, "Service Unavailable", {}, None), False),
])
def test_hub_reachable_maps_errors(monkeypatch, error, expected):
    def fake_urlopen(request, timeout):
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert hub_reachable(HF) is expected


def test_choose_endpoint():
    assert choose_endpoint(probe=reachable_only(MIRROR)) == MIRROR
    assert choose_endpoint(probe=reachable_only(HF, MIRROR)) == HF
    assert choose_endpoint(probe=reachable_only()) is None
    assert choose_endpoint(["https://a", "https://b"], probe=reachable_only("https://b")) == \
        "https://b"


def test_a_plain_http_mirror_needs_an_explicit_opt_in(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(ValueError, match="plain http.*allow_http=True"):
        hub.configure_hub(mirror="http://hf-mirror.example")
    assert "HF_ENDPOINT" not in os.environ
