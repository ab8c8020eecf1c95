"""Tests for labkit.hardware and labkit.profiles: profile choice, overrides, the table, detect()."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from labkit import profiles
from labkit.hardware import GiB, Hardware, detect
from labkit.memory import MODEL_SPECS
from labkit.profiles import PROFILES, Profile, ProfileError, choose_profile, get_profile

CPU = Hardware(device="cpu", name="cpu (2 cores)", cpu_cores=2)


def gpu(vram_gb: float, bf16: bool, name: str = "fake GPU") -> Hardware:
    capability = (8, 0) if bf16 else (7, 5)
    return Hardware(device="cuda", name=name, vram_total_gb=vram_gb, vram_free_gb=vram_gb,
                    capability=capability, bf16=bf16, cpu_cores=4)


# ---------------------------------------------------------------- choose_profile


@pytest.mark.parametrize("hardware, expected", [
    (CPU, "cpu"),
    (gpu(15.0, bf16=False, name="Tesla T4"), "t4"),      # a "16 GB" T4 reports 15.0 GiB
    (gpu(31.7, bf16=False, name="Tesla V100"), "t4"),    # no bf16: always the fp16 + 4-bit recipe
    (gpu(14.0, bf16=True), "t4"),                        # exactly t4's floor
    (gpu(21.9, bf16=True), "t4"),                        # just under 24gb's floor (22)
    (gpu(23.6, bf16=True, name="RTX 4090"), "24gb"),
    (gpu(37.9, bf16=True), "24gb"),                      # just under 80gb's floor (38)
    (gpu(39.4, bf16=True, name="A100 40GB"), "80gb"),
    (gpu(79.1, bf16=True, name="H100 80GB"), "80gb"),
])
def test_choose_profile(hardware, expected):
    assert choose_profile(hardware) == expected


def test_choose_profile_small_bf16_gpu_points_to_cpu():
    with pytest.raises(ProfileError) as error:
        choose_profile(gpu(8.0, bf16=True, name="RTX 3070"))
    message = str(error.value)
    assert "'cpu'" in message and "RTX 3070" in message and "8.0 GiB" in message


def test_auto_profile_uses_the_given_hardware():
    assert get_profile("auto", hardware=gpu(23.6, bf16=True)).name == "24gb"
    assert get_profile("auto", hardware=CPU).name == "cpu"


def test_auto_profile_detects_this_machine():
    # The test machine has no GPU.
    assert get_profile("auto").name == "cpu"


# ---------------------------------------------------------------- get_profile


def test_overrides_replace_fields_and_none_is_ignored():
    profile = get_profile("cpu", max_steps=7, batch_size=None, learning_rate=1e-4)
    assert profile.max_steps == 7
    assert profile.learning_rate == 1e-4
    assert profile.batch_size == PROFILES["cpu"].batch_size == 32  # None: keep the default
    assert PROFILES["cpu"].max_steps == 200  # the table itself is not modified


def test_unknown_field_lists_the_valid_fields():
    with pytest.raises(ProfileError) as error:
        get_profile("cpu", max_stpes=10)
    message = str(error.value)
    assert "max_stpes" in message
    for field in dataclasses.fields(Profile):
        assert field.name in message


def test_unknown_profile_name():
    with pytest.raises(ProfileError) as error:
        get_profile("a100")
    message = str(error.value)
    assert "'a100'" in message
    for name in ("cpu", "t4", "24gb", "80gb", "auto"):
        assert name in message


def test_cuda_profile_on_cpu_hardware_is_refused():
    with pytest.raises(ProfileError, match="'cpu'"):
        get_profile("t4", hardware=CPU)
    # Without hardware (e.g. building stages for another machine) a GPU profile resolves.
    assert get_profile("t4").device == "cuda"
    assert get_profile("24gb", hardware=gpu(23.6, bf16=True)).name == "24gb"


def test_lab_overrides_apply_and_caller_overrides_win(monkeypatch):
    monkeypatch.setattr(profiles, "LAB_OVERRIDES",
                        {"sft": {"cpu": {"max_steps": 5, "batch_size": 4}}})
    assert get_profile("cpu", lab="sft").max_steps == 5
    assert get_profile("cpu", lab="sft").batch_size == 4
    assert get_profile("cpu", lab="sft", max_steps=9).max_steps == 9
    assert get_profile("cpu", lab="sft", max_steps=None).max_steps == 5
    assert get_profile("cpu").max_steps == 200            # no lab: no lab overrides
    assert get_profile("cpu", lab="grpo").max_steps == 200  # a lab without overrides
    assert get_profile("t4", lab="sft").max_steps == 200    # another profile of the same lab


def test_unknown_field_in_lab_overrides_is_reported(monkeypatch):
    monkeypatch.setattr(profiles, "LAB_OVERRIDES", {"sft": {"cpu": {"steps": 5}}})
    with pytest.raises(ProfileError, match="'steps'"):
        get_profile("cpu", lab="sft")


def test_data_dir_is_stored_absolute_and_must_exist(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert get_profile("cpu").data_dir is None
    assert get_profile("t4", data_dir="data").data_dir == str(tmp_path / "data")
    assert get_profile("cpu", data_dir=tmp_path / "data").data_dir == str(tmp_path / "data")
    with pytest.raises(ProfileError, match="data_dir 'nope' is not an existing folder"):
        get_profile("cpu", data_dir="nope")


@pytest.mark.parametrize("name", ["cpu", "t4"])
def test_data_dir_changes_no_stage_key(tmp_path, name):
    """data_dir says where the data came from, not what it is: the same stage, wherever it was read."""
    from labkit import stages

    plain, with_dir = get_profile(name), get_profile(name, data_dir=tmp_path)
    assert not any("data_dir" in key_fields for key_fields in stages.KEY_FIELDS.values())
    for stage in ("sft", "rm"):
        assert stages.stage_key(stage, with_dir) == stages.stage_key(stage, plain)


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["cpu"].max_steps = 1  # type: ignore[misc]


# ---------------------------------------------------------------- the profile table


def test_profile_names_match_their_keys():
    assert sorted(PROFILES) == ["24gb", "80gb", "cpu", "t4"]
    for key, profile in PROFILES.items():
        assert profile.name == key


def test_gpu_profiles_use_known_models():
    for profile in PROFILES.values():
        if profile.device == "cuda":
            assert profile.model_id in MODEL_SPECS, profile.name
            assert profile.dataset == "gsm8k" and profile.system_prompt == profiles.SYSTEM_PROMPT


def test_t4_profile_is_fp16_4bit():
    t4 = PROFILES["t4"]
    assert t4.dtype == "fp16"  # a T4 has no bf16
    assert t4.quant == "4bit"
    assert t4.device == "cuda" and t4.model_id == "Qwen/Qwen3-0.6B"


def test_cpu_profile_is_fp32_tiny_offline():
    cpu = PROFILES["cpu"]
    assert (cpu.device, cpu.dtype, cpu.quant) == ("cpu", "fp32", None)
    assert (cpu.model_id, cpu.dataset, cpu.system_prompt) == ("tiny", "kit", None)
    assert cpu.min_vram_gb == 0


def test_bf16_profiles_need_bf16_capable_gpus():
    # choose_profile only gives 24gb/80gb to bf16 GPUs, and those are the bf16 profiles.
    assert {p.name for p in PROFILES.values() if p.dtype == "bf16"} == {"24gb", "80gb"}
    assert PROFILES["t4"].min_vram_gb < PROFILES["24gb"].min_vram_gb < PROFILES["80gb"].min_vram_gb


def test_table_lists_hardware_and_every_field():
    hardware = gpu(15.0, bf16=False, name="Tesla T4")
    text = PROFILES["t4"].table(hardware)
    lines = text.splitlines()
    labels = [line.split("  ")[0].strip() for line in lines]
    expected = [label for label, _ in hardware.rows()] + [f.name for f in dataclasses.fields(Profile)]
    assert labels == expected
    assert "Tesla T4" in text and "15.0 / 15.0 GiB" in text and "7.5" in text
    assert any(line.startswith("quant") and line.endswith("  4bit") for line in lines)
    # Two aligned columns: every value starts at the same column.
    width = max(len(label) for label in expected)
    assert all(line[width:width + 2] == "  " for line in lines)


def test_table_without_hardware_lists_only_fields():
    lines = PROFILES["cpu"].table().splitlines()
    assert len(lines) == len(dataclasses.fields(Profile))
    assert lines[0].split()[:2] == ["name", "cpu"]


def test_to_dict_round_trips():
    profile = get_profile("80gb")
    data = profile.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(Profile)}
    assert Profile(**data) == profile


# ---------------------------------------------------------------- hardware


def test_detect_on_this_machine_is_cpu():
    hw = detect()
    assert hw.device == "cpu"
    assert hw.capability is None and hw.bf16 is False and hw.vram_total_gb == 0.0
    assert hw.cpu_cores == len(os.sched_getaffinity(0))
    assert hw.name == f"cpu ({hw.cpu_cores} cores)"


def fake_cuda(monkeypatch, capability, free_bytes, total_bytes, name="Fake GPU"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, total_bytes))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_detect_fake_t4(monkeypatch):
    fake_cuda(monkeypatch, (7, 5), free_bytes=14 * GiB + GiB // 2, total_bytes=15 * GiB,
              name="Tesla T4")
    hw = detect()
    assert hw.device == "cuda" and hw.name == "Tesla T4"
    assert hw.capability == (7, 5) and hw.bf16 is False
    assert hw.vram_total_gb == pytest.approx(15.0) and hw.vram_free_gb == pytest.approx(14.5)
    assert choose_profile(hw) == "t4"


def test_detect_fake_a100(monkeypatch):
    fake_cuda(monkeypatch, (8, 0), free_bytes=40_000_000_000, total_bytes=42_298_834_944,
              name="NVIDIA A100-SXM4-40GB")
    hw = detect()
    assert hw.capability == (8, 0) and hw.bf16 is True
    assert hw.vram_total_gb == pytest.approx(42_298_834_944 / 2**30)  # 39.39 GiB
    assert hw.vram_free_gb == pytest.approx(37.2529, abs=1e-4)
    assert choose_profile(hw) == "80gb"


@pytest.mark.parametrize("capability, bf16", [((6, 1), False), ((7, 0), False), ((7, 5), False),
                                              ((8, 0), True), ((8, 6), True), ((9, 0), True)])
def test_detect_bf16_from_capability(monkeypatch, capability, bf16):
    fake_cuda(monkeypatch, capability, free_bytes=GiB, total_bytes=2 * GiB)
    assert detect().bf16 is bf16


def test_hardware_rows():
    assert dict(CPU.rows()) == {"device": "cpu", "name": "cpu (2 cores)", "VRAM total / free": "-",
                                "compute capability": "-", "bf16": "no", "CPU cores": "2"}
    hw = Hardware(device="cuda", name="RTX 4090", vram_total_gb=23.99, vram_free_gb=23.5,
                  capability=(8, 9), bf16=True, cpu_cores=16)
    assert dict(hw.rows())["VRAM total / free"] == "24.0 / 23.5 GiB"
    assert dict(hw.rows())["compute capability"] == "8.9"
    assert dict(hw.rows())["bf16"] == "yes"


def test_a_gpu_torch_cannot_use_is_an_error_not_the_cpu_profile(monkeypatch, tmp_path):
    """nvidia-smi sees a GPU, torch does not (a CUDA 13 wheel on an old driver): auto must not fall
    back to the cpu profile quietly; it says why and what to do. PROFILE = 'cpu' still works."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Tesla T4, 535.104.05'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    hw = detect()
    assert hw.device == "cpu" and "Tesla T4 (driver 535.104.05)" in hw.unusable_gpu
    assert "built for CUDA 13.0" in hw.unusable_gpu and "download.pytorch.org/whl/cu126" in hw.unusable_gpu
    with pytest.raises(ProfileError, match="torch cannot use it"):
        get_profile("auto", hardware=hw)
    assert get_profile("cpu", hardware=hw).name == "cpu"
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in detect().unusable_gpu


def test_no_nvidia_smi_means_no_gpu_problem(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect().unusable_gpu is None


def test_an_unknown_lab_name_is_refused_not_given_the_sft_recipe():
    with pytest.raises(ProfileError, match="unknown lab 'gpro'; known labs: .*grpo"):
        get_profile("cpu", lab="gpro")
    for lab in profiles.LABS:
        get_profile("t4", lab=lab, hardware=None)
