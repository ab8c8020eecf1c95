"""Supervised fine-tuning with TRL's SFTTrainer and LoRA: the config lab 01 teaches, reused by
the SFT stage so later labs can start from an SFT model without running lab 01."""

from __future__ import annotations

from pathlib import Path

from trl import SFTConfig

from labkit.profiles import Profile
from labkit.trainer_args import common_args


def sft_config(profile: Profile, output_dir: str | Path, seed: int = 0) -> SFTConfig:
    """SFTConfig for `profile`: assistant-only loss, LoRA-friendly learning rate, no checkpoints."""
    return SFTConfig(
        **common_args(profile, output_dir, seed=seed),
        lr_scheduler_type="cosine",
        max_length=profile.max_length,
        assistant_only_loss=True,       # loss only on the assistant turn (see the label mask)
        packing=False,
    )


def sft_dataset(profile: Profile, limit: int | None = None):
    """Conversational SFT rows: the kit's sft split on CPU, GSM8K's train split on GPU profiles."""
    from labkit.data import load_problems, sft_messages, to_dataset

    rows = load_problems(profile.dataset, "sft", limit=limit)
    return to_dataset(rows, lambda r: {"messages": sft_messages(r, profile.system_prompt)})


def train_sft(profile: Profile, base_path: str | Path, out: Path, seed: int = 0) -> dict:
    """Train LoRA SFT from `base_path`; save a merged model (or the adapter when quantized) to `out`."""
    from trl import SFTTrainer

    from labkit.hardware import detect
    from labkit.models import load_model, load_tokenizer, lora_config, save_model
    from labkit.preflight import preflight

    preflight(profile, detect(), lab="sft")  # refuses a config that won't fit, before loading
    tokenizer = load_tokenizer(base_path, padding_side="right")
    model = load_model(base_path, profile)
    trainer = SFTTrainer(model=model, args=sft_config(profile, out / "trainer", seed),
                         train_dataset=sft_dataset(profile), processing_class=tokenizer,
                         peft_config=lora_config(profile))
    trainer.train()
    save_model(trainer.model, tokenizer, out, base_path)
    return {"log_history": trainer.state.log_history}
