"""labkit.gpucheck on the CPU: the tiny path end to end (fp16 + 4-bit like t4, bf16 like 24gb)."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from types import SimpleNamespace

import pytest
import torch

from labkit import gpucheck
from labkit.hardware import Hardware
from labkit.standin import GPUS

ON_GPU = torch.cuda.is_available()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """One tiny check of t4 (fp16, NF4, GradScaler) and 24gb (bf16) on an SFT and a GRPO plan."""
    out = tmp_path_factory.mktemp("gpucheck") / "gpucheck.json"
    code = gpucheck.main(["--tiny", "--profiles", "t4", "24gb", "--plans", "sft", "grpo", "--out", str(out)])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert code == 0, [r["error"] for r in report["records"]]
    return report


def records(report: dict, profile: str) -> list[dict]:
    return [r for r in report["records"] if r["profile"] == profile]


def test_report_schema(report):
    for key in ("device", "capability", "tiny", "torch", "transformers", "bitsandbytes", "rates",
                "memory_ratios", "records"):
        assert key in report
    assert report["tiny"] is True
    assert [(r["profile"], r["plan"]) for r in report["records"]] == [
        ("t4", "sft"), ("t4", "grpo"), ("24gb", "sft"), ("24gb", "grpo")]
    field_names = [f.name for f in fields(gpucheck.Record)]
    for record in report["records"]:
        assert list(record) == field_names
        assert record["error"] is None
        assert record["train_tokens_per_s"] > 0 and record["estimated_bytes"] > 0
        if not ON_GPU:  # never faked: nothing is measured on a CPU
            assert record["peak_allocated_bytes"] is None and record["memory_ratio"] is None
    # The format labkit.timeplan loads.
    assert set(report["rates"]) == {"t4", "24gb"}
    for rate in report["rates"].values():
        assert set(rate) == {"generate_tokens_per_s", "train_tokens_per_s"}
        assert rate["generate_tokens_per_s"] > 0 and rate["train_tokens_per_s"] > 0
    assert report["rates"]["t4"]["train_tokens_per_s"] == records(report, "t4")[0]["train_tokens_per_s"]
    assert set(report["memory_ratios"]["24gb"]) == {"sft", "grpo"}


def test_fp16_steps_go_through_grad_scaler(report):
    for record in records(report, "t4"):
        assert record["dtype"] == "fp16"
        assert len(record["grad_scales"]) == record["steps"] == 3
        assert all(math.isfinite(s) and s > 0 for s in record["grad_scales"])
        assert record["scaler_ok"] is True and record["skipped_steps"] < record["steps"]
    for record in records(report, "24gb"):  # bf16: no loss scaling
        assert record["dtype"] == "bf16"
        assert record["grad_scales"] is None and record["scaler_ok"] is None


def test_4bit_path_has_bitsandbytes_layers(report, tmp_path):
    # 7 projections x 2 layers in the tiny model, only on the 4-bit profile.
    assert [r["linear4bit_layers"] for r in report["records"]] == [14, 14, 0, 0]
    import bitsandbytes as bnb

    profile, plan = gpucheck.resolve("t4", "sft", tiny=True)
    folder = gpucheck.write_random_model(plan.model, profile.dtype, tmp_path / "model", "cpu")
    model = gpucheck.load_trainable("sft", folder, profile, plan)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 14 and all(layer.weight.quant_type == "nf4" for layer in layers)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)


def test_generation_uses_the_whole_budget(report):
    for record in report["records"]:
        if record["plan"] == "grpo":
            assert record["generated_tokens"] == record["max_new_tokens"] == 8
            assert record["generate_truncated"] is False
            assert record["gen_batch_size"] == 4 and record["generate_tokens_per_s"] > 0
        else:
            assert record["generate_tokens_per_s"] is None


def test_a_failure_is_recorded_and_the_check_goes_on(monkeypatch):
    real = gpucheck.train_steps
    calls = []

    def fail_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (induced by the test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(gpucheck, "train_steps", fail_first)
    report = gpucheck.run_check(["24gb"], ["sft", "rm"], gpucheck.Settings(steps=1, tiny=True))
    first, second = report["records"]
    assert "OutOfMemoryError" in first["error"] and "induced" in first["error"]
    assert first["train_tokens_per_s"] is None
    assert second["error"] is None and second["train_tokens_per_s"] > 0
    assert "induced" in gpucheck.format_table(report["records"])


def test_spent_budget_skips_records_without_loading():
    report = gpucheck.run_check(["t4"], ["sft", "ppo"], gpucheck.Settings(tiny=True, budget_s=0))
    assert all(r["error"].startswith("TimeoutError: skipped") for r in report["records"])
    assert all(r["estimated_bytes"] > 0 for r in report["records"])  # the plan is still described
    assert report["rates"] == {"t4": {"generate_tokens_per_s": None, "train_tokens_per_s": None}}


def test_unknown_plan_is_an_error_record():
    report = gpucheck.run_check(["t4"], ["nope"], gpucheck.Settings(tiny=True))
    assert "unknown plan" in report["records"][0]["error"]


@pytest.mark.parametrize(("gpu", "expected"), [
    ("t4", ["t4"]),
    ("4090", ["t4", "24gb"]),
    ("a100-40gb", ["t4", "24gb", "80gb"]),
])
def test_default_profiles_fit_the_gpu(gpu, expected):
    assert gpucheck.default_profiles(GPUS[gpu]) == expected


def test_default_profiles_without_a_gpu_are_all_shrunk():
    assert gpucheck.default_profiles(Hardware(device="cpu", name="cpu")) == list(gpucheck.GPU_PROFILES)


def test_real_size_plans_use_the_real_architecture():
    profile, plan = gpucheck.resolve("80gb", "grpo", tiny=False)
    config = gpucheck.qwen3_config(plan.model)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (151936, 2048, 28)
    assert config.tie_word_embeddings is True
    assert plan.gen_batch_size == profile.rollout_batch_size * profile.num_generations


def test_a_gpu_torch_cannot_use_stops_the_check(monkeypatch, tmp_path, capsys):
    broken = SimpleNamespace(device="cpu", name="cpu (2 cores)", unusable_gpu="torch is a CPU-only build")
    monkeypatch.setattr(gpucheck, "detect", lambda: broken)
    assert gpucheck.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "CPU-only build" in capsys.readouterr().out and not (tmp_path / "r.json").exists()
