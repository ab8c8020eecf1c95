"""Tests for labkit.stages, labkit.sft, labkit.models and labkit.evaluate.

Fast tests use fake builders (caching, shipped stages, damaged files, recipe changes, locks). The
end-to-end part builds every real stage once on a shortened schedule (300 pretraining rows, 20
pretraining steps, 40 SFT rows, 5 SFT steps; a few reward-model and one GRPO step), then loads
them with the same code the notebooks use and evaluates on 8 held-out rows. The kit's own shipped
stages are tested in tests/test_shipped_stages.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import BitsAndBytesConfig, Qwen3ForCausalLM

import labkit.data
from labkit import evaluate, models, profiles, sft, stages, tiny, trainer_args
from labkit.data import load_split, sft_messages
from labkit.evaluate import EvalResult, evaluate_accuracy
from labkit.profiles import PROFILES, get_profile

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
SMALL = {"pretrain": 300, "sft": 40, "prefs": 20, "rl": 20, "eval": 8}
# The SFT stage reads its settings through LAB_OVERRIDES (stages use the canonical profile).
TINY_SFT = {"sft": {"cpu": {"max_steps": 5, "batch_size": 4}}}


def copy_data(dest: Path, sizes: dict[str, int] = SMALL) -> Path:
    """The first rows of the kit's splits in `dest` (a small DATA_DIR)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        lines = (REPO_DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:size]
        (dest / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """An empty cache and no shipped stages (the kit's own ones are tested separately)."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stages, "SHIPPED_DIR", tmp_path / "shipped")
    return tmp_path / "cache"


@pytest.fixture
def fakes(monkeypatch, cache):
    """Replace both builders by fakes that record their calls and write one file."""
    calls: list[tuple[str, profiles.Profile, Path, dict]] = []

    def fake(name):
        def build(profile, out, deps):
            calls.append((name, profile, out, dict(deps)))
            (out / "weights.txt").write_text(name, encoding="utf-8")
            return {"fake": name}
        return build

    for name in ("base", "sft"):
        monkeypatch.setitem(stages.BUILDERS, name, fake(name))
    return calls


# ---------------------------------------------------------------- caching (fake builders)


def test_stage_is_built_once_then_cached(fakes, cache):
    profile = get_profile("cpu")
    path = stages.get_stage("base", profile)
    assert path == cache / "cpu" / f"base-{stages.stage_key('base', profile)}"
    assert path == stages.stage_dir("base", profile)
    info = json.loads((path / "stage.json").read_text(encoding="utf-8"))
    assert set(info) == {"stage", "profile", "key", "recipe", "upstream", "files", "built_with", "seconds", "fake"}
    assert (info["stage"], info["profile"], info["fake"]) == ("base", "cpu", "base")
    assert info["key"] == stages.stage_key("base", profile) and info["recipe"] == stages.recipe("base", profile)
    assert info["files"] == {"weights.txt": {"sha256": hashlib.sha256(b"base").hexdigest(), "bytes": 4}}
    assert info["upstream"] == {} and info["built_with"]["torch"] == torch.__version__
    assert (path / "weights.txt").read_text(encoding="utf-8") == "base"
    mtime = (path / "stage.json").stat().st_mtime_ns

    assert stages.get_stage("base", profile) == path
    assert stages.stage_info("base", profile) == info
    assert len(fakes) == 1
    assert (path / "stage.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (cache / "cpu").iterdir()) == [path.name]  # no .tmp left

    assert stages.get_stage("base", profile, rebuild=True) == path
    assert len(fakes) == 2


def test_stage_builds_its_dependencies_first(fakes, cache, monkeypatch):
    monkeypatch.setattr(profiles, "LAB_OVERRIDES", TINY_SFT)
    profile = get_profile("cpu", max_steps=3, batch_size=2)  # notebook overrides: not for stages
    sft_path = stages.get_stage("sft", profile)
    base_path = stages.stage_dir("base", profile)
    assert [call[0] for call in fakes] == ["base", "sft"]
    (_, base_profile, base_out, base_deps), (_, sft_profile, sft_out, sft_deps) = fakes
    assert base_deps == {} and sft_deps == {"base": base_path}
    assert base_out.name == base_path.name + ".tmp" and sft_out.name == sft_path.name + ".tmp"
    # Builders get the canonical profile of their lab, never the caller's overrides.
    assert base_profile == PROFILES["cpu"]
    assert sft_profile == get_profile("cpu", max_steps=5, batch_size=4)
    # A second stage reuses the cached base.
    stages.get_stage("sft", profile, rebuild=True)
    assert [call[0] for call in fakes] == ["base", "sft", "sft"]


def test_failed_build_leaves_no_stage_folder(fakes, cache, monkeypatch):
    def broken(profile, out, deps):
        (out / "half-written.bin").write_bytes(b"\0" * 10)
        raise RuntimeError("out of disk")

    profile = get_profile("cpu")
    path = stages.stage_dir("base", profile)
    working = stages.BUILDERS["base"]
    monkeypatch.setitem(stages.BUILDERS, "base", broken)
    with pytest.raises(RuntimeError, match="out of disk"):
        stages.get_stage("base", profile)
    assert not path.exists()
    assert [p.name for p in path.parent.iterdir()] == [path.name + ".tmp"]

    monkeypatch.setitem(stages.BUILDERS, "base", working)
    assert stages.get_stage("base", profile) == path
    assert sorted(p.name for p in path.iterdir()) == ["stage.json", "weights.txt"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the .tmp became the stage


def test_folder_without_stage_json_is_rebuilt(fakes, cache):
    profile = get_profile("cpu")
    path = stages.stage_dir("base", profile)
    path.mkdir(parents=True)
    (path / "stale.bin").write_bytes(b"old")
    assert stages.get_stage("base", profile) == path
    assert len(fakes) == 1
    assert sorted(p.name for p in path.iterdir()) == ["stage.json", "weights.txt"]


def test_unknown_stage_lists_the_known_ones(cache):
    with pytest.raises(KeyError) as error:
        stages.get_stage("dpo", get_profile("cpu"))
    assert "'dpo'" in str(error.value) and "['base', 'grpo', 'rm', 'sft']" in str(error.value)


def test_gpu_base_stage_points_at_the_downloaded_model(fakes, cache, monkeypatch, tmp_path):
    import labkit.hub

    downloaded = tmp_path / "hub" / "Qwen3-0.6B"
    monkeypatch.setattr(labkit.hub, "resolve_model", lambda model_id: str(downloaded))
    monkeypatch.setitem(stages.BUILDERS, "base", stages.build_base)
    path = stages.get_stage("base", get_profile("t4"))
    assert path.parent == cache / "t4"
    assert (path / "model_path.txt").read_text(encoding="utf-8") == str(downloaded)
    assert stages.model_path(path) == downloaded
    assert stages.stage_info("base", get_profile("t4"))["model_id"] == "Qwen/Qwen3-0.6B"
    assert stages.model_path(tmp_path) == tmp_path  # no pointer: the stage holds the model


def test_model_id_override_reaches_the_builder(fakes, cache, tmp_path):
    """A local model path set in the notebook (no hub on the machine) is the stage's base model."""
    local = str(tmp_path / "my-Qwen3-1.7B-Base")
    overridden = get_profile("24gb", model_id=local, max_steps=3)
    stages.get_stage("base", overridden)
    name, built_with, _, _ = fakes[-1]
    assert built_with.model_id == local
    assert built_with.max_steps == get_profile("24gb").max_steps   # other overrides are ignored
    assert stages.stage_key("base", overridden) != stages.stage_key("base", get_profile("24gb"))


# ---------------------------------------------------------------- cache keys


def test_key_changes_with_the_data(tmp_path, monkeypatch):
    data_dir = copy_data(tmp_path / "data", {"pretrain": 20, "sft": 20})
    monkeypatch.setattr(labkit.data, "DATA_DIR", data_dir)
    cpu, t4 = get_profile("cpu"), get_profile("t4")

    def keys():
        return {(n, p.name): stages.stage_key(n, p) for n in ("base", "sft") for p in (cpu, t4)}

    before = keys()
    assert all(len(k) == 12 and int(k, 16) >= 0 for k in before.values())
    sft_file = data_dir / "sft.jsonl"
    sft_file.write_text(sft_file.read_text(encoding="utf-8").replace('"answer": "', '"answer": "1', 1),
                        encoding="utf-8")
    after_sft = keys()
    assert after_sft[("sft", "cpu")] != before[("sft", "cpu")]
    assert after_sft[("base", "cpu")] == before[("base", "cpu")]
    # GPU profiles train on GSM8K, so the kit's files are not part of their keys.
    assert after_sft[("sft", "t4")] == before[("sft", "t4")]

    pretrain_file = data_dir / "pretrain.jsonl"
    pretrain_file.write_text(pretrain_file.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    after_pretrain = keys()
    assert after_pretrain[("base", "cpu")] != after_sft[("base", "cpu")]
    assert after_pretrain[("sft", "cpu")] != after_sft[("sft", "cpu")]  # its upstream changed
    assert after_pretrain[("base", "t4")] == before[("base", "t4")]


def test_key_changes_with_builder_versions(monkeypatch):
    cpu = get_profile("cpu")
    base, sft_key = stages.stage_key("base", cpu), stages.stage_key("sft", cpu)
    monkeypatch.setitem(stages.VERSIONS, "sft", stages.VERSIONS["sft"] + 1)
    assert stages.stage_key("base", cpu) == base
    assert stages.stage_key("sft", cpu) != sft_key
    monkeypatch.setitem(stages.VERSIONS, "base", stages.VERSIONS["base"] + 1)
    assert stages.stage_key("base", cpu) != base


def test_key_follows_lab_settings_not_notebook_overrides(monkeypatch):
    monkeypatch.setattr(profiles, "LAB_OVERRIDES", {"sft": {"cpu": {}}})
    cpu = get_profile("cpu")
    base, sft_key = stages.stage_key("base", cpu), stages.stage_key("sft", cpu)
    assert stages.stage_key("sft", get_profile("cpu", max_steps=1, batch_size=1)) == sft_key
    monkeypatch.setattr(profiles, "LAB_OVERRIDES", TINY_SFT)
    assert stages.stage_key("sft", cpu) != sft_key      # the SFT lab's settings changed
    assert stages.stage_key("base", cpu) == base        # base depends on model/dtype/quant only
    assert stages.stage_key("base", cpu) != stages.stage_key("base", get_profile("t4"))
    assert stages.stage_key("base", get_profile("24gb")) == stages.stage_key("base",
                                                                             get_profile("24gb"))


# ---------------------------------------------------------------- models (no model needed)


def test_quantization_config():
    assert models.quantization_config(PROFILES["cpu"]) is None
    assert models.quantization_config(PROFILES["24gb"]) is None
    config = models.quantization_config(PROFILES["t4"])
    assert isinstance(config, BitsAndBytesConfig)
    assert config.load_in_4bit is True and config.load_in_8bit is False
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.float16  # t4: fp16, no bf16
    bf16 = models.quantization_config(get_profile("24gb", quant="4bit"))
    assert bf16.bnb_4bit_compute_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="'8bit'"):
        models.quantization_config(get_profile("t4", quant="8bit"))


def test_torch_dtype():
    assert [models.torch_dtype(PROFILES[n]) for n in ("cpu", "t4", "24gb")] == \
        [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("name", ["cpu", "80gb"])
def test_lora_config_matches_the_profile(name):
    profile = PROFILES[name]
    config = models.lora_config(profile)
    assert (config.r, config.lora_alpha, config.lora_dropout) == \
        (profile.lora_rank, profile.lora_alpha, profile.lora_dropout)
    assert set(config.target_modules) == set(profile.lora_targets) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert config.task_type == "CAUSAL_LM"
    assert (config.r, config.lora_alpha) == ((16, 32) if name == "cpu" else (64, 128))


# ---------------------------------------------------------------- sft config


def test_sft_config_cpu(tmp_path):
    profile = get_profile("cpu", max_steps=60)
    config = sft.sft_config(profile, tmp_path / "trainer", seed=3)
    assert (config.use_cpu, config.bf16, config.fp16) == (True, False, False)
    assert config.assistant_only_loss is True and config.packing is False
    assert config.max_steps == 60
    assert config.per_device_train_batch_size == 32 and config.gradient_accumulation_steps == 1
    assert config.learning_rate == 5e-3 and config.max_length == 128
    assert config.warmup_steps == 3 and config.logging_steps == 2  # 60 // 20, 60 // 30
    assert config.save_strategy == "no" and config.seed == 3
    assert config.output_dir == str(tmp_path / "trainer")


@pytest.mark.parametrize("name, precision", [
    ("cpu", {"use_cpu": True, "bf16": False, "fp16": False}),
    ("t4", {"use_cpu": False, "bf16": False, "fp16": True}),
    ("24gb", {"use_cpu": False, "bf16": True, "fp16": False}),
    ("80gb", {"use_cpu": False, "bf16": True, "fp16": False}),
])
def test_precision_args(name, precision, monkeypatch):
    monkeypatch.setattr("labkit.hardware.compute_device", lambda: "cuda")  # as on a GPU machine
    assert trainer_args.precision_args(PROFILES[name]) == precision


@pytest.mark.parametrize("name", ["t4", "24gb"])
def test_precision_args_without_a_gpu_say_cpu(name):
    """A GPU profile run on a CPU (a stand-in run): transformers accepts bf16 only with use_cpu."""
    assert trainer_args.precision_args(PROFILES[name])["use_cpu"] is True


def test_sft_config_t4(tmp_path):
    # (A bf16 config cannot be built here: transformers refuses bf16 without a GPU.)
    config = sft.sft_config(PROFILES["t4"], tmp_path)
    assert (config.use_cpu, config.bf16, config.fp16) == (True, False, True)  # no GPU here: use_cpu
    assert config.gradient_checkpointing is True and config.assistant_only_loss is True
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (4, 4)
    assert (config.max_steps, config.max_length, config.learning_rate) == (200, 768, 2e-4)


def test_sft_dataset_cpu():
    profile = PROFILES["cpu"]
    dataset = sft.sft_dataset(profile, limit=3)
    rows = load_split("sft", limit=3)
    assert len(dataset) == 3
    assert set(dataset.column_names) == {"messages", "id", "lang", "level", "answer"}
    assert dataset[0]["messages"] == sft_messages(rows[0])  # no system prompt on the CPU
    assert [m["role"] for m in dataset[2]["messages"]] == ["user", "assistant"]
    assert dataset[1]["messages"][1]["content"] == \
        f"<think>{rows[1]['reasoning']}</think>{rows[1]['answer']}"


# ---------------------------------------------------------------- end to end on tiny settings


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Build the real base and SFT stages once, on tiny settings, in a temporary cache."""
    root = tmp_path_factory.mktemp("world")
    data_dir = copy_data(root / "data")
    builds: list[tuple[str, profiles.Profile]] = []

    def counting(name, builder):
        def build(profile, out, deps):
            builds.append((name, profile))
            return builder(profile, out, deps)
        return build

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_CACHE", str(root / "cache"))
        mp.setattr(stages, "SHIPPED_DIR", root / "shipped")
        mp.setattr(labkit.data, "DATA_DIR", data_dir)
        mp.setattr(stages, "BASE_PRETRAIN_STEPS", 20)
        mp.setattr(profiles, "LAB_OVERRIDES", TINY_SFT)
        for name, builder in list(stages.BUILDERS.items()):
            mp.setitem(stages.BUILDERS, name, counting(name, builder))
        profile = get_profile("cpu", max_steps=2)  # a notebook override, ignored by stages
        sft_path = stages.get_stage("sft", profile)
        yield SimpleNamespace(profile=get_profile("cpu"), base=stages.stage_dir("base", profile),
                              sft=sft_path, builds=builds, cache=root / "cache")


def test_sft_stage_built_base_first_once(world):
    assert [name for name, _ in world.builds] == ["base", "sft"]
    assert world.builds[0][1] == PROFILES["cpu"]
    assert world.builds[1][1] == get_profile("cpu", max_steps=5, batch_size=4)
    assert stages.get_stage("base", world.profile) == world.base
    assert stages.get_stage("sft", world.profile) == world.sft
    assert len(world.builds) == 2  # both cached now
    assert sorted(p.name for p in (world.cache / "cpu").iterdir()) == \
        sorted([world.base.name, world.sft.name])


def test_base_stage_contents(world):
    names = {p.name for p in world.base.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "stage.json"} <= names
    info = stages.stage_info("base", world.profile)
    vocab = json.loads((world.base / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    assert info["model_id"] == "tiny"
    assert info["params"] == 787_840 + 128 * vocab  # see tests/test_tiny.py
    assert [entry["step"] for entry in info["log"]] == [1, 20]
    assert info["log"][-1]["loss"] < info["log"][0]["loss"]


def test_sft_stage_log(world):
    info = stages.stage_info("sft", world.profile)
    assert (info["stage"], info["profile"]) == ("sft", "cpu")
    losses = [entry for entry in info["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in losses] == [1, 2, 3, 4, 5]  # logging_steps = 1
    assert all(entry["loss"] > 0 for entry in losses)


def test_sft_stage_holds_a_merged_model(world):
    names = {p.name for p in world.sft.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "stage.json"} <= names
    assert "adapter_config.json" not in names and "base_model_path.txt" not in names


def test_load_sft_stage(world):
    model = models.load_model(world.sft, world.profile)
    base = models.load_model(world.base, world.profile)
    assert type(model) is Qwen3ForCausalLM  # merged: a plain model, no PEFT wrapper
    assert not any("lora" in name for name in model.state_dict())
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.generation_config.pad_token_id == model.config.pad_token_id == 0
    after, before = model.state_dict(), base.state_dict()
    assert set(after) == set(before)
    # LoRA touched the projections and nothing else.
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"],
                           before["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])

    tok = models.load_tokenizer(world.sft)
    assert tok.padding_side == "left"
    assert (tok.pad_token, tok.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert tok.chat_template == tiny.CHAT_TEMPLATE
    assert len(tok) == model.config.vocab_size
    assert tok.convert_ids_to_tokens(tok("<think>7</think>").input_ids) == \
        ["<think>", "7", "</think>"]
    assert models.load_tokenizer(world.sft, padding_side="right").padding_side == "right"


def test_qlora_model_is_saved_merged_into_full_weights(world, tmp_path):
    """Regression: a QLoRA stage was an adapter folder, which a sequence classifier (lab 02) and a
    second LoRA (lab 03) could not load. save_model merges the adapter into a full-precision copy
    of the weights it was trained on, so every stage is a plain folder of weights."""
    profile = get_profile("cpu", dtype="fp16", quant="4bit")
    config = models.lora_config(profile)
    config.init_lora_weights = False  # random B, so the adapter changes the outputs
    torch.manual_seed(0)
    qlora = get_peft_model(models.load_model(world.base, profile), config)
    saved = models.save_model(qlora, models.load_tokenizer(world.base), tmp_path, world.base)
    assert "adapter_config.json" not in {p.name for p in tmp_path.iterdir()}
    assert not isinstance(saved, PeftModel) and saved.dtype == torch.float16

    # The same adapter on the unquantized weights is what the merged folder must compute.
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    expected_model = get_peft_model(models.load_model(world.base, get_profile("cpu")), config)
    set_peft_model_state_dict(expected_model, get_peft_model_state_dict(qlora))
    ids = torch.tensor([[1, 19, 13, 20, 31]])
    with torch.no_grad():
        merged = models.load_model(tmp_path, get_profile("cpu"))(input_ids=ids).logits
        expected = expected_model(input_ids=ids).logits
        base_only = models.load_model(world.base, get_profile("cpu"))(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=2e-2)      # fp16 rounding of the merged weights
    assert not torch.allclose(merged, base_only, atol=1e-1)  # the adapter is in there


def test_upcast_trainable_keeps_frozen_weights():
    layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)).half()
    layer[0].requires_grad_(False)
    models.upcast_trainable(layer)
    assert layer[0].weight.dtype == torch.float16 and layer[1].weight.dtype == torch.float32


def test_evaluate_the_sft_stage(world):
    model = models.load_model(world.sft, world.profile)
    tok = models.load_tokenizer(world.sft)
    rows = load_split("eval", limit=8)
    result = evaluate_accuracy(model, tok, rows, get_profile("cpu", max_new_tokens=24))
    assert isinstance(result, EvalResult)
    assert 0.0 <= result.accuracy <= 1.0 and 0.0 <= result.format_rate <= 1.0
    assert set(result.by_level) <= {1, 2, 3}
    assert set(result.by_level) == {row["level"] for row in rows}
    assert all(0.0 <= v <= 1.0 for v in result.by_level.values())
    assert len(result.completions) == 8 and all(isinstance(c, str) for c in result.completions)
    assert len(result.correct) == 8 and result.accuracy == sum(result.correct) / 8
    # The completions are greedy (deterministic) answers to the bare questions (no system prompt).
    again = evaluate.generate(model, tok, [[{"role": "user", "content": r["question"]}] for r in rows],
                              max_new_tokens=24, batch_size=8)
    assert again == result.completions


# ---------------------------------------------------------------- evaluate with a scripted model

EVAL_ROWS = [
    {"id": "e0", "lang": "en", "level": 1, "question": "Tom has 3 apples.", "answer": "3"},
    {"id": "e1", "lang": "zh", "level": 1, "question": "小明有12个苹果。又买了7个。", "answer": "19"},
    {"id": "e2", "lang": "en", "level": 2, "question": "5 minus 8?", "answer": "-3"},
    {"id": "e3", "lang": "en", "level": 2, "question": "2 times 21?", "answer": "42"},
    {"id": "e4", "lang": "zh", "level": 3, "question": "一共有多少？", "answer": "100"},
    {"id": "e5", "lang": "en", "level": 3, "question": "A long question about 9 birds.",
     "answer": "9"},
    {"id": "e6", "lang": "en", "level": 3, "question": "Six?", "answer": "6"},
    {"id": "e7", "lang": "en", "level": 1, "question": "Zero?", "answer": "0"},
]
REPLIES = {
    "Tom has 3 apples.": "<think>3</think>3",                 # correct, formatted
    "小明有12个苹果。又买了7个。": "<think>12+7=19</think>19",    # correct, formatted
    "5 minus 8?": "<think>5-8=-3</think>-3",                    # correct, formatted
    "2 times 21?": "<think>2*21=41</think>41",                  # wrong, formatted
    "一共有多少？": "The answer is 100",                          # correct, not formatted
    "A long question about 9 birds.": "<think>hmm</think>8",  # wrong, formatted
    "Six?": "<think>six</think>6",                              # correct, formatted
    "Zero?": "<think></think>",                                 # wrong, not formatted
}


class ScriptedModel:
    """Answers each prompt with a fixed reply; checks what evaluate passes to generate."""

    device = torch.device("cpu")

    def __init__(self, tok):
        self.tok, self.batches = tok, []

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id,
                 **sampling):
        assert sampling == {"do_sample": False, "temperature": None, "top_p": None,
                            "top_k": None, "num_return_sequences": 1}
        assert (max_new_tokens, pad_token_id, eos_token_id) == (24, 0, 2)
        self.batches.append(len(input_ids))
        replies = []
        for ids, mask in zip(input_ids, attention_mask):
            assert mask[-1] == 1  # left padding: every prompt ends at the right edge
            prompt = self.tok.decode(ids[mask.bool()])
            assert prompt.startswith("<|im_start|>user\n")
            assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
            question = prompt.removeprefix("<|im_start|>user\n").split("<|im_end|>")[0]
            replies.append(self.tok(REPLIES[question]).input_ids + [eos_token_id])
        width = max(len(r) for r in replies)
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in replies])
        return torch.cat([input_ids, new], dim=1)


def test_evaluate_accuracy_by_hand(world):
    tok = models.load_tokenizer(world.sft)
    model = ScriptedModel(tok)
    profile = get_profile("cpu", max_new_tokens=24, eval_batch_size=3)
    result = evaluate_accuracy(model, tok, EVAL_ROWS, profile)
    assert model.batches == [3, 3, 2]
    assert result.completions == [REPLIES[row["question"]] for row in EVAL_ROWS]
    assert result.correct == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert result.accuracy == 5 / 8
    assert result.format_rate == 6 / 8  # all but rows 4 (no tags) and 7 (empty reasoning)
    # level 1: rows 0, 1, 7 -> 2/3; level 2: rows 2, 3 -> 1/2; level 3: rows 4, 5, 6 -> 2/3
    assert result.by_level == {1: 2 / 3, 2: 1 / 2, 3: 2 / 3}
    assert list(result.by_level) == [1, 2, 3]


# ---------------------------------------------------------------- publish_stage, keys, rm


def _write_marker(folder: Path) -> None:
    (folder / "weights.txt").write_text("from the notebook", encoding="utf-8")


def test_publish_stage_keeps_a_model_trained_with_the_recipe(fakes, cache, capsys):
    profile = get_profile("cpu", lab="rm")
    path = stages.publish_stage("rm", profile, _write_marker, {"heldout_pair_acc": 0.9})
    assert path == stages.stage_dir("rm", profile)
    info = json.loads((path / "stage.json").read_text(encoding="utf-8"))
    assert info["published_by"] == "notebook" and info["heldout_pair_acc"] == 0.9
    # get_stage now returns it without building (the fakes would record a call)
    assert stages.get_stage("rm", profile) == path and not [c for c in fakes if c[0] == "rm"]
    assert "saved as stage 'rm'" in capsys.readouterr().out


def test_publish_stage_refuses_changed_settings_or_seed(fakes, cache, capsys):
    changed = get_profile("cpu", lab="rm", max_steps=7)
    assert stages.publish_stage("rm", changed, _write_marker, {}) is None
    assert "['max_steps']" in capsys.readouterr().out
    assert stages.publish_stage("rm", get_profile("cpu", lab="rm"), _write_marker, {}, seed=1) is None
    assert "seed 1" in capsys.readouterr().out
    assert not stages.stage_dir("rm", changed).exists()


def test_publish_stage_never_replaces_a_cached_stage(fakes, cache):
    profile = get_profile("cpu", lab="rm")
    first = stages.publish_stage("rm", profile, _write_marker, {"n": 1})
    stages.publish_stage("rm", profile, lambda folder: (folder / "other.txt").write_text("x"), {"n": 2})
    assert json.loads((first / "stage.json").read_text(encoding="utf-8"))["n"] == 1
    assert not (first / "other.txt").exists()


def test_new_profile_fields_for_other_labs_do_not_change_stage_keys(monkeypatch):
    """A stage key covers only the fields its recipe reads: DPO's beta is not one of them."""
    sft = get_profile("cpu", lab="sft")
    monkeypatch.setattr(profiles, "LAB_OVERRIDES", {"sft": {"cpu": {}}})
    before = stages.stage_key("sft", sft)
    monkeypatch.setattr(profiles, "LAB_OVERRIDES", {"sft": {"cpu": {"beta": 0.5, "pref_dataset": "x"}}})
    assert stages.stage_key("sft", sft) == before
    monkeypatch.setattr(profiles, "LAB_OVERRIDES", {"sft": {"cpu": {"max_steps": 3}}})
    assert stages.stage_key("sft", sft) != before


def test_rm_stage_depends_on_sft_and_the_preference_file():
    profile = get_profile("cpu")
    assert stages.DEPENDS["rm"] == ["sft"] and stages.DATA_FILES["rm"] == ["prefs.jsonl"]
    assert "pref_dataset" in stages.KEY_FIELDS["rm"]
    assert stages.stage_key("rm", profile) != stages.stage_key("sft", profile)


def test_reset_chat_embeddings_gives_trained_norms_to_the_chat_tokens():
    rows = load_split("pretrain", limit=100)
    tok = tiny.build_tokenizer("".join(tiny.pretrain_text(r)) for r in rows)
    model = tiny.build_model(tok, seed=0)
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        weight.mul_(3.0)                       # pretend training grew every row
    before = weight.detach().clone()
    ids = tiny.reset_chat_embeddings(model, tok)
    assert ids == tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<think>", "</think>"])
    others = [i for i in range(len(weight)) if i not in ids]
    assert torch.equal(weight[others], before[others])
    expected = before[others].norm(dim=1).mean()
    assert torch.allclose(weight[ids].norm(dim=1), expected.expand(len(ids)), rtol=1e-5)
    assert model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()   # still tied


def test_rm_stage_builds_on_the_sft_stage(world, monkeypatch):
    """The rm builder end to end on tiny settings: trains, saves, and reloads as a reward model."""
    from labkit import preferences, reward_model

    monkeypatch.setattr(profiles, "LAB_OVERRIDES",
                        {**TINY_SFT, "rm": {"cpu": {"lora_rank": 0, "max_steps": 3, "batch_size": 4}}})
    monkeypatch.setattr(preferences, "HELDOUT_PAIRS", 5)
    path = stages.get_stage("rm", world.profile)
    assert [name for name, _ in world.builds][-1] == "rm"
    assert stages.get_stage("sft", world.profile) == world.sft      # built on the cached SFT stage
    info = stages.stage_info("rm", world.profile)
    assert 0.0 <= info["heldout_pair_acc"] <= 1.0 and sum(1 for e in info["log_history"] if "loss" in e) >= 1
    tokenizer = models.load_tokenizer(path, padding_side="right")
    rm = reward_model.load_reward_model(path, world.profile, tokenizer)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tokenizer.pad_token_id


def test_grpo_stage_builds_on_the_sft_stage(world, monkeypatch):
    """The grpo builder end to end on a shortened schedule: one RL step of 2 prompts x 2 samples."""
    monkeypatch.setattr(profiles, "LAB_OVERRIDES", {**TINY_SFT, "grpo": {"cpu": {
        "lora_rank": 0, "max_steps": 1, "rollout_batch_size": 2, "num_generations": 2, "batch_size": 4,
        "max_new_tokens": 8, "learning_rate": 1e-4}}})
    path = stages.get_stage("grpo", world.profile)
    assert [name for name, _ in world.builds][-1] == "grpo"
    info = stages.stage_info("grpo", world.profile)
    assert info["upstream"] == {"sft": stages.stage_digest(world.sft)}
    assert [e["step"] for e in info["log_history"] if "loss" in e] == [1]
    policy = models.load_model(path, world.profile)
    assert type(policy) is Qwen3ForCausalLM and "adapter_config.json" not in {p.name for p in path.iterdir()}
    assert all(torch.isfinite(p).all() for p in policy.parameters())


# ---------------------------------------------------------------- shipped stages (fake builders)


def _ship_fakes(names=("base", "sft")) -> dict[str, Path]:
    """Ship fake stages, then empty the cache they were built in (as on a fresh clone)."""
    stages.ship(list(names))
    shutil.rmtree(stages.cache_dir())
    return {name: stages.shipped_dir(name, get_profile("cpu")) for name in names}


def test_shipped_stage_is_used_without_building(fakes, cache, tmp_path, capsys):
    shipped = _ship_fakes()
    assert [c[0] for c in fakes] == ["base", "sft"]
    assert shipped["sft"] == tmp_path / "shipped" / "cpu" / "sft"
    info = json.loads((shipped["sft"] / "stage.json").read_text(encoding="utf-8"))
    assert info["upstream"] == {"base": stages.stage_digest(shipped["base"])}
    assert stages.shipped_problems() == {name: f"{tmp_path / 'shipped' / 'cpu' / name} is missing"
                                         for name in ("rm", "grpo")}
    capsys.readouterr()
    assert stages.get_stage("sft", get_profile("cpu", max_steps=3)) == shipped["sft"]
    assert len(fakes) == 2 and capsys.readouterr().out == ""
    assert stages.ship(["base", "sft"]) == []              # current: nothing to refresh


@pytest.mark.parametrize("damage, says", [
    (lambda f: f.write_bytes(b"\0" * f.stat().st_size), "fails its sha256 check"),
    (lambda f: f.write_bytes(f.read_bytes()[:-1]), "has 3 bytes instead of 4"),
    (lambda f: f.unlink(), "weights.txt is missing"),
])
def test_damaged_shipped_stage_is_rebuilt_saying_so(fakes, cache, capsys, damage, says):
    shipped = _ship_fakes(["base"])
    damage(shipped["base"] / "weights.txt")
    capsys.readouterr()
    path = stages.get_stage("base", get_profile("cpu"))
    out = capsys.readouterr().out
    assert path == stages.stage_dir("base", get_profile("cpu")) and len(fakes) == 2
    assert says in out and "git checkout -- " in out and "building stage 'base'" in out
    assert says in stages.shipped_problems()["base"]


def test_damaged_cached_stage_is_rebuilt_saying_so(fakes, cache, capsys):
    path = stages.get_stage("base", get_profile("cpu"))
    (path / "weights.txt").write_bytes(b"NaNs")           # same size, other bytes
    capsys.readouterr()
    assert stages.get_stage("base", get_profile("cpu")) == path
    assert "the cached stage 'base'" in capsys.readouterr().out and len(fakes) == 2
    assert (path / "weights.txt").read_text(encoding="utf-8") == "base"


def test_changed_recipe_is_not_served_by_the_shipped_stage(fakes, cache, capsys, monkeypatch):
    _ship_fakes()
    monkeypatch.setattr(stages, "BASE_PRETRAIN_STEPS", stages.BASE_PRETRAIN_STEPS + 1)
    problems = stages.shipped_problems()
    assert "another recipe" in problems["base"] and problems["sft"] == "a stage it is built on is not current"
    capsys.readouterr()
    stages.get_stage("sft", get_profile("cpu"))
    out = capsys.readouterr().out
    assert [c[0] for c in fakes] == ["base", "sft", "base", "sft"]
    assert "python -m labkit.stages ship base" in out


def test_stage_built_on_another_upstream_is_not_used(fakes, cache, capsys, monkeypatch):
    shipped = _ship_fakes()
    (shipped["base"] / "weights.txt").write_text("BASE", encoding="utf-8")  # a refreshed base, same recipe
    info = json.loads((shipped["base"] / "stage.json").read_text(encoding="utf-8"))
    info["files"] = stages.file_records(shipped["base"])
    (shipped["base"] / "stage.json").write_text(json.dumps(info), encoding="utf-8")
    assert stages.shipped_problems()["sft"].startswith("it was built on another 'base' stage")
    capsys.readouterr()
    assert stages.get_stage("sft", get_profile("cpu")) == stages.stage_dir("sft", get_profile("cpu"))
    assert [c[0] for c in fakes] == ["base", "sft", "sft"]
    assert stages.ship(["sft"]) == ["sft"] and set(stages.shipped_problems()) == {"rm", "grpo"}


def test_publish_stage_keeps_the_shipped_stage(fakes, cache, capsys):
    shipped = _ship_fakes()
    assert stages.publish_stage("sft", get_profile("cpu", lab="sft"), _write_marker, {}) == shipped["sft"]
    assert "ships with the kit" in capsys.readouterr().out
    assert not stages.stage_dir("sft", get_profile("cpu")).exists()


def test_a_held_lock_names_its_holder_and_gives_up(fakes, cache, monkeypatch, capsys):
    profile = get_profile("cpu")
    lock = cache / ".locks" / f"cpu-{stages.stage_dir('base', profile).name}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid 4242 on testhost since 12:00:00 (builder)'); f.flush(); print('held', flush=True); "
        "time.sleep(30)"), str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv(stages.LOCK_WAIT_ENV, "0.5")
        start = time.monotonic()
        with pytest.raises(stages.StageError, match=r"still being built by pid 4242 on testhost .* after 0.5 s of waiting"):
            stages.get_stage("base", profile)
        assert time.monotonic() - start < 5 and not fakes
        assert "is being built by pid 4242" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    assert stages.get_stage("base", profile) == stages.stage_dir("base", profile)   # a dead holder frees it


def test_command_line_build_from_scratch_check_and_ship(fakes, cache, tmp_path, capsys):
    assert stages.main(["check"]) == 1                                   # nothing shipped yet
    assert "refresh with: python -m labkit.stages ship base sft rm grpo" in capsys.readouterr().out
    assert stages.main(["ship", "base", "sft"]) == 0 and [c[0] for c in fakes] == ["base", "sft"]
    assert stages.main(["check", "base", "sft"]) == 0
    assert stages.main(["build", "base", "--profile", "cpu"]) == 0 and len(fakes) == 2   # shipped: no training
    assert stages.main(["build", "base", "--profile", "cpu", "--from-scratch"]) == 0
    assert [c[0] for c in fakes] == ["base", "sft", "base"]
    with pytest.raises(SystemExit):
        stages.main(["build", "dpo"])
    assert "unknown stage(s) ['dpo']" in capsys.readouterr().err
    assert stages.main(["prepare", "base", "sft", "--profile", "cpu"]) == 0     # cpu: checks (shipped)
    assert [c[0] for c in fakes] == ["base", "sft", "base"]


def test_prepare_leaves_gpu_stages_to_the_lab_that_needs_them(fakes, cache, monkeypatch, capsys):
    """lab.py course on a GPU builds nothing up front: each lab builds (and times) its own stages."""
    from labkit.hardware import Hardware

    monkeypatch.setattr("labkit.hardware.detect", lambda: Hardware(device="cuda", name="Tesla T4",
                        vram_total_gb=15.0, vram_free_gb=14.5, capability=(7, 5), cpu_cores=2))
    assert stages.main(["prepare", "--profile", "t4"]) == 0 and fakes == []
    assert "built (and cached) by the first lab that needs it" in capsys.readouterr().out
