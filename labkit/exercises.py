"""Exercise checks for the notebooks, and the student copy of a notebook.

Convention (tests/test_notebooks.py enforces it), one exercise = three consecutive code cells:

    # %% tags=["solution"]
    def masked_mean(x, mask):
        # TODO: 用 mask 只对有效位置求平均 / average over the positions where mask is 1
        return (x * mask).sum() / mask.sum()

    # %% tags=["check"]
    def check_masked_mean(fn):
        exercises.check_close("masked_mean", fn(torch.tensor([1., 2., 3.]), torch.tensor([1, 1, 0])), 1.5)
    check_masked_mean(masked_mean)

    # %% tags=["wrong"]
    exercises.expect_failure(lambda: check_masked_mean(lambda x, mask: x.mean()))

- `solution`: the instructor's answer. Everything after its marker line (a comment starting with
  `# TODO` or `# 你的代码`) is the student's part; `make_student_copy` replaces it by
  `...  # 在这里完成`, indented like the marker. Put the part to complete at the end of the cell.
- `check`: asserts on the solution with the `check_*` helpers below (each raises ExerciseError,
  with a Chinese + English message). Write it as a function of the answer, then call it.
- `wrong`: feeds a plausible wrong answer to the same check inside `expect_failure`, which
  asserts that the check rejects it. It runs in every execution (papermill, CI, JupyterLab),
  so CI proves each check can fail. It must not rebind the solution's names (later cells use
  them): pass the wrong answer as an argument instead. Student copies drop these cells.

Command line: `python -m labkit.exercises student-copy NOTEBOOK OUT` (NOTEBOOK: .ipynb or .py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

MARKERS = ("# TODO", "# 你的代码")
STUB = "...  # 在这里完成"


class ExerciseError(AssertionError):
    """An exercise answer is wrong; the message says what was expected (Chinese + English)."""


class StudentCopyError(ValueError):
    """A notebook does not follow the solution/check/wrong convention, so no student copy can be made."""


def check_close(name: str, value: object, expected: object, tol: float = 1e-4, hint: str = "") -> None:
    """Check that numbers (or equal-shape arrays/tensors) agree: |value - expected| <= tol * (1 + |expected|)."""
    import numpy as np

    if value is None:
        _fail(name, "还没有完成：得到 None / not done yet: got None", hint)
    want = np.asarray(_plain(expected), dtype=float)
    try:
        got = np.asarray(_plain(value), dtype=float)
    except (TypeError, ValueError):
        _fail(name, f"应为数字或数组 / should be numbers, 实际 / got {_short(value)}", hint)
    if got.shape != want.shape:
        _fail(name, f"形状应为 / shape should be {want.shape}, 实际 / got {got.shape}", hint)
    if not np.allclose(got, want, rtol=tol, atol=tol, equal_nan=False):
        _fail(name, f"应约等于 / should be close to {_short(want)}, 实际 / got {_short(got)} (tol={tol:g})", hint)
    _passed(name)


def check_equal(name: str, value: object, expected: object, hint: str = "") -> None:
    """Check exact equality (tensors and arrays are compared as nested lists)."""
    if value is None and expected is not None:
        _fail(name, "还没有完成：答案仍是 None / not done yet: the answer is still None", hint)
    got, want = _plain(value), _plain(expected)
    if got != want:
        _fail(name, f"应等于 / should equal {_short(want)}, 实际 / got {_short(got)}", hint)
    _passed(name)


def check_true(name: str, cond: bool, hint: str) -> None:
    """Check a condition; `hint` tells the student what the condition means."""
    if not cond:
        _fail(name, "条件不成立 / condition is false", hint)
    _passed(name)


def expect_failure(fn: Callable[[], object]) -> None:
    """Assert that `fn` (a check fed a wrong answer) raises ExerciseError; used by `wrong` cells."""
    try:
        fn()
    except ExerciseError as error:
        first_line = str(error).splitlines()[0]
        print(f"✓ 检查拒绝了错误答案 / the check rejects a wrong answer: {first_line}")
        return
    raise AssertionError("The check accepted a wrong answer: make the check stricter "
                         "(检查没有发现错误答案，请加强检查).")


def make_student_copy(notebook_path: str | Path, out_path: str | Path) -> None:
    """Write the student version of a notebook: no outputs, solutions stubbed, `wrong` cells removed."""
    import jupytext  # imported here: notebooks import this module and never need jupytext

    notebook_path, out_path = Path(notebook_path), Path(out_path)
    nb = jupytext.read(notebook_path)
    cells = []
    for index, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        if "wrong" in tags:
            continue
        if cell.cell_type == "code":
            if "solution" in tags:
                cell.source = stub_solution(cell.source, where=f"{notebook_path.name}, cell {index}")
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
        cells.append(cell)
    nb.cells = cells
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(nb, out_path)


def stub_solution(source: str, where: str = "solution cell") -> str:
    """Keep `source` up to and including its marker line; replace the rest by the stub."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(MARKERS):
            indent = line[: len(line) - len(line.lstrip())]
            return "\n".join(lines[: i + 1] + [indent + STUB])
    raise StudentCopyError(f"{where}: a `solution` cell needs a marker line starting with "
                           f"{' or '.join(repr(m) for m in MARKERS)} where the student's code begins.")


def _plain(value: object) -> object:
    """Tensors and arrays -> nested Python lists (a tensor is detached and moved to the CPU first)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    return value.tolist() if hasattr(value, "tolist") else value


def _short(value: object, limit: int = 120) -> str:
    text = repr(value.tolist() if hasattr(value, "tolist") else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(name: str, detail: str, hint: str) -> None:
    message = f"练习 {name} 未通过 / Exercise {name} failed: {detail}"
    if hint:
        message += f"\n提示 / Hint: {hint}"
    raise ExerciseError(message)


def _passed(name: str) -> None:
    print(f"✓ {name}: 通过 / passed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.exercises", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    copy = commands.add_parser("student-copy", help="write the student version of a notebook")
    copy.add_argument("notebook", type=Path, help="the solution notebook (.ipynb or jupytext .py)")
    copy.add_argument("out", type=Path, help="where to write the student copy (.ipynb or .py)")
    args = parser.parse_args(argv)
    if not args.notebook.is_file():
        parser.error(f"no such notebook: {args.notebook}")
    try:
        make_student_copy(args.notebook, args.out)
    except StudentCopyError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
