"""Seeded generator for the kit's own math word problems (Chinese and English).

Run `python data/generate.py` to rewrite every file in data/ byte for byte; the test suite
checks that the committed files equal a fresh run. Standard library only.

Each problem has a difficulty level:
  1  one operation on small numbers           (12+7, 15-6, 4*3)
  2  two chained operations                    (4*3+5)
  3  three chained operations, larger numbers  (23+18, 41*2-17)
The reasoning (the text that goes inside <think>...</think>) writes one equation per step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20261121
HERE = Path(__file__).resolve().parent

NAMES = {"zh": ["小明", "小红", "小刚", "小丽", "小华", "小芳"],
         "en": ["Tom", "Anna", "Ben", "Lily", "Sam", "Mia"]}
ITEMS = {"zh": ["苹果", "铅笔", "糖果", "书", "气球", "贴纸"],
         "en": ["apples", "pencils", "candies", "books", "balloons", "stickers"]}

# One template per (language, operation). {n} name, {i} item, {a} {b} numbers.
START = {"zh": "{n}有{a}个{i}。", "en": "{n} has {a} {i}. "}
STEP = {
    "zh": {"+": "又买了{b}个。", "-": "送给朋友{b}个。", "*": "然后数量变成原来的{b}倍。"},
    "en": {"+": "Then buys {b} more. ", "-": "Then gives away {b}. ", "*": "Then the amount becomes {b} times as many. "},
}
ASK = {"zh": "现在有多少个{i}？", "en": "How many {i} now?"}
# Level-1 multiplication reads more naturally as boxes of items.
BOXES = {"zh": "每盒有{a}个{i}，{n}买了{b}盒。一共有多少个{i}？",
         "en": "Each box holds {a} {i}. {n} buys {b} boxes. How many {i} in total?"}

# Number ranges per level: start value and operand ranges by operation. Multiplication only
# ever multiplies a value of at most MUL_MAX (a times-table fact), so level 1-2 arithmetic stays
# within what a 1M-parameter model learns in a few hundred steps; level 3 adds two-digit operands.
LEVELS = {
    1: {"steps": 1, "start": (2, 20), "+": (1, 9), "-": (1, 9), "*": (2, 9)},
    2: {"steps": 2, "start": (2, 20), "+": (1, 9), "-": (1, 9), "*": (2, 5)},
    3: {"steps": 3, "start": (10, 40), "+": (5, 29), "-": (5, 29), "*": (2, 3)},
}
MUL_MAX = 10
MAX_VALUE = 99  # keep every intermediate result in [0, MAX_VALUE]

SPLIT_SIZES = {"pretrain": 8000, "sft": 3000, "prefs": 1500, "rl": 1500, "eval": 600}


def _apply(x: int, op: str, b: int) -> int:
    return x + b if op == "+" else x - b if op == "-" else x * b


def make_problem(rng: random.Random, level: int, lang: str) -> dict:
    """One problem with its step-by-step reasoning and integer answer."""
    spec = LEVELS[level]
    name, item = rng.choice(NAMES[lang]), rng.choice(ITEMS[lang])
    while True:
        x = rng.randint(*spec["start"])
        ops = [rng.choice("+-*") for _ in range(spec["steps"])]
        if ops.count("*") > 1:
            continue
        operands = [rng.randint(*spec[op]) for op in ops]
        values, ok = [x], True
        for op, b in zip(ops, operands):
            ok &= op != "*" or values[-1] <= MUL_MAX
            values.append(_apply(values[-1], op, b))
            ok &= 0 <= values[-1] <= MAX_VALUE
        if ok:
            break
    if level == 1 and ops[0] == "*":
        question = BOXES[lang].format(n=name, i=item, a=x, b=operands[0])
    else:
        parts = [START[lang].format(n=name, i=item, a=x)]
        parts += [STEP[lang][op].format(b=b) for op, b in zip(ops, operands)]
        question = "".join(parts) + ASK[lang].format(i=item)
    steps = [f"{v}{op}{b}={w}" for v, op, b, w in zip(values, ops, operands, values[1:])]
    return {"lang": lang, "level": level, "question": question.strip(),
            "reasoning": ", ".join(steps), "answer": str(values[-1])}


def wrong_answer(rng: random.Random, answer: str) -> str:
    """A plausible wrong integer near the right one."""
    right = int(answer)
    while True:
        wrong = right + rng.choice([-10, -2, -1, 1, 2, 10])
        if wrong >= 0:
            return str(wrong)


def make_rejected(rng: random.Random, row: dict) -> tuple[str, str]:
    """A worse response for a preference pair, and what makes it worse.

    The draws from `rng` are the same for every kind, so the splits generated after `prefs`
    do not depend on how the kinds are divided; a wrong answer becomes `wrong_step` (an
    arithmetic slip carried to the answer) for 1 row in 5, decided by a generator seeded
    from the row id.
    """
    kind = rng.choice(["wrong_answer", "wrong_answer", "no_reasoning", "bad_format"])
    wrong = wrong_answer(rng, row["answer"])
    if kind == "wrong_answer":
        if random.Random(f"{SEED}-{row['id']}").random() < 0.2:
            steps = row["reasoning"].rsplit("=", 1)[0] + "=" + wrong
            return f"<think>{steps}</think>{wrong}", "wrong_step"
        return f"<think>{row['reasoning']}</think>{wrong}", "wrong_final"
    if kind == "no_reasoning":
        return f"<think></think>{wrong}", kind
    return f"{row['reasoning']} {row['answer']}", kind


def generate() -> dict[str, list[dict]]:
    """All splits. Questions are unique across splits, so eval is truly held out."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        rows: list[dict] = []
        while len(rows) < size:
            level = rng.choice([1, 2, 3])
            lang = rng.choice(["zh", "en"])
            row = make_problem(rng, level, lang)
            if row["question"] in seen:
                continue
            seen.add(row["question"])
            row = {"id": f"{split}-{len(rows):05d}", **row}
            if split == "prefs":
                rejected, kind = make_rejected(rng, row)
                row["chosen"] = f"<think>{row['reasoning']}</think>{row['answer']}"
                row["rejected"], row["rejected_kind"] = rejected, kind
            if split in ("rl", "eval"):
                row.pop("reasoning")
            rows.append(row)
        splits[split] = rows
    return splits


def write(out_dir: Path = HERE) -> list[Path]:
    paths = []
    for split, rows in generate().items():
        path = out_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(p.name, sum(1 for _ in p.open(encoding="utf-8")), "rows")
