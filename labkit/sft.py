"""Supervised fine-tuning with TRL's SFTTrainer and LoRA: the config lab 01 teaches, reused by
the SFT stage so later labs can start from an SFT model without running lab 01."""

from __future__ import annotations

from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class ShortRun:
    """What a short SFT run measured: its setting and greedy held-out accuracy / format rate."""

    max_steps: int
    learning_rate: float
    accuracy: float
    format_rate: float
    train_seconds: float


def short_sft_run(profile: Profile, base_path: str | Path, eval_rows: list[dict], *, max_steps: int,
                  learning_rate: float, seed: int = 0,
                  output_dir: str | Path = "outputs/01_sft_short") -> ShortRun:
    """Train LoRA SFT from `base_path` for `max_steps` steps at `learning_rate` (the profile's
    recipe otherwise) and score greedy completions on `eval_rows`, quietly.

    For experiments in class: only the max_steps x batch_size training rows the run uses are
    tokenized, and no progress bars or log lines are printed.
    """
    import datasets
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    from labkit.evaluate import evaluate_accuracy
    from labkit.models import load_model, load_tokenizer, lora_config

    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    if not isinstance(learning_rate, (int, float)) or not 0 < learning_rate < 1:
        raise ValueError(f"learning_rate must be a number in (0, 1), got {learning_rate!r}")
    if not eval_rows:
        raise ValueError("eval_rows is empty: pass some held-out problems to score the run on")
    run_profile = replace(profile, max_steps=max_steps, learning_rate=float(learning_rate))
    tokenizer = load_tokenizer(base_path, padding_side="right")
    model = load_model(base_path, profile)
    args = sft_config(run_profile, output_dir, seed=seed)
    args.disable_tqdm = True
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        trainer = SFTTrainer(model=model, args=args,
                             train_dataset=sft_dataset(run_profile, limit=max_steps * profile.batch_size
                                                       * profile.grad_accum),
                             processing_class=tokenizer, peft_config=lora_config(run_profile))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    seconds = trainer.train().metrics["train_runtime"]
    merged = trainer.model.merge_and_unload() if profile.quant is None else trainer.model
    result = evaluate_accuracy(merged, tokenizer, eval_rows, run_profile, desc="eval short run")
    return ShortRun(max_steps=max_steps, learning_rate=float(learning_rate), accuracy=result.accuracy,
                    format_rate=result.format_rate, train_seconds=round(seconds, 1))
