"""Reward models: a sequence-classification head on the SFT model, trained on preference pairs
with TRL's RewardTrainer (Bradley-Terry loss), and scoring conversations with it.

`train_reward_model` is the recipe lab 02 teaches; the "rm" stage reuses it so the PPO and
test-time-compute labs get a reward model without running lab 02.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from trl import RewardConfig

from labkit.data import prompt_messages
from labkit.models import autocast, cpu_safe_4bit, device_map, lora_config, quantization_config, torch_dtype
from labkit.profiles import Profile
from labkit.trainer_args import common_args


def reward_config(profile: Profile, output_dir: str | Path, seed: int = 0) -> RewardConfig:
    """RewardConfig for `profile`. A constant learning rate (after a short warm-up): the tiny
    reward model needs its late steps to learn to compare numbers, which a decaying rate starves."""
    return RewardConfig(
        **common_args(profile, output_dir, seed=seed),
        per_device_eval_batch_size=profile.eval_batch_size,
        lr_scheduler_type="constant_with_warmup",
        max_length=profile.max_length,
    )


def rm_lora_config(profile: Profile):
    """LoRA for a reward model (task SEQ_CLS, so PEFT also trains the new score head), or None
    for full fine-tuning when the profile's lora_rank is 0."""
    return lora_config(profile, task_type="SEQ_CLS")


def load_reward_model(path: str | Path, profile: Profile, tokenizer) -> PreTrainedModel:
    """A one-output sequence classifier from a local folder: a trained reward model, or a causal
    LM whose LM head is replaced by a new, randomly initialised score head (num_labels=1).

    The head reads each row's last non-pad token, so the model gets `tokenizer`'s pad id.
    """
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, dtype=torch_dtype(profile),
        quantization_config=quantization_config(profile), device_map=device_map(profile),
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.score.float()  # a trainable head stays fp32 (an fp16 one breaks fp16 training's GradScaler)
    return cpu_safe_4bit(model)


@torch.no_grad()
def score(model, tokenizer, conversations: list[list[dict]], batch_size: int = 64) -> list[float]:
    """The reward of each full conversation (prompt and assistant reply), rendered with the chat
    template exactly as RewardTrainer renders a pair's chosen or rejected side."""
    model.eval()
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        with autocast(model):
            scores += model(**batch).logits[:, 0].float().tolist()
    return scores


def score_responses(model, tokenizer, rows: list[dict], responses: list[str],
                    system_prompt: str | None = None, batch_size: int = 64) -> list[float]:
    """The reward of responses[i] as the answer to rows[i]["question"]."""
    conversations = [prompt_messages(row, system_prompt) + [{"role": "assistant", "content": response}]
                     for row, response in zip(rows, responses, strict=True)]
    return score(model, tokenizer, conversations, batch_size)


@dataclass
class PairResult:
    """Scores of held-out pairs and how often the chosen side wins, overall and by group."""

    accuracy: float
    by_group: dict[str, float]
    chosen: list[float] = field(repr=False)
    rejected: list[float] = field(repr=False)


def pair_accuracy(model, tokenizer, rows: list[dict], system_prompt: str | None = None,
                  group_by: str = "rejected_kind", batch_size: int = 64) -> PairResult:
    """Score both sides of every pair; accuracy = share of pairs with chosen > rejected.

    Rows without the `group_by` field (hub pairs) are grouped under "all".
    """
    chosen = score_responses(model, tokenizer, rows, [r["chosen"] for r in rows], system_prompt, batch_size)
    rejected = score_responses(model, tokenizer, rows, [r["rejected"] for r in rows], system_prompt,
                               batch_size)
    wins = [float(c > r) for c, r in zip(chosen, rejected)]
    groups: dict[str, list[float]] = {}
    for row, win in zip(rows, wins):
        groups.setdefault(str(row.get(group_by, "all")), []).append(win)
    return PairResult(accuracy=sum(wins) / len(wins),
                      by_group={k: sum(v) / len(v) for k, v in sorted(groups.items())},
                      chosen=chosen, rejected=rejected)


def train_reward_model(profile: Profile, sft_path: str | Path, out: Path, seed: int = 0) -> dict:
    """Train a reward model from the SFT model on the profile's preference pairs; save it to `out`.

    Returns the training log and the held-out pair accuracy.
    """
    from trl import RewardTrainer

    from labkit.hardware import detect
    from labkit.models import load_tokenizer, save_model
    from labkit.preferences import load_preferences, pair_dataset
    from labkit.preflight import preflight

    preflight(profile, detect(), lab="rm")
    tokenizer = load_tokenizer(sft_path, padding_side="right")
    model = load_reward_model(sft_path, profile, tokenizer)
    train = pair_dataset(load_preferences(profile.pref_dataset, "train"), profile.system_prompt)
    heldout_rows = load_preferences(profile.pref_dataset, "heldout")
    trainer = RewardTrainer(model=model, args=reward_config(profile, out / "trainer", seed),
                            train_dataset=train, processing_class=tokenizer,
                            peft_config=rm_lora_config(profile))
    trainer.train()
    model = save_model(trainer.model, tokenizer, out, sft_path)
    heldout = pair_accuracy(model, tokenizer, heldout_rows, profile.system_prompt,
                            batch_size=profile.eval_batch_size)
    return {"log_history": trainer.state.log_history, "heldout_pair_acc": heldout.accuracy,
            "heldout_by_kind": heldout.by_group}


def oracle_agreement(scores: list[float], correct: list[float], groups: list[object]) -> tuple[float, int]:
    """How often the reward model ranks a right answer above a wrong one to the same question.

    Over every pair (i, j) of samples in the same group (question) where the exact-answer check
    says i is right and j is wrong, count score[i] > score[j]; ties count half. Returns
    (agreement, number of such pairs); agreement is nan when there are no such pairs.
    """
    if not len(scores) == len(correct) == len(groups):
        raise ValueError(f"scores, correct and groups differ in length: "
                         f"{len(scores)}, {len(correct)}, {len(groups)}")
    by_group: dict[object, list[tuple[float, float]]] = {}
    for s, c, g in zip(scores, correct, groups):
        by_group.setdefault(g, []).append((s, c))
    wins, pairs = 0.0, 0
    for items in by_group.values():
        for s_right, c_right in items:
            for s_wrong, c_wrong in items:
                if c_right > 0.5 >= c_wrong:
                    pairs += 1
                    wins += 1.0 if s_right > s_wrong else 0.5 if s_right == s_wrong else 0.0
    return (wins / pairs if pairs else float("nan")), pairs


ERROR_KINDS = ("bad_format", "no_reasoning", "wrong_final", "wrong_step")


def error_kind(completion: str) -> str:
    """Which kind of rejected answer in the preference data (data/README.md) a WRONG completion
    resembles: "bad_format" (no <think>...</think> block), "no_reasoning" (no number in the
    reasoning), "wrong_step" (the final answer equals the reasoning's last number, so a step of
    the reasoning is wrong) or "wrong_final" (the final answer differs from the reasoning's last
    number). Call it only on completions the exact-answer check marked wrong."""
    import re

    from labkit.rewards import extract_answer, split_think

    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}")
    reasoning, _ = split_think(completion)
    if reasoning is None:
        return "bad_format"
    numbers = re.findall(r"-?\d+", reasoning)
    if not numbers:
        return "no_reasoning"
    return "wrong_step" if extract_answer(completion) == numbers[-1] else "wrong_final"
