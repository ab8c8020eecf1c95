"""Load tokenizers and models the way a profile says: dtype, 4-bit quantization, LoRA.

The same calls load the kit's tiny model from a local stage folder (CPU profile) and a real
Qwen3 model from the hub or a mirror (GPU profiles; see labkit.hub.resolve_model).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)

from labkit.profiles import Profile

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_dtype(profile: Profile) -> torch.dtype:
    return DTYPES[profile.dtype]


def quantization_config(profile: Profile) -> BitsAndBytesConfig | None:
    """NF4 4-bit weights with double quantization (QLoRA); compute in the profile's dtype."""
    if profile.quant is None:
        return None
    if profile.quant != "4bit":
        raise ValueError(f"unsupported quant {profile.quant!r}; use None or '4bit'")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch_dtype(profile))


def lora_config(profile: Profile, task_type: str = "CAUSAL_LM") -> LoraConfig | None:
    """LoRA on the profile's target projections; None (full fine-tuning) when lora_rank is 0."""
    if profile.lora_rank == 0:
        return None
    return LoraConfig(r=profile.lora_rank, lora_alpha=profile.lora_alpha,
                      lora_dropout=profile.lora_dropout,
                      target_modules=list(profile.lora_targets), task_type=task_type)


def load_tokenizer(path: str | Path, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Tokenizer from a local folder. Left padding, because batched generation appends on the right."""
    tok = AutoTokenizer.from_pretrained(str(path), padding_side=padding_side)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, profile: Profile) -> PreTrainedModel:
    """A causal LM from a local folder: a full model, or a LoRA adapter folder on top of its base.

    Never uses trust_remote_code: Qwen3 is built into transformers.
    """
    base_path, adapter = base_weights(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(base_path), dtype=torch_dtype(profile),
        quantization_config=quantization_config(profile),
        device_map="auto" if profile.device == "cuda" else None,
    )
    if adapter:
        model = PeftModel.from_pretrained(model, str(path))
        if profile.quant is None:
            model = model.merge_and_unload()
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model


def base_weights(path: str | Path) -> tuple[Path, bool]:
    """(folder holding the full weights, whether `path` is a LoRA adapter folder on top of them).

    A full model folder is its own base; an adapter stage names its base in base_model_path.txt.
    """
    path = Path(path)
    if not (path / "adapter_config.json").exists():
        return path, False
    pointer = path / "base_model_path.txt"
    if not pointer.exists():
        raise FileNotFoundError(f"{pointer} is missing: the adapter's base model is unknown; "
                                "rebuild the stage with labkit.stages.get_stage(..., rebuild=True)")
    return Path(pointer.read_text(encoding="utf-8").strip()), True


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | Path,
               base_path: str | Path) -> PreTrainedModel:
    """Save a trained model (and tokenizer) as a stage folder that `load_model` reads back;
    returns the model as saved (merged when it was merged).

    LoRA on full-precision weights is merged first. A LoRA adapter on 4-bit weights stays an
    adapter, and base_model_path.txt records the full weights it sits on (`base_path`).
    """
    out = Path(out)
    if hasattr(model, "merge_and_unload") and not _quantized(model):
        model = model.merge_and_unload()
    model.save_pretrained(out)
    if (out / "adapter_config.json").exists():
        (out / "base_model_path.txt").write_text(str(base_path), encoding="utf-8")
    tokenizer.save_pretrained(out)
    return model


def _quantized(model: PreTrainedModel) -> bool:
    return getattr(getattr(model, "config", None), "quantization_config", None) is not None


def adapter_to_train(model: PreTrainedModel, profile: Profile) -> LoraConfig | None:
    """The peft_config to hand a TRL trainer for `model`, loaded from a stage by `load_model`.

    Quantized profiles: the stage is a LoRA adapter on 4-bit weights; keep training that
    adapter (its LoRA weights become trainable) and return None. Otherwise a fresh LoRA (or
    None for full fine-tuning), as `lora_config` says.
    """
    if not hasattr(model, "peft_config"):
        return lora_config(profile)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return None
