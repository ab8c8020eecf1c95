"""Every keyword the course passes to TRL / transformers / PEFT exists in the pinned versions.

Most of these callables accept anything: TRL configs are dataclasses, but transformers configs,
GenerationConfig and the `from_pretrained` loaders take **kwargs and silently keep or drop
unknown names, so a renamed option (SFTConfig's max_seq_length -> max_length) or a typo just
stops working. This test reads the sources with `ast` (nothing is executed) and checks:

1. Direct calls. A call whose callee ends in a name of the registry below (`SFTConfig(...)`,
   `trl.SFTConfig(...)`, `AutoModelForCausalLM.from_pretrained(...)`) may only pass keywords
   the pinned callable accepts; `**splats` are not checked. Import aliases are not followed
   (`from trl import SFTConfig as C` hides the calls): don't alias these names.
2. Keyword dicts (convention for config builders in labkit and the notebooks). A dict literal
   `{"key": ...}` or `dict(key=...)` assigned to a name (or attribute) ending in
   `_config_kwargs` or `_args`, whose prefix ends with a known config prefix (CONFIG_PREFIXES:
   `sft_config_kwargs`, `cpu_grpo_args`, `self.training_args`, `LORA_CONFIG_KWARGS`), is checked as
   keywords of that config. Other names, dicts built step by step (`d["k"] = v`, `.update`) and
   dicts nested in other dicts are not checked: build the whole dict in one literal.

Scanned: notebooks/*.py and labkit/**/*.py. Allowed keywords come from `inspect.signature`
(dataclass fields included), config attributes, and for the **kwargs loaders the explicit
allow-lists below, which test_allow_lists_match_installed_sources proves still appear in the
installed sources. DEPRECATED names are rejected with the replacement to use.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCANNED = sorted((REPO / "notebooks").glob("*.py")) + sorted((REPO / "labkit").rglob("*.py"))

TRL_NAMES = ("SFTConfig", "SFTTrainer", "GRPOConfig", "GRPOTrainer", "DPOConfig", "DPOTrainer", "RewardConfig",
             "RewardTrainer", "RLOOConfig", "RLOOTrainer", "KTOConfig", "KTOTrainer")
AUTO_MODELS = ("AutoModelForCausalLM", "AutoModelForSequenceClassification")

# Keywords `PreTrainedModel.from_pretrained` (transformers 5.23, modeling_utils.py) takes out of
# **kwargs itself; whatever is left goes to the model's config.
MODEL_LOADER_KWARGS = frozenset({
    "dtype", "device_map", "max_memory", "offload_folder", "offload_buffers", "quantization_config",
    "attn_implementation", "experts_implementation", "subfolder", "variant", "state_dict", "proxies",
    "output_loading_info", "adapter_kwargs", "adapter_name", "generation_config", "gguf_file",
    "distributed_config", "device_mesh", "tp_plan", "tp_size", "trust_remote_code", "use_kernels",
    "kernel_config", "key_mapping", "tqdm_class",
})
# Config attributes every model config accepts through from_pretrained (num_labels is a property
# of PreTrainedConfig; the others are its __init__ parameters, added in allowed_keywords()).
MODEL_CONFIG_KWARGS = frozenset({"num_labels"})
# AutoTokenizer.from_pretrained (models/auto/tokenization_auto.py) and
# PreTrainedTokenizerBase.from_pretrained / __init__ (tokenization_utils_base.py) take these out
# of **kwargs; the special tokens (bos_token, pad_token, ...) are added in allowed_keywords().
TOKENIZER_LOADER_KWARGS = frozenset({
    "config", "tokenizer_type", "code_revision", "gguf_file", "proxies", "subfolder", "padding_side",
    "truncation_side", "model_max_length", "chat_template", "model_input_names",
    "clean_up_tokenization_spaces", "split_special_tokens", "extra_special_tokens",
})
# PeftModel.from_pretrained (peft 0.21.2, peft_model.py) forwards these hub options to
# PeftConfig.from_pretrained; the rest of **kwargs goes to load_adapter (its parameters are added).
PEFT_LOADER_KWARGS = frozenset({"subfolder", "revision", "cache_dir", "token"})

# Accepted by the pinned versions but deprecated or ignored: name -> what to do instead.
MODEL_LOADER_DEPRECATED = {
    "torch_dtype": "deprecated in transformers 5 (logs a warning): use dtype=",
    "low_cpu_mem_usage": "ignored since transformers 5: remove it",
    "_fast_init": "ignored since transformers 5: remove it",
    "offload_state_dict": "ignored since transformers 5: remove it",
}
TOKENIZER_DEPRECATED = {"use_fast": "ignored in transformers 5 (always the fast tokenizer): remove it"}

# Renames people still write from older tutorials -> the pinned name (shown as a hint).
RENAMED = {"max_seq_length": "max_length", "tokenizer": "processing_class", "evaluation_strategy": "eval_strategy",
           "torch_dtype": "dtype"}

# Keyword-dict convention: name prefix -> config it feeds.
CONFIG_PREFIXES = {"sft": "SFTConfig", "grpo": "GRPOConfig", "dpo": "DPOConfig", "reward": "RewardConfig",
                   "rloo": "RLOOConfig", "kto": "KTOConfig", "training": "TrainingArguments", "lora": "LoraConfig",
                   "generation": "GenerationConfig", "bnb": "BitsAndBytesConfig"}
DICT_SUFFIXES = ("_config_kwargs", "_args")


def _params(fn) -> set[str]:
    """Named parameters of a callable or class (no self/cls, no *args/**kwargs)."""
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name for name, p in inspect.signature(fn).parameters.items()
            if p.kind not in skip and name not in ("self", "cls")}


@functools.cache
def allowed_keywords() -> dict[str, tuple[frozenset[str], dict[str, str]]]:
    """Registry: callee name -> (allowed keywords, deprecated keywords with advice)."""
    import peft
    import transformers
    import trl
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    table: dict[str, tuple[frozenset[str], dict[str, str]]] = {}

    def add(name: str, allowed: set[str], deprecated: dict[str, str] | None = None) -> None:
        table[name] = (frozenset(allowed), deprecated or {})

    for name in TRL_NAMES:
        add(name, _params(getattr(trl, name)))
    add("TrainingArguments", _params(transformers.TrainingArguments))
    add("Trainer", _params(transformers.Trainer))
    add("LoraConfig", _params(peft.LoraConfig))
    add("get_peft_model", _params(peft.get_peft_model))
    add("PeftModel.from_pretrained",
        _params(peft.PeftModel.from_pretrained) | _params(peft.PeftModel.load_adapter) | PEFT_LOADER_KWARGS)
    add("load_adapter", _params(peft.PeftModel.load_adapter))
    add("BitsAndBytesConfig", _params(transformers.BitsAndBytesConfig))
    generation_keys = {k for k in transformers.GenerationConfig().to_dict() if not k.startswith("_")}
    add("GenerationConfig", generation_keys)
    # `<model>.generate(...)`: generation options are GenerationConfig fields (labkit's loops name
    # the model `model` or `policy`; model inputs come in as a **splat, which is not checked).
    for owner in ("model", "policy"):
        add(f"{owner}.generate", generation_keys | _params(transformers.GenerationMixin.generate))
    config_kwargs = _params(PreTrainedConfig) | MODEL_CONFIG_KWARGS
    add("Qwen3Config", _params(transformers.Qwen3Config) | config_kwargs)
    # Leftover loader kwargs become config attributes: the common ones, and Qwen3's (the course's architecture).
    model_loader = (_params(PreTrainedModel.from_pretrained) | MODEL_LOADER_KWARGS | config_kwargs
                    | _params(transformers.Qwen3Config))
    for auto in AUTO_MODELS:
        add(f"{auto}.from_pretrained", model_loader, MODEL_LOADER_DEPRECATED)
    add("AutoTokenizer.from_pretrained",
        _params(PreTrainedTokenizerBase.from_pretrained) | TOKENIZER_LOADER_KWARGS
        | set(PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES), TOKENIZER_DEPRECATED)
    return table


def _callee(func: ast.expr, table) -> str | None:
    """Registry name of a call's callee: `X.from_pretrained` or the final name (`trl.SFTConfig` -> SFTConfig)."""
    if isinstance(func, ast.Name):
        return func.id if func.id in table else None
    if isinstance(func, ast.Attribute):
        owner = func.value.attr if isinstance(func.value, ast.Attribute) else getattr(func.value, "id", None)
        for name in (f"{owner}.{func.attr}", func.attr):
            if name in table:
                return name
    return None


def _dict_config(target: ast.expr) -> str | None:
    """Config fed by a keyword dict assigned to `target`, by the naming convention, or None."""
    name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else ""
    name = name.lower()
    for suffix in DICT_SUFFIXES:
        if name.endswith(suffix):
            prefix = name.removesuffix(suffix)
            for key, config in CONFIG_PREFIXES.items():
                if prefix == key or prefix.endswith("_" + key):
                    return config
    return None


def _dict_keywords(value: ast.expr | None) -> list[tuple[str, int]] | None:
    """(key, line) of a dict literal with string keys or a dict(...) call; None for anything else."""
    if isinstance(value, ast.Dict):
        return [(k.value, k.lineno) for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
        return [(kw.arg, kw.value.lineno) for kw in value.keywords if kw.arg is not None]
    return None


def _judge(target: str, keyword: str, where: str) -> str | None:
    allowed, deprecated = allowed_keywords()[target]
    if keyword in deprecated:
        return f"{where}: {target}({keyword}=...): {deprecated[keyword]}"
    if keyword in allowed:
        return None
    hints = difflib.get_close_matches(keyword, sorted(allowed), n=3, cutoff=0.6)
    if RENAMED.get(keyword) in allowed and RENAMED[keyword] not in hints:
        hints.insert(0, RENAMED[keyword])
    closest = f"; closest valid names: {', '.join(hints)}" if hints else ""
    return f"{where}: {target} has no parameter {keyword!r} in the pinned versions{closest}"


def find_problems(source: str, filename: str) -> list[str]:
    """One message per keyword in `source` that the pinned callable would not accept."""
    table = allowed_keywords()
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and (target := _callee(node.func, table)):
            for kw in node.keywords:
                if kw.arg is not None:  # **splat: not checkable
                    problems.append(_judge(target, kw.arg, f"{filename}:{kw.value.lineno}"))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for assigned in node.targets if isinstance(node, ast.Assign) else [node.target]:
                config = _dict_config(assigned)
                keys = _dict_keywords(node.value) if config else None
                for key, line in keys or []:
                    problems.append(_judge(config, key, f"{filename}:{line}"))
    return [p for p in problems if p is not None]


# --- the real sources ---------------------------------------------------------------------------

def test_sources_use_existing_keywords():
    problems = []
    for path in SCANNED:
        problems += find_problems(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not problems, "API drift against the pinned TRL/transformers/PEFT:\n" + "\n".join(problems)


def test_allow_lists_match_installed_sources():
    """Each hand-listed loader keyword is still read by the installed code (else the list is stale)."""
    import peft.peft_model
    import transformers.modeling_utils
    import transformers.models.auto.tokenization_auto
    import transformers.tokenization_utils_base

    model_source = inspect.getsource(transformers.modeling_utils.PreTrainedModel.from_pretrained)
    tokenizer_source = (inspect.getsource(transformers.models.auto.tokenization_auto)
                        + inspect.getsource(transformers.tokenization_utils_base))
    peft_source = inspect.getsource(peft.peft_model.PeftModel.from_pretrained)
    for names, source in [(MODEL_LOADER_KWARGS | set(MODEL_LOADER_DEPRECATED), model_source),
                          (TOKENIZER_LOADER_KWARGS | set(TOKENIZER_DEPRECATED), tokenizer_source),
                          (PEFT_LOADER_KWARGS, peft_source)]:
        stale = sorted(name for name in names if f'"{name}"' not in source)
        assert not stale, f"no longer read by the installed code: {stale}"
    from transformers import PreTrainedConfig
    assert isinstance(inspect.getattr_static(PreTrainedConfig, "num_labels"), property)


# --- the checker itself ---------------------------------------------------------------------------

def test_flags_misspelled_grpo_keyword():
    [problem] = find_problems("from trl import GRPOConfig\ncfg = GRPOConfig(\n    max_prompt_lenght=1)\n", "nb.py")
    assert problem.startswith("nb.py:3: GRPOConfig has no parameter 'max_prompt_lenght' in the pinned versions")
    assert "closest valid names: " in problem


def test_flags_keywords_removed_in_pinned_trl():
    # TRL 1.16 renamed SFTConfig.max_seq_length to max_length and dropped GRPOConfig.max_prompt_length.
    [renamed] = find_problems("SFTConfig(output_dir='o', max_seq_length=512)", "x.py")
    assert renamed.startswith("x.py:1: SFTConfig has no parameter 'max_seq_length'")
    assert "closest valid names: max_length" in renamed
    [dropped] = find_problems("trl.GRPOConfig(max_prompt_length=128)", "x.py")
    assert "'max_prompt_length'" in dropped
    [old_trainer] = find_problems("SFTTrainer(model=m, tokenizer=tok)", "x.py")
    assert "closest valid names: processing_class" in old_trainer


def test_flags_deprecated_loader_keywords():
    source = ("transformers.AutoModelForCausalLM.from_pretrained('m', torch_dtype='auto', low_cpu_mem_usage=True)\n"
              "AutoTokenizer.from_pretrained('m', use_fast=True)\n")
    assert find_problems(source, "x.py") == [
        "x.py:1: AutoModelForCausalLM.from_pretrained(torch_dtype=...): deprecated in transformers 5 "
        "(logs a warning): use dtype=",
        "x.py:1: AutoModelForCausalLM.from_pretrained(low_cpu_mem_usage=...): ignored since transformers 5: remove it",
        "x.py:2: AutoTokenizer.from_pretrained(use_fast=...): ignored in transformers 5 (always the fast tokenizer): "
        "remove it",
    ]


def test_flags_unknown_loader_and_config_keywords():
    source = ("AutoModelForSequenceClassification.from_pretrained('m', num_label=1)\n"
              "GenerationConfig(max_new_token=5)\n"
              "Qwen3Config(hidden_sise=64)\n"
              "PeftModel.from_pretrained(model, 'p', trainable=True)\n"
              "LoraConfig(rank=8)\n"
              "TrainingArguments(learning_rat=1e-4)\n")
    problems = find_problems(source, "x.py")
    assert [p.split(":")[1] for p in problems] == ["1", "2", "3", "4", "5", "6"]
    assert "closest valid names: num_labels" in problems[0]
    assert "closest valid names: max_new_tokens" in problems[1]
    assert "closest valid names: hidden_size" in problems[2]
    assert "'trainable'" in problems[3] and "is_trainable" in problems[3]
    assert "'rank'" in problems[4]
    assert "closest valid names: learning_rate" in problems[5]


def test_accepts_valid_calls_and_ignores_the_rest():
    source = """
SFTConfig(output_dir="o", max_length=128, learning_rate=1e-4, assistant_only_loss=True, **extra)
trl.GRPOConfig(num_generations=4, max_completion_length=32, beta=0.0)
DPOConfig(beta=0.1, max_length=256)
RewardConfig(max_length=256)
SFTTrainer(model=m, args=a, train_dataset=d, processing_class=tok, peft_config=p)
GRPOTrainer(model=m, reward_funcs=[f], args=a, train_dataset=d, processing_class=tok)
AutoModelForCausalLM.from_pretrained("m", dtype="auto", device_map="auto", attn_implementation="sdpa",
                                     quantization_config=q, revision="main", local_files_only=True, use_cache=False)
AutoModelForSequenceClassification.from_pretrained("m", num_labels=1, pad_token_id=0)
AutoTokenizer.from_pretrained("m", padding_side="left", revision="main", pad_token="<|endoftext|>")
LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
get_peft_model(model, peft_config=cfg)
PeftModel.from_pretrained(model, "p", is_trainable=True, subfolder="a", torch_device="cpu")
BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dt)
GenerationConfig(max_new_tokens=5, do_sample=False, temperature=0.7)
Qwen3Config(hidden_size=64, num_hidden_layers=2, pad_token_id=0, tie_word_embeddings=True)
model.from_pretrained("m", anything=1)
something(max_prompt_lenght=1)
"""
    assert find_problems(source, "x.py") == []


def test_keyword_dict_convention():
    source = """
grpo_config_kwargs = dict(max_prompt_lenght=1, **more)
SFT_CONFIG_KWARGS = {"learning_rate": 1e-4, "max_length": 64, **extra}
cpu_sft_args = {"max_seq_length": 1}
self.lora_config_kwargs = {"rank": 8}
training_args: dict = {"learning_rat": 1}
parser_args = {"anything": 1}
grpo_args = make_args()
"""
    problems = find_problems(source, "x.py")
    assert [(p.split(":")[1], p.split(": ")[1].split(" ")[0]) for p in problems] == [
        ("2", "GRPOConfig"), ("4", "SFTConfig"), ("5", "LoraConfig"), ("6", "TrainingArguments")]
    assert "closest valid names: max_length" in problems[1]


def test_registry_covers_the_pinned_classes():
    table = allowed_keywords()
    assert "max_length" in table["SFTConfig"][0] and "max_seq_length" not in table["SFTConfig"][0]
    assert "dtype" in table["AutoModelForCausalLM.from_pretrained"][0]
    assert "num_generations" in table["GRPOConfig"][0]
    assert all(allowed for allowed, _ in table.values())


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: str(p.relative_to(REPO)))
def test_scanned_files_parse(path):
    ast.parse(path.read_text(encoding="utf-8"), str(path))
