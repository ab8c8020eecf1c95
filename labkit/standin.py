"""A stand-in hub built offline, so the GPU profiles' exact code path runs (and is tested) on a CPU.

    python -m labkit.standin build DIR        # write the stand-in world into DIR
    LABKIT_STANDIN=DIR LABKIT_STANDIN_GPU=t4 python -m labkit.course 01 --profile t4

The world holds what the GPU profiles download, in the layout the hub serves it:
- models/Qwen/Qwen3-0.6B and models/Qwen/Qwen3-1.7B-Base: Qwen's real tokenizer (real BPE ids,
  Qwen3's added tokens and chat template, see labkit.standin_tokenizer) on a random 2-layer
  Qwen3ForCausalLM with the real vocabulary (151,936) and the real config otherwise;
- datasets/openai/gsm8k/main/{train,test}-00000-of-00001.parquet (question, answer "... #### 72");
- datasets/argilla/distilabel-math-preference-dpo/data/train-00000-of-00001.parquet.

With LABKIT_STANDIN set, labkit.hub resolves hub ids to these folders (never the network);
LABKIT_STANDIN_GPU=t4|4090|a100-40gb makes labkit.hardware.detect report that GPU, so a GPU
profile's checks (memory preflight, precision, 4-bit, LoRA) run while the tensors stay on the CPU;
and every GPU profile gets the SMOKE sizes, so a lab finishes in about a minute. bitsandbytes'
4-bit layers run on a CPU too (slowly), so the t4 QLoRA path runs end to end.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from labkit.hardware import Hardware

WORLD_ENV, GPU_ENV = "LABKIT_STANDIN", "LABKIT_STANDIN_GPU"
VERSION = 2  # bump when build_world writes something different

# The GPUs a stand-in run can pretend to be (what torch reports on the real card).
GPUS: dict[str, Hardware] = {
    "t4": Hardware(device="cuda", name="Tesla T4 (stand-in: computing on the CPU)", vram_total_gb=14.7,
                   vram_free_gb=14.6, capability=(7, 5), bf16=False),
    "4090": Hardware(device="cuda", name="NVIDIA GeForce RTX 4090 (stand-in: computing on the CPU)",
                     vram_total_gb=23.5, vram_free_gb=23.1, capability=(8, 9), bf16=True),
    "a100-40gb": Hardware(device="cuda", name="NVIDIA A100-SXM4-40GB (stand-in: computing on the CPU)",
                          vram_total_gb=39.4, vram_free_gb=39.0, capability=(8, 0), bf16=True),
}

# Profile sizes of a stand-in run: a few steps on a few short sequences. Everything else (model ids,
# dtype, 4-bit, LoRA, checkpointing, datasets) stays the profile's own.
SMOKE = dict(max_steps=2, batch_size=2, grad_accum=1, max_length=256, max_new_tokens=24,
             num_generations=2, rollout_batch_size=2, eval_limit=4, eval_batch_size=4)

# The real configs of the hub models, except the stand-in's size (2 layers, 32 wide: the fp16 matmuls
# of a T4 run are slow on a CPU, and the 151,936-row embedding is most of the work).
_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, max_window_layers=2,
              num_attention_heads=2, num_key_value_heads=1, head_dim=16)
MODELS: dict[str, dict] = {
    "Qwen/Qwen3-0.6B": dict(
        config=dict(vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                    eos_token_id=151645, attention_bias=False, use_sliding_window=False),
        generation=dict(bos_token_id=151643, pad_token_id=151643, eos_token_id=[151645, 151643],
                        do_sample=True, temperature=0.6, top_k=20, top_p=0.95),
        base=False),
    "Qwen/Qwen3-1.7B-Base": dict(
        config=dict(vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                    eos_token_id=151643, attention_bias=False, use_sliding_window=False),
        generation=dict(bos_token_id=151643, eos_token_id=151643, do_sample=False, max_new_tokens=2048),
        base=True),
}
GSM8K, PREFS = "openai/gsm8k", "argilla/distilabel-math-preference-dpo"
GSM8K_ROWS = {"train": 64, "test": 40}
PREF_ROWS = 120  # the last 10 % (12 pairs) is held out; lab 03 checks 8 by hand


def world() -> Path | None:
    """The stand-in world in use ($LABKIT_STANDIN), or None when hub ids mean the real hub."""
    root = os.environ.get(WORLD_ENV)
    return Path(root).expanduser().resolve() if root else None


def gpu() -> Hardware | None:
    """The GPU a stand-in run pretends to be ($LABKIT_STANDIN_GPU), or None."""
    name = os.environ.get(GPU_ENV)
    if not name:
        return None
    if name not in GPUS:
        raise ValueError(f"{GPU_ENV}={name!r}: choose one of {sorted(GPUS)}")
    return GPUS[name]


def snapshot(repo_id: str, repo_type: str) -> str:
    """The stand-in folder of hub repo `repo_id` (what snapshot_download would return)."""
    root = world()
    assert root is not None, f"{WORLD_ENV} is not set"
    path = root / f"{repo_type}s" / repo_id
    if not path.is_dir():
        raise FileNotFoundError(f"{WORLD_ENV}={root} has no {repo_type} {repo_id!r} (expected {path}); "
                                f"build the world with `python -m labkit.standin build {root}`")
    return str(path)


def emulate_fp16_amp() -> None:
    """Give TRL's trainers on a CPU the fp16 mixed precision they get on a T4.

    accelerate enables fp16 autocast and a GradScaler on CUDA only; on a CPU it silently trains
    without either, which would hide the very dtype errors a T4 run hits. In a stand-in run this
    turns both on for the CPU (torch supports fp16 autocast and GradScaler("cpu")), so a trainer
    behaves as it would on the GPU it stands in for. Patches accelerate.Accelerator once.
    """
    import torch
    from accelerate import Accelerator

    if getattr(Accelerator, "_labkit_fp16_on_cpu", False):
        return
    original = Accelerator.__init__

    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if self.state.mixed_precision == "fp16" and self.device.type == "cpu":
            self.native_amp = True
            self.scaler = torch.amp.GradScaler("cpu")

    Accelerator.__init__ = __init__
    Accelerator._labkit_fp16_on_cpu = True


# ---------------------------------------------------------------- building the world


def build_world(root: str | Path) -> Path:
    """Write every stand-in model and dataset into `root` (skipped when the same version is there)."""
    root = Path(root)
    stamp = root / "standin.json"
    if stamp.exists() and json.loads(stamp.read_text(encoding="utf-8")).get("version") == VERSION:
        return root
    for repo_id in MODELS:
        build_model(root / "models" / repo_id, repo_id)
    build_gsm8k(root / "datasets" / GSM8K)
    build_prefs(root / "datasets" / PREFS)
    stamp.write_text(json.dumps({"version": VERSION}) + "\n", encoding="utf-8")
    return root


def build_model(out: Path, repo_id: str, seed: int = 0) -> None:
    """A random small Qwen3ForCausalLM in bf16 with Qwen's tokenizer, saved as the hub folder."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from labkit.standin_tokenizer import build_qwen3_base_tokenizer, build_qwen3_tokenizer

    spec = MODELS[repo_id]
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**spec["config"], **_SMALL)).to(torch.bfloat16)
    model.generation_config = GenerationConfig(**spec["generation"])
    model.save_pretrained(out)
    (build_qwen3_base_tokenizer if spec["base"] else build_qwen3_tokenizer)(out)


def _kit_rows(split: str) -> list[dict]:
    from labkit.data import load_split

    return [row for row in load_split(split) if row["lang"] == "en"]


def _gsm8k_answer(reasoning: str, answer: str) -> str:
    """The kit's "a+b=c, c*d=e" reasoning in GSM8K's layout: two lines per step (so the kit's levels
    1-3 stay levels 1-3 under labkit.data.gsm8k_level), calculator annotations, then "#### answer"."""
    lines = []
    for step in reasoning.split(", "):
        expression, _, result = step.partition("=")
        lines += [f"Next we work out {expression}.", f"{expression} = <<{expression}={result}>>{result}."]
    return "\n".join(lines) + f"\n#### {answer}"


def build_gsm8k(out: Path) -> None:
    """GSM8K's main config as the hub serves it: main/<split>-00000-of-00001.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _kit_rows("sft")
    for split, count in GSM8K_ROWS.items():
        chosen = rows[:count] if split == "train" else rows[-count:]
        table = pa.table({"question": [r["question"] for r in chosen],
                          "answer": [_gsm8k_answer(r["reasoning"], r["answer"]) for r in chosen]})
        (out / "main").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "main" / f"{split}-00000-of-00001.parquet")


def build_prefs(out: Path) -> None:
    """argilla/distilabel-math-preference-dpo's columns: data/train-00000-of-00001.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _kit_rows("prefs")[:PREF_ROWS]
    table = pa.table({
        "metadata": [json.dumps({"source": "labkit stand-in", "id": r["id"]}) for r in rows],
        "instruction": [r["question"] for r in rows],
        "chosen_response": [r["chosen"] for r in rows],
        "chosen_rating": [9.0] * len(rows),
        "rejected_response": [r["rejected"] for r in rows],
        "rejected_rating": [3.0] * len(rows),
    })
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "data" / "train-00000-of-00001.parquet")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "build":
        print(__doc__.split("\n\n")[1])
        return 2
    print(build_world(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
