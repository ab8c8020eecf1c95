"""Tests for labkit.course on tiny synthetic notebooks (each papermill run starts a kernel: ~1-3 s).

Two percent scripts live in a temporary notebooks directory: 01_bad records a metric and then
raises (with its cwd in the message), 02_good prints machine paths and records metrics. One run
of the command line (profile "cpu", --out-dir) is shared by most tests; one more run writes in place
with the default profile "auto".
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import jupytext
import nbformat
import pytest

from labkit import course
from labkit.course import (CourseError, compare_notebooks, committed_metrics, main, parse_parameters,
                           path_replacements, resolve_names, run_notebooks, sanitize_text)

BAD = '''# %% tags=["parameters"]
PROFILE = "auto"
SEED = 0

# %%
import os
from labkit import metrics
metrics.record(partial=1)
raise ValueError(f"boom in {os.getcwd()}")

# %%
print("never reached")
'''

GOOD = '''# %% [markdown]
# A notebook that works.

# %% tags=["parameters"]
PROFILE = "auto"
SEED = 0

# %%
import os
import tempfile
print(os.getcwd())
print(os.path.expanduser("~"), tempfile.gettempdir())
import labkit
print(labkit.__file__)

# %%
# NBVAL_CHECK_OUTPUT
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="kept"):
    pass
for _ in tqdm(range(2), desc="closed", leave=False):
    pass
for _ in tqdm(range(4), desc="Loading weights"):   # a library's bookkeeping bar
    pass
print("seed", SEED)

# %% tags=["solution"]
from labkit import metrics
metrics.record(acc=0.8612345, profile=PROFILE, n=3)
metrics.show()
'''


def _make_notebooks(root: Path) -> Path:
    notebooks = root / "notebooks"
    notebooks.mkdir(parents=True)
    (notebooks / "01_bad.py").write_text(BAD, encoding="utf-8")
    (notebooks / "02_good.py").write_text(GOOD, encoding="utf-8")
    (notebooks / "helper.py").write_text("X = 1\n", encoding="utf-8")  # not NN_name: ignored
    return notebooks


def _run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """Both notebooks through the command line, profile "cpu", written to an out dir."""
    root = tmp_path_factory.mktemp("course")
    notebooks = _make_notebooks(root)
    out_dir = root / "out"
    code, stdout, stderr = _run_main(["--notebooks-dir", str(notebooks), "--out-dir", str(out_dir),
                                      "--profile", "cpu", "--timeout", "120", "--jobs", "1"])
    return dict(root=root, notebooks=notebooks, out_dir=out_dir, code=code, stdout=stdout, stderr=stderr,
                summary=json.loads((out_dir / "summary.json").read_text(encoding="utf-8")))


def test_summary_records(cpu_run):
    bad, good = cpu_run["summary"]
    assert bad["notebook"] == "01_bad" and bad["status"] == "failed" and bad["profile"] == "cpu"
    assert bad["metrics"] == {"partial": 1}  # recorded before the failure, still reported
    assert bad["error"] == "ValueError: boom in <repo>/notebooks"
    assert good == {"notebook": "02_good", "status": "ok", "seconds": good["seconds"],
                    "metrics": {"acc": 0.8612345, "profile": "cpu", "n": 3}, "error": None, "profile": "cpu"}
    assert isinstance(good["seconds"], float) and good["seconds"] > 0


def test_failure_does_not_stop_the_next_notebook_and_sets_exit_code(cpu_run):
    assert cpu_run["code"] == 1
    assert (cpu_run["out_dir"] / "01_bad.ipynb").exists() and (cpu_run["out_dir"] / "02_good.ipynb").exists()
    assert "1 of 2 notebooks failed: 01_bad" in cpu_run["stderr"]


def test_progress_lines(cpu_run):
    lines = [line for line in cpu_run["stdout"].splitlines() if line.startswith("[")]
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] 01_bad .... FAILED  ")
    assert lines[0].endswith(" s  ValueError: boom in <repo>/notebooks")
    assert lines[1].startswith("[2/2] 02_good ... ok  ")
    assert lines[1].endswith(" s  acc=0.8612 profile=cpu n=3")


def test_committed_notebooks_untouched_with_out_dir(cpu_run):
    assert sorted(p.name for p in cpu_run["notebooks"].iterdir()) == ["01_bad.py", "02_good.py", "helper.py"]


def test_written_notebook_pairs_with_script(cpu_run):
    """Same cells as the .py: papermill's injected-parameters cell and error markers are gone."""
    for name in ("01_bad", "02_good"):
        script = jupytext.read(cpu_run["notebooks"] / f"{name}.py")
        executed = jupytext.read(cpu_run["out_dir"] / f"{name}.ipynb")
        assert [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in executed.cells] == \
               [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in script.cells]


def test_written_notebook_metadata(cpu_run):
    nb = nbformat.read(cpu_run["out_dir"] / "02_good.ipynb", as_version=4)
    assert set(nb.metadata.papermill) == {"duration", "parameters"}
    assert nb.metadata.papermill.parameters == {"PROFILE": "cpu"}
    assert nb.metadata.jupytext.formats == "ipynb,py:percent"
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        assert "papermill" not in cell.metadata and "execution" not in cell.metadata
    ids = [cell.id for cell in nb.cells]
    assert len(set(ids)) == len(ids)
    assert all(cell.execution_count is not None for cell in nb.cells if cell.cell_type == "code")


def test_progress_widgets_become_text_and_metrics_are_kept(cpu_run):
    text = (cpu_run["out_dir"] / "02_good.ipynb").read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    assert "widgets" not in nb.metadata and "widget-view" not in text and "model_id" not in text
    outputs = nb.cells[3].outputs
    # the closed bar and the library's "Loading weights" bar are gone
    assert [o.output_type for o in outputs] == ["display_data", "stream"]
    assert outputs[0].data == {"text/plain": "kept: 100% 3/3"}
    assert outputs[1].text == "seed 0\n"
    assert committed_metrics(nb) == {"acc": 0.8612345, "profile": "cpu", "n": 3}


def test_parameters_reach_the_notebook_and_marked_outputs_are_compared(cpu_run, tmp_path):
    code, _, _ = _run_main(["02", "--notebooks-dir", str(cpu_run["notebooks"]), "--out-dir", str(tmp_path),
                            "--profile", "cpu", "-p", "SEED=3"])
    assert code == 0
    first = nbformat.read(cpu_run["out_dir"] / "02_good.ipynb", as_version=4)
    second = nbformat.read(tmp_path / "02_good.ipynb", as_version=4)
    assert second.metadata.papermill.parameters == {"PROFILE": "cpu", "SEED": 3}
    assert compare_notebooks(first, first) == []
    [difference] = compare_notebooks(first, second)      # only the marked cell is compared
    assert difference.startswith("code cell 2:") and "seed 0" in difference and "seed 3" in difference
    assert json.loads((tmp_path / "summary.json").read_text())[0]["parameters"] == {"SEED": 3}


def test_parse_parameters():
    assert parse_parameters(["SEED=1", "NAME=abc", "X=[1, 2]", "T=0.5"]) == \
        {"SEED": 1, "NAME": "abc", "X": [1, 2], "T": 0.5}
    for bad in ("SEED", "1X=2", "=3"):
        with pytest.raises(CourseError, match="NAME=VALUE"):
            parse_parameters([bad])


def test_local_folders_given_on_the_command_line_become_absolute(tmp_path, monkeypatch):
    """`lab.py course -p MODEL_ID=./Qwen3 -p DATA_DIR=data`: the folders the user typed, from where they
    typed them (the notebooks run elsewhere); a hub id is left alone."""
    (tmp_path / "Qwen3").mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_parameters(["MODEL_ID=./Qwen3", "DATA_DIR=data", "NAME=data"]) == \
        {"MODEL_ID": str(tmp_path / "Qwen3"), "DATA_DIR": str(tmp_path / "data"), "NAME": "data"}
    assert parse_parameters(["MODEL_ID=Qwen/Qwen3-0.6B"]) == {"MODEL_ID": "Qwen/Qwen3-0.6B"}


def test_outputs_are_sanitized(cpu_run):
    good = (cpu_run["out_dir"] / "02_good.ipynb").read_text(encoding="utf-8")
    bad = (cpu_run["out_dir"] / "01_bad.ipynb").read_text(encoding="utf-8")
    printed = nbformat.reads(good, as_version=4).cells[2].outputs[0].text
    assert printed.splitlines() == ["<repo>/notebooks", "~ <tmp>", "<repo>/labkit/__init__.py"]
    for text in (good, bad):
        assert str(cpu_run["root"]) not in text
        assert "/tmp/" not in text and str(Path.home()) + "/" not in text
    assert "boom in <repo>/notebooks" in bad  # evalue and traceback


def test_default_profile_writes_in_place(tmp_path):
    notebooks = _make_notebooks(tmp_path)
    code, stdout, _ = _run_main(["02", "--notebooks-dir", str(notebooks)])
    assert code == 0
    assert stdout.startswith("[1/1] 02_good ... ok  ") and stdout.rstrip().endswith("profile=auto n=3")
    nb = nbformat.read(notebooks / "02_good.ipynb", as_version=4)
    assert nb.metadata.papermill.parameters == {}  # "auto": nothing injected
    assert [r["notebook"] for r in json.loads((notebooks / "summary.json").read_text())] == ["02_good"]


def test_metrics_env_var_is_restored(tmp_path, monkeypatch):
    monkeypatch.setenv(course.METRICS_FILE_ENV, "/somewhere/else.json")
    notebooks = _make_notebooks(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        records = run_notebooks(["01_bad"], notebooks_dir=notebooks, out_dir=tmp_path / "o",
                                summary_path=tmp_path / "s.json")
    assert [r["status"] for r in records] == ["failed"]
    assert os.environ[course.METRICS_FILE_ENV] == "/somewhere/else.json"
    assert json.loads((tmp_path / "s.json").read_text()) == records


@pytest.mark.parametrize("name", ["02", "02_good", "02_good.py", "02_good.ipynb", "notebooks/02_good.py"])
def test_resolve_names(tmp_path, name):
    notebooks = _make_notebooks(tmp_path)
    assert resolve_names([name], notebooks) == [notebooks / "02_good.py"]


def test_resolve_all_in_order_ignores_non_notebooks(tmp_path):
    notebooks = _make_notebooks(tmp_path)
    assert [p.name for p in resolve_names(None, notebooks)] == ["01_bad.py", "02_good.py"]


def test_unknown_name_lists_available(tmp_path):
    notebooks = _make_notebooks(tmp_path)
    with pytest.raises(CourseError, match=r"'03_rm' is not a notebook .* Available: 01_bad, 02_good\."):
        resolve_names(["03_rm"], notebooks)
    with pytest.raises(CourseError, match="is not a notebook"):
        resolve_names(["good"], notebooks)
    code, stdout, stderr = _run_main(["7", "--notebooks-dir", str(notebooks)])
    assert code == 2 and stdout == "" and "Available: 01_bad, 02_good" in stderr


def test_bad_options(tmp_path):
    notebooks = _make_notebooks(tmp_path)
    with pytest.raises(CourseError, match="timeout"):
        run_notebooks(notebooks_dir=notebooks, timeout=0)
    with pytest.raises(CourseError, match="No notebooks directory"):
        run_notebooks(notebooks_dir=tmp_path / "missing")
    with pytest.raises(CourseError, match="No NN_name.py notebooks"):
        run_notebooks(notebooks_dir=tmp_path)


def test_sanitize_text_longest_path_first_and_whole_components():
    replacements = [("/w/repo/.venv/lib/site-packages", "<site-packages>"), ("/w/repo", "<repo>"), ("/tmp", "<tmp>"),
                    ("/home/ann", "~")]
    text = ('File "/w/repo/.venv/lib/site-packages/trl/x.py", /w/repo/notebooks, /tmp/a, /tmp, '
            "/tmpfoo, /data/tmp/b, /w/repository, /home/ann/.cache, /home/annie")
    assert sanitize_text(text, replacements) == (
        'File "<site-packages>/trl/x.py", <repo>/notebooks, <tmp>/a, <tmp>, '
        "/tmpfoo, /data/tmp/b, /w/repository, ~/.cache, /home/annie")


def test_path_replacements_cover_this_machine(tmp_path):
    pairs = dict(path_replacements(tmp_path))
    assert pairs[str(tmp_path)] == "<repo>"
    assert pairs[tempfile.gettempdir()] == "<tmp>"
    assert pairs[str(Path.home())] == "~"
    lengths = [len(path) for path, _ in path_replacements(tmp_path)]
    assert lengths == sorted(lengths, reverse=True)
    assert sanitize_text(pytest.__file__, path_replacements(tmp_path)) == "<site-packages>/pytest/__init__.py"


def test_compare_joins_stdout_chunks_and_ignores_stderr():
    def notebook(*outputs):
        cell = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)")
        cell.outputs = [nbformat.v4.new_output("stream", name=name, text=text) for name, text in outputs]
        return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), cell])

    one_chunk = notebook(("stdout", "a\nb\n"))
    assert compare_notebooks(one_chunk, notebook(("stdout", "a\n"), ("stderr", "warning\n"), ("stdout", "b\n"))) == []
    [difference] = compare_notebooks(one_chunk, notebook(("stdout", "a\nc\n")))
    assert difference.startswith("code cell 1:")


def test_notebooks_side_by_side_give_the_same_notebooks(cpu_run, tmp_path, capsys):
    """jobs=2 runs both notebooks at once in separate processes: same records in notebook order,
    same written notebooks (apart from timings), one progress line each."""
    records = run_notebooks(None, profile="cpu", out_dir=tmp_path, timeout=120,
                            notebooks_dir=cpu_run["notebooks"], jobs=2)
    assert [(r["notebook"], r["status"], r["metrics"]) for r in records] == \
           [(r["notebook"], r["status"], r["metrics"]) for r in cpu_run["summary"]]
    lines = sorted(line for line in capsys.readouterr().out.splitlines() if line.startswith("["))
    assert [line[:5] for line in lines] == ["[1/2]", "[2/2]"]
    for name in ("01_bad", "02_good"):
        alone = nbformat.read(cpu_run["out_dir"] / f"{name}.ipynb", as_version=4)
        beside = nbformat.read(tmp_path / f"{name}.ipynb", as_version=4)
        for nb in (alone, beside):
            nb.metadata.papermill.pop("duration")
        assert beside == alone
    with pytest.raises(CourseError, match="jobs"):
        run_notebooks(None, notebooks_dir=cpu_run["notebooks"], jobs=0)


def test_execution_counts_are_renumbered_after_the_injected_cell(cpu_run):
    """The injected parameters cell is dropped, so counts run 1, 2, ... as in a run without it."""
    nb = nbformat.read(cpu_run["out_dir"] / "02_good.ipynb", as_version=4)
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))


def test_adjacent_stream_chunks_are_joined_when_cleaning():
    """How prints are split into chunks depends on timing; the written notebook does not."""
    cell = nbformat.v4.new_code_cell("print(1)")
    cell.outputs = [nbformat.v4.new_output("stream", name=name, text=text) for name, text in
                    [("stdout", "a\n"), ("stdout", "b\n"), ("stderr", "w\n"), ("stdout", "c\n")]]
    nb = nbformat.v4.new_notebook(cells=[cell])
    course.clean_notebook(nb, [])
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [("stdout", "a\nb\n"), ("stderr", "w\n"), ("stdout", "c\n")]
