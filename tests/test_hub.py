"""Tests for labkit.hub. No test touches the network: probes and downloaders are fakes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import types
import urllib.error
import urllib.request
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
HUB_ENV = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE")


@pytest.fixture(autouse=True)
def no_network_and_clean_env(monkeypatch):
    """Fail loudly on any real HTTP request; start each test with no hub variables set."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    for name in HUB_ENV:
        monkeypatch.delenv(name, raising=False)


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


def test_error_when_nothing_works_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # makes `import modelscope` fail
    with pytest.raises(HubUnavailableError) as info:
        resolve_model("Qwen/Qwen3-0.6B", probe=reachable_only(), hf_download=never)
    message = str(info.value)
    assert f"HF_ENDPOINT={MIRROR}" in message and "configure_hub(mirror=" in message
    assert "pip install modelscope" in message
    assert "modelscope download --model Qwen/Qwen3-0.6B" in message
    assert "local path './Qwen3-0.6B'" in message


# ---------------------------------------------------------------- resolve_dataset

def test_dataset_local_file_wins(tmp_path):
    rows = tmp_path / "rl.jsonl"
    rows.write_text('{"id": "1"}\n')
    assert resolve_dataset(str(rows), probe=never, hf_download=never) == str(rows)


def test_dataset_downloaded_as_dataset_repo():
    fake = FakeHF()
    resolve_dataset("openai/gsm8k", probe=reachable_only(MIRROR), hf_download=fake)
    assert fake.calls == [("openai/gsm8k", "dataset", MIRROR)]


def test_dataset_error_names_mirror_and_local_path():
    with pytest.raises(HubUnavailableError) as info:
        resolve_dataset("openai/gsm8k", probe=reachable_only(), hf_download=never)
    assert "HF_ENDPOINT" in str(info.value) and "local path './gsm8k'" in str(info.value)


def test_bad_ids_are_rejected():
    with pytest.raises(ValueError, match="hub id"):
        resolve_model("  ", probe=never, hf_download=never)


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
