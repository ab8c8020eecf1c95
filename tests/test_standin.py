"""The GPU profiles' code path, run on the CPU against the stand-in hub (labkit.standin).

Fast tests check the stand-in world itself (hub layouts, the hub and hardware redirection, the smoke
sizes) and the fixes it found. The slow ones (marked `notebook` and `standin`; run them alone with
`pytest -m standin`) build every stage and execute every notebook on the t4 profile (a T4: fp16,
4-bit QLoRA through bitsandbytes' CPU layers, fp16 autocast + GradScaler) and on the 24gb profile
(a 4090: bf16 + LoRA), with Qwen's real tokenizer on random 2-layer Qwen3 weights. The numbers
they print mean nothing (random weights, two steps); what is tested is that every cell runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pytest

from labkit import standin
from labkit.course import run_notebooks
from labkit.hardware import detect
from labkit.profiles import get_profile

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
# The GPU each profile is tried on, as `auto` would pick it.
PROFILE_GPUS = {"t4": "t4", "24gb": "4090"}
# Notebook parameters that shrink each lab's own loops to a few items.
SMOKE_PARAMETERS = {"SAMPLE_QUESTIONS": 4, "SAMPLES_PER_QUESTION": 2, "EVAL_SAMPLES": 1, "MAX_N": 16,
                    "OTHER_LIMIT": 4, "GRPO_N": 4, "DDP_STEPS": 2}
NOTEBOOK_TIMEOUT_S = 1800


@pytest.fixture(scope="session")
def world() -> Path:
    """The stand-in world, built once per cache (a few seconds) and reused."""
    from labkit.runtime import cache_dir

    return standin.build_world(cache_dir() / f"standin-v{standin.VERSION}")


@pytest.fixture
def on_standin(world, monkeypatch):
    """Point labkit at the stand-in world, pretending to run on `gpu` ("t4", "4090", ...)."""
    def use(gpu: str) -> None:
        monkeypatch.setenv(standin.WORLD_ENV, str(world))
        monkeypatch.setenv(standin.GPU_ENV, gpu)

    return use


# ---------------------------------------------------------------- the world


def test_world_has_the_hub_layouts(world):
    import pyarrow.parquet as pq

    for repo_id in standin.MODELS:
        folder = world / "models" / repo_id
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["Qwen3ForCausalLM"] and config["vocab_size"] == 151936
    gsm8k = world / "datasets" / "openai" / "gsm8k" / "main"
    for split, count in standin.GSM8K_ROWS.items():
        table = pq.read_table(gsm8k / f"{split}-00000-of-00001.parquet")
        assert table.column_names == ["question", "answer"] and table.num_rows == count
        assert all("\n#### " in answer for answer in table.column("answer").to_pylist())
    prefs = pq.read_table(world / "datasets" / standin.PREFS / "data" / "train-00000-of-00001.parquet")
    assert prefs.column_names == ["metadata", "instruction", "chosen_response", "chosen_rating",
                                  "rejected_response", "rejected_rating"]


def test_standin_model_speaks_qwen(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = world / "models" / "Qwen" / "Qwen3-0.6B"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<think>"]) == [151644, 151645, 151667]
    assert model.generation_config.eos_token_id == [151645, 151643]
    assert model(**tok("Hello world", return_tensors="pt")).logits.shape == (1, 2, 151936)


def test_hub_ids_resolve_to_the_world_and_never_the_network(on_standin, world, monkeypatch):
    from labkit import hub

    on_standin("t4")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("probed the network"))
    assert hub.resolve_model("Qwen/Qwen3-0.6B") == str(world / "models" / "Qwen" / "Qwen3-0.6B")
    assert hub.resolve_dataset("openai/gsm8k") == str(world / "datasets" / "openai" / "gsm8k")
    with pytest.raises(FileNotFoundError, match="python -m labkit.standin build"):
        hub.resolve_model("Qwen/Qwen3-8B")


def test_hardware_and_profile_follow_the_standin_gpu(on_standin, monkeypatch):
    on_standin("t4")
    hardware = detect()
    assert (hardware.device, hardware.capability, hardware.bf16) == ("cuda", (7, 5), False)
    assert "stand-in" in hardware.name
    profile = get_profile("auto", lab="sft", hardware=hardware)
    assert (profile.name, profile.dtype, profile.quant) == ("t4", "fp16", "4bit")
    assert profile.max_steps == standin.SMOKE["max_steps"]  # smoke sizes...
    assert get_profile("t4", lab="sft", max_steps=5).max_steps == 5  # ...under the caller's overrides
    assert get_profile("cpu").max_steps == 200  # the cpu profile is never shrunk
    monkeypatch.setenv(standin.GPU_ENV, "h100")
    with pytest.raises(ValueError, match="choose one of"):
        detect()


def test_gsm8k_and_hub_pairs_load_from_the_world(on_standin):
    from labkit.data import load_problems
    from labkit.preferences import load_preferences, pair_dataset

    on_standin("4090")
    rows = load_problems("gsm8k", "eval")
    assert len(rows) == standin.GSM8K_ROWS["test"] and rows[0]["id"] == "gsm8k-test-00000"
    pairs = load_preferences(standin.PREFS, "train")
    assert pair_dataset(pairs, "S").column_names == ["prompt", "chosen", "rejected", "id"]


# ---------------------------------------------------------------- fixes the stand-in runs found


def test_local_model_folder_as_model_id(world, monkeypatch):
    """Regression: a local model_id had no memory numbers (KeyError) and was stored relative."""
    from labkit.memory import MODEL_SPECS
    from labkit.preflight import model_spec

    monkeypatch.chdir(world / "models" / "Qwen")
    profile = get_profile("24gb", model_id="Qwen3-1.7B-Base")
    assert profile.model_id == str(world / "models" / "Qwen" / "Qwen3-1.7B-Base")  # absolute
    spec = model_spec(profile)  # read from the folder's config.json
    assert (spec.hidden_size, spec.num_layers, spec.vocab_size) == (32, 2, 151936)
    assert model_spec(get_profile("24gb")) is MODEL_SPECS["Qwen/Qwen3-1.7B-Base"]


def test_gpu_base_stage_stores_an_absolute_path(on_standin, world, tmp_path, monkeypatch):
    from labkit import stages

    on_standin("4090")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    base = stages.get_stage("base", get_profile("24gb"))
    pointer = Path((base / "model_path.txt").read_text(encoding="utf-8"))
    assert pointer.is_absolute() and pointer == world / "models" / "Qwen" / "Qwen3-1.7B-Base"


def test_emulated_fp16_amp_gives_trainers_a_grad_scaler(on_standin):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    on_standin("t4")
    standin.emulate_fp16_amp()
    AcceleratorState._reset_state(reset_partial_state=True)  # earlier tests fixed another precision
    accelerator = Accelerator(mixed_precision="fp16", cpu=True)
    assert accelerator.native_amp and accelerator.scaler is not None


# ---------------------------------------------------------------- every stage and notebook


@pytest.mark.notebook
@pytest.mark.standin
@pytest.mark.parametrize("profile", sorted(PROFILE_GPUS))
def test_every_stage_and_notebook_runs_on_the_gpu_profile(profile, on_standin, tmp_path):
    """Build every stage as `lab.py course` does, then execute notebooks 00-08 (two at a time)."""
    from labkit import stages
    from labkit.runtime import setup

    on_standin(PROFILE_GPUS[profile])
    prof = setup(profile, quiet=True)
    for name in stages.BUILDERS:
        path = stages.get_stage(name, prof)
        assert (path / "stage.json").exists(), name
        if name != "base":  # every trained stage is full weights (QLoRA merged), never an adapter
            assert (path / "model.safetensors").exists() and not (path / "adapter_config.json").exists()
    with contextlib.redirect_stdout(io.StringIO()):
        records = run_notebooks(profile=profile, out_dir=tmp_path, timeout=NOTEBOOK_TIMEOUT_S,
                                notebooks_dir=NOTEBOOKS_DIR, parameters=SMOKE_PARAMETERS, jobs=2)
    failed = {r["notebook"]: r["error"] for r in records if r["status"] != "ok"}
    assert not failed, f"{profile}: {failed} (executed notebooks in {tmp_path})"
    assert all(r["metrics"].get("profile", profile) == profile for r in records)
    print({r["notebook"]: r["seconds"] for r in records})


@pytest.mark.standin
def test_reward_model_trains_in_fp16_without_4bit(on_standin, world, tmp_path):
    """Regression: on t4 without 4-bit the fp16 score head was trainable, and the GradScaler of
    fp16 training refused it ("Attempting to unscale FP16 gradients")."""
    from labkit.reward_model import train_reward_model
    from labkit.runtime import setup

    on_standin("t4")
    profile = dataclasses.replace(setup("t4", lab="rm", quiet=True, max_steps=1), quant=None)
    assert (profile.dtype, profile.quant) == ("fp16", None)
    result = train_reward_model(profile, world / "models" / "Qwen" / "Qwen3-0.6B", tmp_path)
    assert 0 <= result["heldout_pair_acc"] <= 1
    assert not (tmp_path / "adapter_config.json").exists()


@pytest.mark.standin
def test_ppo_trains_fp16_with_autocast_and_a_grad_scaler(on_standin, world):
    """Regression: labkit.ppo trained fp16 weights with neither autocast nor a GradScaler."""
    import torch

    from labkit.data import load_problems
    from labkit.models import load_tokenizer
    from labkit.ppo import PPOTrainer, load_policy, ppo_config
    from labkit.runtime import setup

    on_standin("t4")
    profile = setup("t4", lab="ppo", quiet=True)
    folder = world / "models" / "Qwen" / "Qwen3-0.6B"
    policy = load_policy(folder, profile)
    trainer = PPOTrainer(policy, load_tokenizer(folder), lambda rows, texts: [0.0] * len(texts),
                         ppo_config(profile, total_steps=1), profile.system_prompt)
    assert trainer.amp_dtype == torch.float16 and trainer.scaler.is_enabled()
    assert {p.dtype for p in trainer.params} == {torch.float32}  # LoRA and value head: fp32 masters
    before = [p.detach().clone() for p in trainer.params]
    history = trainer.train(load_problems("gsm8k", "rl"))
    assert len(history) == 1 and all(torch.isfinite(torch.tensor(v)) for v in history[0].values()
                                     if isinstance(v, float))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params))  # an update happened


def test_base_model_tokenizer_stops_at_the_end_of_a_chat_turn(world):
    """Regression: Qwen3-1.7B-Base's eos is <|endoftext|>; after SFT on its chat template the model
    ends answers with <|im_end|>, so generation must stop there."""
    from transformers import AutoTokenizer

    from labkit.models import load_tokenizer

    folder = world / "models" / "Qwen" / "Qwen3-1.7B-Base"
    assert AutoTokenizer.from_pretrained(folder).eos_token == "<|endoftext|>"  # as on the hub
    tok = load_tokenizer(folder)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token) == ("<|im_end|>", 151645, "<|endoftext|>")
