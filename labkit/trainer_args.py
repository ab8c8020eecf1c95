"""The TrainingArguments every labkit trainer shares (SFT, reward model, DPO), set from a profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labkit.profiles import Profile


def checkpointing_arg() -> str:
    """The TrainingArguments name of activation (gradient) checkpointing in the installed transformers.

    transformers 5.23 renamed gradient_checkpointing to activation_checkpointing (the old name still
    works with a FutureWarning, and TRL configs default it to True); Colab's transformers 5.15 only
    knows the old name (labkit.colab keeps Colab's version).
    """
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def precision_args(profile: Profile) -> dict[str, bool]:
    """TRL configs default to bf16, which fails on a CPU and on a T4: say it explicitly.

    use_cpu is also set when a GPU profile runs without a GPU (a stand-in run, labkit.standin):
    transformers refuses bf16 there unless told that the CPU is meant.
    """
    from labkit.hardware import compute_device

    return {"use_cpu": profile.device == "cpu" or compute_device() == "cpu",
            "bf16": profile.dtype == "bf16", "fp16": profile.dtype == "fp16"}


def common_args(profile: Profile, output_dir: str | Path, *, max_steps: int | None = None,
                seed: int = 0, log_points: int = 30) -> dict[str, Any]:
    """Steps, batch, learning rate, warm-up, logging and precision from `profile`; no checkpoints,
    no reporting services. `log_points`: about how many log entries a run writes."""
    steps = max_steps or profile.max_steps
    training_args = dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=profile.batch_size,
        gradient_accumulation_steps=profile.grad_accum,
        learning_rate=profile.learning_rate,
        warmup_steps=max(1, steps // 20),
        **{checkpointing_arg(): profile.gradient_checkpointing},
        logging_steps=max(1, steps // log_points),
        save_strategy="no",
        report_to="none",
        seed=seed,
        dataloader_num_workers=0,
        **precision_args(profile),
    )
    return training_args
