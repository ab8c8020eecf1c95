"""Tests for labkit.exercises: the check helpers, expect_failure and the student copy."""

from __future__ import annotations

import jupytext
import nbformat
import pytest
import torch

from labkit.exercises import (
    STUB,
    ExerciseError,
    StudentCopyError,
    check_close,
    check_equal,
    check_true,
    expect_failure,
    main,
    make_student_copy,
    stub_solution,
)


def test_check_close_passes_within_tolerance(capsys):
    check_close("mean", 1.50001, 1.5)
    check_close("vec", torch.tensor([1.0, 2.0], requires_grad=True) * 1, [1.0, 2.00001])
    assert capsys.readouterr().out == "✓ mean: 通过 / passed\n✓ vec: 通过 / passed\n"


@pytest.mark.parametrize("value, expected, match", [
    (1.6, 1.5, r"should be close to 1\.5, 实际 / got 1\.6"),
    ([1.0, 2.0], [1.0, 2.0, 3.0], r"shape should be \(3,\), 实际 / got \(2,\)"),
    (None, 1.5, "not done yet: got None"),
    ("abc", 1.5, "should be numbers"),
    (float("nan"), 1.5, "close to"),
])
def test_check_close_fails(value, expected, match):
    with pytest.raises(ExerciseError, match=match) as info:
        check_close("ex1", value, expected, hint="mask 为 0 的位置不计入")
    assert str(info.value).startswith("练习 ex1 未通过 / Exercise ex1 failed: ")
    assert str(info.value).endswith("\n提示 / Hint: mask 为 0 的位置不计入")


def test_check_close_tolerance_is_relative_and_absolute():
    check_close("big", 1000.05, 1000.0, tol=1e-4)  # 0.05 <= 1e-4 * (1 + 1000)
    with pytest.raises(ExerciseError):
        check_close("big", 1000.2, 1000.0, tol=1e-4)


def test_check_equal():
    check_equal("ids", torch.tensor([1, 2, 3]), [1, 2, 3])
    with pytest.raises(ExerciseError, match=r"should equal \[1, 2, 3\], 实际 / got \[1, 2, 4\]"):
        check_equal("ids", torch.tensor([1, 2, 4]), [1, 2, 3])


def test_check_true():
    check_true("shape", True, "unused")
    with pytest.raises(ExerciseError, match="Hint: logits 应为 3 维"):
        check_true("shape", False, "logits 应为 3 维")


def test_exercise_error_is_an_assertion_error():
    assert issubclass(ExerciseError, AssertionError)


def test_expect_failure(capsys):
    expect_failure(lambda: check_close("ex", 2.0, 1.0))
    assert "the check rejects a wrong answer: 练习 ex 未通过" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="accepted a wrong answer"):
        expect_failure(lambda: check_close("ex", 1.0, 1.0))
    with pytest.raises(ZeroDivisionError):  # a check that crashes is not a check that rejects
        expect_failure(lambda: 1 / 0)


def test_stub_solution_keeps_marker_and_indent():
    source = "def f(x):\n    # TODO: 实现 f\n    y = x + 1\n    return y"
    assert stub_solution(source) == f"def f(x):\n    # TODO: 实现 f\n    {STUB}"
    assert stub_solution("a = 1\n# 你的代码\nb = 2") == f"a = 1\n# 你的代码\n{STUB}"
    with pytest.raises(StudentCopyError, match="marker line"):
        stub_solution("b = 2  # TODO later")  # the marker must start the line


SCRIPT = '''# %% tags=["parameters"]
PROFILE = "auto"

# %% tags=["solution"]
import math
# TODO: compute the answer
answer = math.sqrt(16)

# %% tags=["check"]
from labkit import exercises
def check_answer(value):
    exercises.check_close("answer", value, 4.0)
check_answer(answer)

# %% tags=["wrong"]
exercises.expect_failure(lambda: check_answer(5.0))

# %% [markdown]
# done
'''


def test_make_student_copy(tmp_path):
    solution = tmp_path / "01_demo.py"
    solution.write_text(SCRIPT, encoding="utf-8")
    nb = jupytext.read(solution)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="out\n")]
    nb.cells[1].execution_count = 3
    jupytext.write(nb, tmp_path / "01_demo.ipynb")

    assert main(["student-copy", str(tmp_path / "01_demo.ipynb"), str(tmp_path / "student" / "01_demo.ipynb")]) == 0
    copy = nbformat.read(tmp_path / "student" / "01_demo.ipynb", as_version=4)
    assert [c.metadata.get("tags", []) for c in copy.cells] == [["parameters"], ["solution"], ["check"], []]
    assert copy.cells[1].source == f"import math\n# TODO: compute the answer\n{STUB}"
    assert all(c.outputs == [] and c.execution_count is None for c in copy.cells if c.cell_type == "code")
    assert "sqrt" not in (tmp_path / "student" / "01_demo.ipynb").read_text(encoding="utf-8")


def test_make_student_copy_to_script(tmp_path):
    (tmp_path / "01_demo.py").write_text(SCRIPT, encoding="utf-8")
    make_student_copy(tmp_path / "01_demo.py", tmp_path / "student.py")
    text = (tmp_path / "student.py").read_text(encoding="utf-8")
    assert "sqrt" not in text and "expect_failure" not in text and "check_answer(answer)" in text


def test_student_copy_needs_markers(tmp_path, capsys):
    (tmp_path / "01_demo.py").write_text(SCRIPT.replace("# TODO: compute the answer\n", ""), encoding="utf-8")
    with pytest.raises(StudentCopyError, match="01_demo.py, cell 1: a `solution` cell needs a marker"):
        make_student_copy(tmp_path / "01_demo.py", tmp_path / "out.ipynb")
    with pytest.raises(SystemExit) as info:
        main(["student-copy", str(tmp_path / "01_demo.py"), str(tmp_path / "out.ipynb")])
    assert info.value.code == 2 and "needs a marker" in capsys.readouterr().err
    assert not (tmp_path / "out.ipynb").exists()


def test_an_exercise_left_at_none_says_it_is_not_done_yet():
    with pytest.raises(ExerciseError, match="not done yet"):
        check_equal("loss", None, 0.5)
    with pytest.raises(ExerciseError, match="should equal"):
        check_equal("loss", 0.4, 0.5)
    check_equal("nothing", None, None)  # None can still be the right answer
