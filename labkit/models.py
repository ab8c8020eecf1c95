"""Load tokenizers and models the way a profile says: dtype, 4-bit quantization, LoRA.

The same calls load the kit's tiny model from a local stage folder (CPU profile) and a real
Qwen3 model from the hub or a mirror (GPU profiles; see labkit.hub.resolve_model).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig,
                          PreTrainedModel, PreTrainedTokenizerBase)

from labkit.profiles import Profile

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHAT_END = "<|im_end|>"  # the end-of-turn token of Qwen's chat template (and the tiny model's)


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
    if tok.eos_token != CHAT_END and CHAT_END in (tok.chat_template or ""):
        # A base model's tokenizer (Qwen3-*-Base) names <|endoftext|> as eos, but its chat template
        # ends every turn with <|im_end|>: after SFT, generation must stop there (as Qwen's chat
        # models are set up), not run on to the token budget.
        tok.eos_token = CHAT_END
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, profile: Profile) -> PreTrainedModel:
    """A causal LM from a local folder of full weights (a hub snapshot or a stage), in the
    profile's dtype, 4-bit when the profile says so.

    Never uses trust_remote_code: Qwen3 is built into transformers.
    """
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch_dtype(profile), quantization_config=quantization_config(profile),
        device_map=device_map(profile),
    )
    model.generation_config.pad_token_id = model.config.pad_token_id
    return cpu_safe_4bit(model)


def cpu_safe_4bit(model: torch.nn.Module) -> torch.nn.Module:
    """Keep bitsandbytes' 4-bit layers trainable on a CPU.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight for fast inference the first
    time it runs without gradients, and a later training step on the repacked weight fails
    ("shape '[32, 0]' is invalid"). Labs evaluate and then train, so turn that repacking off.
    Does nothing on a GPU or to a model without 4-bit layers.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def compute_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The half dtype a model computes in (fp16 or bf16; the 4-bit compute dtype when quantized),
    None for fp32."""
    quant = getattr(getattr(model, "config", None), "quantization_config", None)
    dtype = getattr(quant, "bnb_4bit_compute_dtype", None) or next(model.parameters()).dtype
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def autocast(model: torch.nn.Module):
    """The mixed precision a trainer's forward passes run in: autocast to the model's fp16 / bf16
    on the device it is on; nothing for an fp32 model. Use it to run a trained model outside its
    trainer (an fp32 LoRA or score head meets fp16 activations there)."""
    dtype = compute_dtype(model)
    if dtype is None:
        return nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


def device_map(profile: Profile) -> str | None:
    """"auto" (let accelerate place the weights) for a GPU profile on a real GPU, else None (CPU)."""
    from labkit.hardware import compute_device

    return "auto" if profile.device == "cuda" and compute_device() == "cuda" else None


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | Path,
               base_path: str | Path) -> PreTrainedModel:
    """Save a trained model (and tokenizer) as full weights that `load_model` reads back; returns
    the model as saved.

    A LoRA model is merged first. LoRA trained on 4-bit weights (QLoRA) cannot be merged into
    them, so its adapter is merged into a full-precision copy of the weights it was trained on
    (`base_path`, loaded on the CPU): the usual way to ship a QLoRA model. Every stage is then
    one folder of full weights, which the next lab loads (and quantizes) like any model.
    """
    out = Path(out)
    if hasattr(model, "merge_and_unload"):
        model = _merged_on_full_weights(model, base_path) if _quantized(model) else model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model


def _merged_on_full_weights(model, base_path: str | Path) -> PreTrainedModel:
    """The adapter of a PeftModel on 4-bit weights, merged into the unquantized weights at `base_path`."""
    import tempfile

    base = model.get_base_model()
    dtype = compute_dtype(base) or torch.float32  # the dtype the 4-bit layers computed in
    with tempfile.TemporaryDirectory(prefix="labkit-adapter-") as adapter_dir:
        model.save_pretrained(adapter_dir)
        full = type(base).from_pretrained(str(base_path), dtype=dtype, num_labels=base.config.num_labels)
        merged = PeftModel.from_pretrained(full, adapter_dir).merge_and_unload()
    merged.config.pad_token_id = base.config.pad_token_id
    return merged


def _quantized(model: PreTrainedModel) -> bool:
    return getattr(getattr(model, "config", None), "quantization_config", None) is not None


def upcast_trainable(model: torch.nn.Module) -> torch.nn.Module:
    """Keep every trainable parameter in fp32 (mixed precision: fp16/bf16 compute, fp32 updates).

    An fp16 trainable parameter breaks fp16 training: its gradients underflow, and the gradient
    scaler refuses them ("Attempting to unscale FP16 gradients"). Frozen weights keep their dtype.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return model


def free_memory() -> None:
    """Give memory held by deleted models back: collect garbage and empty PyTorch's CUDA cache."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
