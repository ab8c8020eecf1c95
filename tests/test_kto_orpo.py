"""Tests for labkit.kto_orpo: KTO's unpaired data, the KTO / ORPO configs on DPO's budget, the
held-out preference measure (the same number as TRL's DPO eval_rewards/accuracies), and a
two-step run of each trainer from the shipped SFT stage."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from labkit import kto_orpo
from labkit.preferences import load_preferences
from labkit.profiles import get_profile

SOURCE = Path(kto_orpo.__file__)


@pytest.fixture(scope="module")
def profile():
    return get_profile("cpu", lab="dpo")


@pytest.fixture(scope="module")
def sft_dir(profile):
    from labkit.stages import get_stage, model_path

    return model_path(get_stage("sft", profile))


def pairs(n: int) -> list[dict]:
    return [{"id": f"p{i}", "question": f"q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"}
            for i in range(n)]


# ---------------------------------------------------------------- KTO data


@pytest.mark.parametrize("n", [1, 2, 5, 40])
def test_each_pair_gives_one_desirable_and_one_undesirable_example(n):
    examples = kto_orpo.kto_examples(pairs(n))
    assert len(examples) == 2 * n
    for row in pairs(n):
        mine = [e for e in examples if e["id"] == row["id"]]
        assert sorted((e["label"], e["completion"]) for e in mine) == [(False, row["rejected"]),
                                                                       (True, row["chosen"])]
        assert all(e["question"] == row["question"] for e in mine)
    assert kto_orpo.kto_examples([]) == []


@pytest.mark.parametrize("batch", [2, *range(4, 41)])
def test_kl_neighbour_is_never_the_same_pair(batch):
    """TRL pairs each prompt with the previous completion of its batch (cyclically) for the KL term."""
    ids = [e["id"] for e in kto_orpo.kto_examples(pairs(53))]
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        kl_ids = chunk[-1:] + chunk[:-1]
        if len(chunk) > 1:
            assert all(a != b for a, b in zip(chunk, kl_ids)), (batch, start)


def test_kto_batches_are_balanced():
    labels = [e["label"] for e in kto_orpo.kto_examples(load_preferences("kit", "train"))]
    for start in range(0, 40 * 32, 32):   # the cpu profile's 40 steps of 32 examples
        assert abs(sum(labels[start:start + 32]) - 16) <= 1


def test_kto_dataset_is_trl_unpaired_conversational():
    from trl.data_utils import is_conversational

    rows = load_preferences("kit", "train", limit=3)
    ds = kto_orpo.kto_dataset(rows, system_prompt="Be brief.")
    assert len(ds) == 6
    assert {"prompt", "completion", "label", "id"} <= set(ds.column_names)
    first = ds[0]
    assert is_conversational(first) and first["label"] is True
    assert first["prompt"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": rows[0]["question"]}]
    assert first["completion"] == [{"role": "assistant", "content": rows[0]["chosen"]}]
    assert ds[2]["id"] == rows[0]["id"] and ds[2]["label"] is False
    assert ds[2]["completion"][0]["content"] == rows[0]["rejected"]


# ---------------------------------------------------------------- configs


def test_configs_carry_dpo_budget(profile, tmp_path):
    assert (profile.batch_size, profile.max_steps, profile.learning_rate) == (16, 40, 2e-3)
    kto = kto_orpo.kto_config(profile, tmp_path)
    orpo = kto_orpo.orpo_config(profile, tmp_path)
    for args in (kto, orpo):
        assert args.max_steps == profile.max_steps
        assert args.learning_rate == profile.learning_rate
        assert args.max_length == profile.max_length
        assert args.gradient_accumulation_steps == profile.grad_accum
        assert args.lr_scheduler_type == "cosine" and args.save_strategy == "no"
        assert args.use_cpu and not args.bf16 and not args.fp16
    assert kto.per_device_train_batch_size == 2 * profile.batch_size   # one pair = two KTO examples
    assert orpo.per_device_train_batch_size == profile.batch_size      # pairs, like DPO
    assert kto.beta == profile.beta and kto.loss_type == "kto"
    assert kto.train_sampling_strategy == "sequential"
    assert orpo.beta == kto_orpo.ORPO_LAMBDA and orpo.remove_unused_columns is False


def test_config_overrides(profile, tmp_path):
    kto = kto_orpo.kto_config(profile, tmp_path, learning_rate=5e-4, max_steps=3, batch_size=4, beta=0.3)
    assert (kto.learning_rate, kto.max_steps, kto.per_device_train_batch_size, kto.beta) == (5e-4, 3, 4, 0.3)
    orpo = kto_orpo.orpo_config(profile, tmp_path, learning_rate=5e-4, max_steps=3, lam=0.2)
    assert (orpo.learning_rate, orpo.max_steps, orpo.beta) == (5e-4, 3, 0.2)


def _dict_keys(name: str) -> set[str]:
    """Keyword names of the `name = dict(...)` in labkit/kto_orpo.py."""
    for node in ast.walk(ast.parse(SOURCE.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return {kw.arg for kw in node.value.keywords if kw.arg is not None}
    raise AssertionError(f"no {name} = dict(...) in {SOURCE}")


def test_every_keyword_exists_in_pinned_trl(profile, tmp_path):
    from trl import KTOConfig, KTOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from labkit.trainer_args import common_args

    shared = set(common_args(profile, tmp_path))
    for keys, config in ((_dict_keys("kto_args"), KTOConfig), (_dict_keys("orpo_kwargs"), ORPOConfig)):
        fields = {f.name for f in dataclasses.fields(config)}
        assert keys and (keys | shared) <= fields, sorted((keys | shared) - fields)
    used = {"model", "args", "train_dataset", "processing_class", "peft_config"}   # labkit.kto_orpo._train
    for trainer in (KTOTrainer, ORPOTrainer):
        assert used <= set(inspect.signature(trainer).parameters)


# ---------------------------------------------------------------- the measure


def test_completion_ids_match_trl_tokenization(sft_dir):
    from trl.data_utils import _tokenize, common_prefix_length

    from labkit.models import load_tokenizer

    tok = load_tokenizer(sft_dir, padding_side="right")
    row = load_preferences("kit", "heldout", limit=1)[0]
    prompt = [{"role": "user", "content": row["question"]}]
    prompt_ids = _tokenize(tok, prompt, add_generation_prompt=True)["input_ids"]
    full = _tokenize(tok, prompt + [{"role": "assistant", "content": row["chosen"]}])["input_ids"]
    ids, start = kto_orpo.completion_ids(tok, prompt, row["chosen"])
    assert ids == full and start == common_prefix_length(prompt_ids, full)
    assert kto_orpo.completion_ids(tok, prompt, row["chosen"], max_length=5)[0] == full[:5]


def test_measure_on_a_fresh_adapter_and_against_a_reference(tiny_policy):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_policy
    rows = load_preferences("kit", "heldout", limit=6)
    scores = kto_orpo.pref_accuracies(model, tok, rows, ref_model=model)
    assert scores["vs_ref"] == 0.0             # policy = reference: every pair ties, ties count wrong
    assert 0.0 <= scores["policy_sum"] <= 1.0 and 0.0 <= scores["policy_mean"] <= 1.0
    assert "vs_ref" not in kto_orpo.pref_accuracies(model, tok, rows, reference=False)
    with pytest.raises(ValueError, match="no reference"):
        kto_orpo.heldout_pref_acc(model, tok, rows)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert kto_orpo.heldout_pref_acc(peft_model, tok, rows) == 0.0   # fresh LoRA: B = 0
    logps = kto_orpo.pair_logps(peft_model, tok, rows, batch_size=4)
    assert logps.chosen.shape == (6,) and bool((logps.chosen < 0).all())
    assert bool((logps.chosen_tokens > 0).all())
    peft_model.unload()


# ---------------------------------------------------------------- two-step runs


def _smoke_check(trainer, profile, sft_dir) -> float:
    from peft import PeftModel

    from labkit.models import load_tokenizer

    assert isinstance(trainer.model, PeftModel)
    assert any("loss" in h for h in trainer.state.log_history)
    assert kto_orpo.train_seconds(trainer) > 0
    tok = load_tokenizer(sft_dir, padding_side="right")
    held = load_preferences("kit", "heldout", limit=8)
    acc = kto_orpo.heldout_pref_acc(trainer.model, tok, held, max_length=profile.max_length)
    assert 0.0 <= acc <= 1.0
    return acc


def test_kto_two_steps(profile, sft_dir, tmp_path):
    trainer = kto_orpo.train_kto(profile, sft_dir, load_preferences("kit", "train", limit=8), tmp_path,
                                 max_steps=2)
    assert trainer.args.per_device_train_batch_size == 32
    assert "kl" in trainer.state.log_history[0]
    _smoke_check(trainer, profile, sft_dir)


def test_orpo_two_steps(profile, sft_dir, tmp_path):
    trainer = kto_orpo.train_orpo(profile, sft_dir, load_preferences("kit", "train", limit=8), tmp_path,
                                  max_steps=2)
    assert "log_odds_ratio" in trainer.state.log_history[0]
    _smoke_check(trainer, profile, sft_dir)


def test_measure_is_trl_dpo_eval_accuracy(profile, sft_dir, tmp_path):
    """heldout_pref_acc is lab 03's number: TRL DPOTrainer's eval_rewards/accuracies."""
    from labkit.preferences import pair_dataset

    trainer = kto_orpo.train_method("dpo", profile, sft_dir, load_preferences("kit", "train", limit=16),
                                    tmp_path, max_steps=2)
    held = load_preferences("kit", "heldout", limit=16)
    trl_acc = trainer.evaluate(pair_dataset(held))["eval_rewards/accuracies"]
    mine = kto_orpo.heldout_pref_acc(trainer.model, trainer.processing_class, held,
                                     max_length=profile.max_length)
    assert 0.0 < trl_acc and mine == pytest.approx(trl_acc, abs=1e-6)
