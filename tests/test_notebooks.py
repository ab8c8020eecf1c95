"""Tests over the real course notebooks in notebooks/ (each test skips while there are none).

Conventions checked here (the notebook authors follow them):

a. Pairing. `notebooks/NN_name.py` (jupytext percent script) is the source of truth and
   `notebooks/NN_name.ipynb` holds the same cells plus committed outputs: cell types, sources
   and tags must agree (outputs and other metadata are ignored). Every NN_name.ipynb has a .py.
   Rebuild the .ipynb with `python -m labkit.course NN` after editing the .py (or edit it in
   JupyterLab with jupytext pairing, which saves both).
b. Shape. The first code cell is the Colab setup cell (tagged `colab-setup`, a no-op wherever
   labkit imports; tests/test_colab.py checks its text) and the second is tagged `parameters` and
   assigns PROFILE and SEED. The last
   code cell calls `metrics.show()` (`labkit.metrics.show()` also counts). The committed
   .ipynb is executed (every code cell has an execution count), has no error outputs and no
   machine paths in its text outputs (/tmp/, /root/, /work/, /home/<user>).
c. Exercises (see labkit/exercises.py). There is at least one exercise. Each is three
   consecutive code cells (markdown may sit in between):
     `solution`  the answer; a marker line `# TODO ...` or `# 你的代码 ...` starts the part the
                 student writes (it runs to the end of the cell);
     `check`     asserts with labkit.exercises.check_* helpers;
     `wrong`     calls labkit.exercises.expect_failure(lambda: <the check fed a wrong answer>),
                 proving in every execution that the check rejects a wrong answer. It must not
                 rebind any top-level name the solution cell binds (later cells use them).
   `labkit.exercises.make_student_copy` must work: no `wrong` cells, no outputs, and no line of
   the solution after the marker left in the copy.
d. Execution (marked `notebook`, slow: minutes). Each notebook is executed once, through the
   course runner on PROFILE "cpu" into a temp dir. From that one run: it must succeed and record
   the headline metrics in EXPECTED_METRICS with at least the values in MIN_VALUES and the
   orderings in MUST_EXCEED; the cells marked `NBVAL_CHECK_OUTPUT` (nbval's marker) must print
   what the committed notebook printed; and every metric the committed notebook recorded must be
   reproduced within the spread measured over seeds and CPU kernels (benchmarks/spread.json).
   Fast suite: `pytest -m "not notebook"`.
e. Claims (fast). The spread table covers the committed notebooks' metrics, and the thresholds
   of d. sit inside the measured spread.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
from papermill.translators import PythonTranslator

from labkit.colab import SETUP_TAG
from labkit.course import committed_metrics, compare_notebooks, discover, run_notebooks
from labkit.exercises import MARKERS, STUB, make_student_copy

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SCRIPTS = discover(NOTEBOOKS_DIR) if NOTEBOOKS_DIR.is_dir() else []
MACHINE_PATH = re.compile(r"/tmp/|/root/|/work/|/home/[^/\s]+")
NOTEBOOK_TIMEOUT_S = 3600  # per cell; CPU runs of the training notebooks take minutes
# Headline metrics measured over 3 seeds x 2 CPU kernel sets (benchmarks/spread.py).
SPREAD_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "spread.json"
SPREAD: dict[str, dict[str, dict]] = (json.loads(SPREAD_PATH.read_text(encoding="utf-8"))["metrics"]
                                      if SPREAD_PATH.exists() else {})

# Headline metrics each notebook must record (labkit.metrics.record) and minimum values on "cpu".
ABLATION = ("grpo", "clip_higher", "dynamic", "token_level", "dapo", "dr_grpo", "rloo", "reinforce_pp", "gspo",
            "cispo", "sapo")
EXPECTED_METRICS: dict[str, list[str]] = {
    "00_environment": ["profile", "oom_plan_gib", "fixed_plan_gib", "tiny_params"],
    "01_sft": ["heldout_acc_before", "heldout_acc_after", "format_rate_after"],
    "02_reward_model": ["rm_heldout_pair_acc", "rm_oracle_agreement"],
    "03_dpo": ["dpo_heldout_pref_acc", "dpo_margin_start", "dpo_margin_end", "heldout_acc_sft",
               "heldout_acc_dpo"],
    "04_ppo": ["rm_score_start", "rm_score_end", "kl_end", "heldout_acc_before", "heldout_acc_after"],
    "05_grpo": ["heldout_acc_before", "heldout_acc_after", "reward_start", "reward_end", "kl_end", "len_start",
                "len_end", "heldout_gain"],
    "06_grpo_variants": [f"{m}_{v}" for v in ABLATION for m in ("heldout_acc", "heldout_se", "entropy_end", "wrong_len_end")]
                        + [f"clip_ratio_{v}" for v in ABLATION if v != "sapo"] + ["dapo_extra_prompts", "ablation_seeds"],
    "07_test_time_compute": ["pass_at_1", "best_of_16_oracle", "best_of_16_rm", "majority_of_16",
                             "oracle_gain_16", "grpo_pass_at_1", "rm_miss_rate_16",
                             "sft_majority_n_to_match_grpo"],
    "08_tools": ["ddp_world_size", "ddp_loss_max_diff", "ddp_seconds", "single_seconds", "verl_overrides_ok",
                 "openrlhf_args_ok", "deepspeed_configs_ok", "kto_heldout_pref_acc", "orpo_heldout_pref_acc"],
}
# Thresholds sit below the spread measured over 3 seeds x 2 CPU kernel sets (benchmarks/spread.md);
# test_thresholds_sit_inside_the_measured_spread checks that they stay there.
MIN_VALUES: dict[str, dict[str, float]] = {
    "01_sft": {"heldout_acc_after": 0.8, "format_rate_after": 0.9},
    "02_reward_model": {"rm_heldout_pair_acc": 0.9},
    "03_dpo": {"dpo_heldout_pref_acc": 0.8},
    "04_ppo": {"kl_end": 0.05},
    # Lab 05: +0.15 sampled held-out accuracy over the SFT start is checked on every measured run
    # (EVERY_RUN below); this CI threshold sits a little lower, as test_thresholds_sit_inside... asks.
    "05_grpo": {"heldout_acc_after": 0.85, "heldout_gain": 0.145},
    # Lab 06: every variant on the cpu profile, seed means over >= 3 seeds (benchmarks/ablation.json), and
    # num_iterations=2 makes the clip act (it was 0 on every step with 1).
    "06_grpo_variants": {"dapo_extra_prompts": 1, "ablation_seeds": 3, "clip_ratio_grpo": 1e-4, "clip_ratio_rloo": 1e-3,
                         **{f"heldout_acc_{v}": 0.5 for v in ABLATION}},
    # Best-of-16 with an exact-answer verifier over pass@1 on the hard level: 0.238-0.248 measured on the
    # shipped stages (the lab-07 issue's 0.3 was met by the earlier, machine-dependent tiny world).
    "07_test_time_compute": {"oracle_gain_16": 0.2},
    # Lab 08: two DDP ranks sampling the single run's completions; all three engine checks pass.
    "08_tools": {"ddp_world_size": 1.5, "ddp_same_completions": 0.9, "verl_overrides_ok": 0.9,
                 "openrlhf_args_ok": 0.9, "deepspeed_configs_ok": 0.9, "kto_heldout_pref_acc": 0.8},
}
# Bars a notebook's prose or an issue states, held by every run of the spread (3 seeds x 2 kernels).
EVERY_RUN: dict[str, dict[str, float]] = {"05_grpo": {"heldout_gain": 0.15}}
# Metric pairs (larger, smaller): on "cpu" the first must exceed the second. Each is a claim a
# notebook's prose makes, and held in every measured run.
MUST_EXCEED: dict[str, list[tuple[str, str]]] = {
    "01_sft": [("heldout_acc_base_plain", "heldout_acc_before"), ("heldout_acc_after", "heldout_acc_before"),
               ("heldout_acc_after_level1", "heldout_acc_after_level2"),
               ("heldout_acc_after_level1", "heldout_acc_after_level3")],
    "02_reward_model": [("rm_heldout_pair_acc", "rm_oracle_agreement"), ("rm_acc_wrong_final", "rm_acc_wrong_step")],
    "03_dpo": [("heldout_acc_sft", "heldout_acc_dpo"), ("mean_len_dpo", "mean_len_sft"),
               ("ref_chosen_logp", "chosen_logp_sigmoid_0p1"), ("gap_sigmoid_0p03", "gap_sigmoid_0p1"),
               ("gap_sigmoid_0p1", "gap_sigmoid_0p5"), ("gap_sigmoid_0p5", "gap_ipo_0p5"),
               ("rejected_logp_ipo_0p5", "rejected_logp_sigmoid_0p5"),
               # step 6: the mild run keeps more of the task than both runs at the large learning rate,
               # still less than SFT, moves less far on the pairs and writes SFT-length answers
               ("heldout_acc_dpo_mild", "heldout_acc_dpo"), ("heldout_acc_dpo_mild", "heldout_acc_sigmoid_0p5"),
               ("heldout_acc_sft", "heldout_acc_dpo_mild"), ("gap_sigmoid_0p5", "gap_dpo_mild"),
               ("mean_len_dpo", "mean_len_dpo_mild")],
    "04_ppo": [("kl_end", "kl_start"), ("heldout_acc_before", "heldout_acc_after")],
    "05_grpo": [("heldout_acc_after", "heldout_acc_before"), ("greedy_acc_after", "greedy_acc_before"),
                ("reward_end", "reward_start"), ("entropy_start", "entropy_end"),
                ("frac_zero_std_end", "frac_zero_std_start")],
    # the DAPO ladder's end beats its start, and dynamic sampling adds accuracy over clip-higher alone
    "06_grpo_variants": [("heldout_acc_dapo", "heldout_acc_grpo"), ("heldout_acc_dynamic", "heldout_acc_clip_higher"),
                         ("heldout_acc_token_level", "heldout_acc_grpo"), ("clip_ratio_gspo", "clip_ratio_grpo"),
                         ("clip_ratio_rloo", "clip_ratio_grpo")],
    "07_test_time_compute": [("best_of_16_oracle", "pass_at_1"), ("majority_of_16", "pass_at_1"),
                             ("grpo_pass_at_1", "pass_at_1"), ("pass_at_1", "best_of_16_rm"),
                             ("majority_of_16", "weighted_of_16"), ("weighted_of_16", "best_of_16_rm"),
                             ("oracle_gain_level3", "oracle_gain_level2"), ("oracle_gain_level2", "oracle_gain_level1"),
                             ("majority_vote_gain_level3", "majority_vote_gain_level2"),
                             ("majority_vote_gain_level2", "majority_vote_gain_level1")],
    "08_tools": [("kto_heldout_pref_acc", "orpo_heldout_pref_acc"), ("orpo_policy_pref_acc", "orpo_heldout_pref_acc"),
                 ("heldout_acc_sft", "heldout_acc_kto"), ("heldout_acc_sft", "heldout_acc_orpo"),
                 ("heldout_acc_kto", "heldout_acc_dpo"), ("heldout_acc_orpo", "heldout_acc_dpo")],
}


def _each_script():
    """Parametrize over the notebooks' scripts; a single skipped case while there are none."""
    if not SCRIPTS:
        return [pytest.param(None, marks=pytest.mark.skip(reason="notebooks/ has no NN_name.py notebooks yet"))]
    return [pytest.param(script, id=script.stem) for script in SCRIPTS]


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _parse(source: str, where: str) -> ast.Module:
    """Parse a code cell; IPython magics (%pip, !ls) become comments."""
    lines = ["# " + line if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError as error:
        pytest.fail(f"{where}: cannot parse the cell: {error}")


def _bound_names(tree: ast.AST) -> set[str]:
    """Names a cell binds at module level: assignments (also inside if/for/with/try), defs, imports."""
    names: set[str] = set()
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(child.name)  # its body is another scope
        elif isinstance(child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue  # own scope
        elif isinstance(child, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in child.names)
        elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
            names.add(child.id)
        else:
            names |= _bound_names(child)
    return names


def _calls(tree: ast.AST, dotted_suffix: str) -> bool:
    """Whether `tree` calls something whose dotted name ends with `dotted_suffix` ("metrics.show")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name == dotted_suffix or name.endswith("." + dotted_suffix):
                return True
    return False


def _exercises(nb) -> list[tuple[int, int | None, int | None]]:
    """(solution, check, wrong) indices into the code cells; None where the cell is missing."""
    code = _code_cells(nb)
    triples = []
    for i, cell in enumerate(code):
        if "solution" in _tags(cell):
            check = i + 1 if i + 1 < len(code) and "check" in _tags(code[i + 1]) else None
            wrong = i + 2 if check is not None and i + 2 < len(code) and "wrong" in _tags(code[i + 2]) else None
            triples.append((i, check, wrong))
    return triples


def _output_texts(output) -> list[str]:
    if output.output_type == "stream":
        return [output.text]
    if output.output_type == "error":
        return [output.ename, output.evalue, *output.traceback]
    return [data for mime, data in output.get("data", {}).items() if mime.startswith("text/") and isinstance(data, str)]


# --- a. pairing -----------------------------------------------------------------------------

@pytest.mark.parametrize("script", _each_script())
def test_script_and_notebook_have_the_same_cells(script):
    ipynb = script.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `python -m labkit.course {script.stem}`"
    from_script, from_ipynb = jupytext.read(script), jupytext.read(ipynb)
    cells_py = [(c.cell_type, c.source, _tags(c)) for c in from_script.cells]
    cells_nb = [(c.cell_type, c.source, _tags(c)) for c in from_ipynb.cells]
    for i, (a, b) in enumerate(zip(cells_py, cells_nb)):
        assert a == b, (f"{script.stem}: cell {i} differs between .py and .ipynb (edit one, rebuild the other)."
                        f"\n.py:    {a}\n.ipynb: {b}")
    assert len(cells_py) == len(cells_nb), (
        f"{script.stem}: {len(cells_py)} cells in .py but {len(cells_nb)} in .ipynb (edit one, rebuild the other)")


def test_every_notebook_has_a_script():
    ipynbs = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")) if NOTEBOOKS_DIR.is_dir() else []
    if not ipynbs and not SCRIPTS:
        pytest.skip("notebooks/ has no notebooks yet")
    orphans = [p.name for p in ipynbs if not p.with_suffix(".py").exists()]
    assert not orphans, f"notebooks without their percent script (the source of truth): {orphans}"


# --- b. shape -------------------------------------------------------------------------------

@pytest.mark.parametrize("script", _each_script())
def test_setup_cell_then_parameters_cell(script):
    setup, first = _code_cells(jupytext.read(script))[:2]
    assert _tags(setup) == [SETUP_TAG], (f"{script.name}: the first code cell must be the Colab setup cell "
                                         f"tagged `{SETUP_TAG}` (`python -m labkit.colab badges` adds it)")
    assert "parameters" in _tags(first), f"{script.name}: the second code cell must be tagged `parameters`"
    bound = _bound_names(_parse(first.source, f"{script.name} parameters cell"))
    missing = {"PROFILE", "SEED"} - bound
    assert not missing, f"{script.name}: the parameters cell must assign {sorted(missing)}"
    # papermill reads the cell line by line (`lab.py course -p NAME=VALUE`, `papermill --help-notebook`);
    # a comment it cannot parse (an "=" in it, say) is a warning on every run and a name it does not list.
    listed = {p.name for p in PythonTranslator.inspect(first)}
    assert listed == bound, f"{script.name}: papermill reads {sorted(listed)} from the parameters cell, not {sorted(bound)}"


@pytest.mark.parametrize("script", _each_script())
def test_last_code_cell_shows_metrics(script):
    last = _code_cells(jupytext.read(script))[-1]
    assert _calls(_parse(last.source, f"{script.name} last cell"), "metrics.show"), (
        f"{script.name}: the last code cell must call metrics.show()")


@pytest.mark.parametrize("script", _each_script())
def test_committed_notebook_is_executed_and_path_free(script):
    ipynb = script.with_suffix(".ipynb")
    if not ipynb.exists():
        pytest.fail(f"{ipynb.name} is missing")
    nb = nbformat.read(ipynb, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"{ipynb.name}: cell {i} was not executed; rerun the notebook"
        for output in cell.outputs:
            assert output.output_type != "error", f"{ipynb.name}: cell {i} has an error output"
            for text in _output_texts(output):
                found = MACHINE_PATH.search(text)
                assert found is None, (f"{ipynb.name}: cell {i} output contains the machine path {found.group()!r}; "
                                       "rerun it with `python -m labkit.course`, which sanitizes outputs")


# --- c. exercises -----------------------------------------------------------------------------

@pytest.mark.parametrize("script", _each_script())
def test_every_solution_has_check_and_wrong_cells(script):
    nb = jupytext.read(script)
    code = _code_cells(nb)
    triples = _exercises(nb)
    assert triples, f"{script.name}: no cell tagged `solution` (every lab has at least one exercise)"
    for solution, check, wrong in triples:
        where = f"{script.name}, code cell {solution}"
        assert check is not None, f"{where}: the next code cell after a `solution` cell must be tagged `check`"
        assert wrong is not None, f"{where}: the code cell after the `check` cell must be tagged `wrong`"
        wrong_tree = _parse(code[wrong].source, f"{where} (wrong)")
        assert _calls(wrong_tree, "expect_failure"), f"{where}: the `wrong` cell must call exercises.expect_failure"
        clobbered = _bound_names(wrong_tree) & _bound_names(_parse(code[solution].source, where))
        assert not clobbered, (f"{where}: the `wrong` cell rebinds {sorted(clobbered)}, which later cells would then "
                               "use; pass the wrong answer to the check function instead")
    paired = {i for triple in triples for i in triple}
    strays = [i for i, cell in enumerate(code) if {"check", "wrong"} & set(_tags(cell)) and i not in paired]
    assert not strays, f"{script.name}: code cells {strays} are tagged check/wrong but follow no `solution` cell"


@pytest.mark.parametrize("script", _each_script())
def test_student_copy_hides_solutions(script, tmp_path):
    original = jupytext.read(script)
    make_student_copy(script, tmp_path / "student.ipynb")
    copy = nbformat.read(tmp_path / "student.ipynb", as_version=4)
    assert not [c for c in copy.cells if "wrong" in _tags(c)]
    assert all(not c.outputs for c in _code_cells(copy))
    solutions = [c for c in _code_cells(original) if "solution" in _tags(c)]
    stubs = [c for c in _code_cells(copy) if "solution" in _tags(c)]
    assert len(stubs) == len(solutions)
    for solution, stub in zip(solutions, stubs):
        assert stub.source.rstrip().endswith(STUB)
        lines = solution.source.splitlines()
        marker = next(i for i, line in enumerate(lines) if line.strip().startswith(MARKERS))
        hidden = [line.strip() for line in lines[marker + 1:] if line.strip() and not line.strip().startswith("#")]
        leaked = [line for line in hidden if line in {s.strip() for s in stub.source.splitlines()}]
        assert not leaked, f"{script.name}: solution lines left in the student copy: {leaked}"


def _code_line(line: str) -> str:
    """A code line without its comment, attribute owners (`config.gamma` -> `gamma`) and spacing."""
    return " ".join(re.sub(r"\b\w+\.(?=[A-Za-z_])", "", line.split("#")[0]).split())


@pytest.mark.parametrize("script", _each_script())
def test_student_copy_shows_no_solution_elsewhere(script, tmp_path):
    """A hidden solution line must not stand in another cell of the student copy (a demonstration
    that spells out the same code gives the answer away). Short lines (return x, a call) are allowed."""
    make_student_copy(script, tmp_path / "student.ipynb")
    copy = nbformat.read(tmp_path / "student.ipynb", as_version=4)
    shown = {_code_line(line) for cell in _code_cells(copy) for line in cell.source.splitlines()}
    leaks = []
    for cell in _code_cells(jupytext.read(script)):
        if "solution" not in _tags(cell):
            continue
        lines = cell.source.splitlines()
        marker = next(i for i, line in enumerate(lines) if line.strip().startswith(MARKERS))
        leaks += [code for code in map(_code_line, lines[marker + 1:]) if len(code) >= 24 and code in shown]
    assert not leaks, f"{script.name}: solution code shown elsewhere in the student copy: {leaks}"


# --- d. execution -----------------------------------------------------------------------------

def metric_bounds(notebook: str, name: str) -> tuple[float, float] | None:
    """The range a re-run's metric must fall in: the spread measured over seeds and CPU kernels
    (benchmarks/spread.json), widened by a quarter of its width; None if it was not measured."""
    measured = SPREAD.get(notebook, {}).get(name)
    if measured is None:
        return None
    low, high = measured["min"], measured["max"]
    pad = 0.25 * (high - low) + 1e-9 * max(1.0, abs(high))
    return low - pad, high + pad


def _numeric(value) -> bool:
    return isinstance(value, (int, float))


def _timing(name: str) -> bool:
    return name.endswith("_seconds")


@pytest.mark.notebook
@pytest.mark.parametrize("script", _each_script())
def test_notebook_runs_on_cpu(script, tmp_path):
    """Execute the notebook once (papermill, as `lab.py course` does) and check that one run:
    status, headline metrics and thresholds; marked outputs equal to the committed notebook's;
    every metric the committed notebook recorded reproduced within its measured spread."""
    with contextlib.redirect_stdout(io.StringIO()) as progress:
        [record] = run_notebooks([script.stem], profile="cpu", out_dir=tmp_path, timeout=NOTEBOOK_TIMEOUT_S,
                                 notebooks_dir=NOTEBOOKS_DIR)
    executed = tmp_path / f"{script.stem}.ipynb"
    assert record["status"] == "ok", f"{script.stem} failed: {record['error']} (see {executed})"
    got = {k: float("nan") if v is None else v for k, v in record["metrics"].items()}  # NaN is stored as null
    missing = [name for name in EXPECTED_METRICS.get(script.stem, []) if name not in got]
    assert not missing, f"{script.stem} did not record {missing}; recorded {got}"
    for name, minimum in MIN_VALUES.get(script.stem, {}).items():
        assert got[name] >= minimum, f"{script.stem}: {name}={got[name]} < {minimum}"
    for larger, smaller in MUST_EXCEED.get(script.stem, []):
        assert got[larger] > got[smaller], f"{script.stem}: {larger}={got[larger]} <= {smaller}={got[smaller]}"
    assert progress.getvalue().startswith(f"[1/1] {script.stem} ")

    committed = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    differences = compare_notebooks(committed, nbformat.read(executed, as_version=4))
    assert not differences, f"{script.stem}: marked outputs differ from the committed notebook: {differences}"
    outside = []
    for name, before in committed_metrics(committed).items():
        if _timing(name):
            continue
        if not _numeric(before):
            if got.get(name) != before:
                outside.append(f"{name}={got.get(name)!r} (committed {before!r})")
            continue
        bounds = metric_bounds(script.stem, name)
        if bounds is None or not bounds[0] <= got.get(name, float("nan")) <= bounds[1]:
            outside.append(f"{name}={got.get(name)} outside {bounds} (committed {before})")
    assert not outside, (f"{script.stem}: metrics not reproduced within the measured spread "
                         f"(benchmarks/spread.md): {outside}")


# --- e. claims and the measured spread (fast) ------------------------------------------------

@pytest.mark.parametrize("script", _each_script())
def test_committed_metrics_lie_in_the_measured_spread(script):
    """The spread table was measured for the committed notebook: every numeric metric it records
    was measured, and its committed value lies in the measured range."""
    committed = committed_metrics(nbformat.read(script.with_suffix(".ipynb"), as_version=4))
    assert committed, f"{script.stem}.ipynb records no metrics in its metadata; rerun `python -m labkit.course`"
    problems = []
    for name, value in committed.items():
        if _timing(name) or not _numeric(value):
            continue
        measured = SPREAD.get(script.stem, {}).get(name)
        if measured is None:
            problems.append(f"{name} was not measured")
        elif not measured["min"] - 1e-9 <= value <= measured["max"] + 1e-9:
            problems.append(f"{name}={value} outside the measured [{measured['min']}, {measured['max']}]")
    assert not problems, (f"{script.stem}: {problems}; re-measure with `python benchmarks/spread.py run` "
                          "and `python benchmarks/spread.py table`")


def test_stated_bars_held_in_every_measured_run():
    for notebook, bars in EVERY_RUN.items():
        for name, bar in bars.items():
            values = SPREAD[notebook][name]["values"]
            assert len(values) >= 6 and all(v >= bar for v in values.values()), (notebook, name, values)


def test_thresholds_sit_inside_the_measured_spread():
    """Every MIN_VALUES threshold lies below the lowest value measured over seeds and CPU kernels,
    with room to spare, and every MUST_EXCEED ordering held in every measured run."""
    problems = []
    for notebook, minimums in MIN_VALUES.items():
        for name, minimum in minimums.items():
            measured = SPREAD[notebook][name]
            room = max(0.25 * (measured["max"] - measured["min"]), 0.02 * abs(measured["min"]))
            if not minimum <= measured["min"] - room:
                problems.append(f"{notebook} {name} >= {minimum}: measured min {measured['min']} (room {room:.3g})")
    for notebook, pairs in MUST_EXCEED.items():
        for larger, smaller in pairs:
            runs = SPREAD[notebook][larger]["values"]
            failed = [run for run, value in runs.items() if not value > SPREAD[notebook][smaller]["values"][run]]
            if failed:
                problems.append(f"{notebook} {larger} > {smaller} failed in runs {failed}")
    assert not problems, problems
