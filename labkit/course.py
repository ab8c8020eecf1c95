"""The instructor's command: execute the course notebooks and collect their headline metrics.

    python -m labkit.course                      # every notebooks/NN_*.py, in order
    python -m labkit.course 01 03_dpo --profile cpu --out-dir /tmp/run --timeout 1800
    python -m labkit.course 05 -p SEED=1         # set any parameters-cell name (value read as JSON)
    python -m labkit.course --jobs 1             # one notebook at a time (default: see default_jobs)

For each notebook the jupytext percent script `NN_name.py` (the source of truth) is turned into
a notebook and executed by papermill (kernel "python3", cwd = the notebooks directory). With a
profile other than "auto", papermill injects `PROFILE = <profile>` after the cell tagged
`parameters`, and so is every `-p NAME=VALUE`. The kernel gets LABKIT_METRICS_FILE, which
`labkit.metrics.record` fills; the metrics are also kept in the notebook metadata
`labkit.metrics`, so a later run can be compared with the committed one (`compare_notebooks`).

The executed notebook is written to `NN_name.ipynb` in the notebooks directory (or in --out-dir;
tests and CI use that so the committed files stay untouched), also when it failed, so the
traceback can be read in place. Before writing it is made diff-friendly and path-free:
- papermill's injected-parameters cell and error-marker cells are removed, so the .ipynb has
  exactly the cells of the .py (tests/test_notebooks.py checks that pairing); the parameters
  used are kept in the notebook metadata `papermill.parameters`;
- per-cell timing metadata (papermill start/end/duration, nbclient `execution`) is dropped;
  only the notebook-level `papermill.duration` (seconds, one decimal) stays;
- cell ids are derived from the cell contents (jupytext would draw random ones), and execution
  counts are renumbered 1, 2, ... over the kept cells (papermill's injected cell shifts them);
- adjacent outputs of one stream (stdout or stderr) are joined into one, as Jupyter shows them
  (how a print is split into chunks depends on timing);
- progress-bar widgets (tqdm in Jupyter) become one plain-text line with their final count, and
  the widget state with its random model ids is dropped: a bar that was closed (leave=False)
  disappears, as it does in JupyterLab, and so do the libraries' bookkeeping bars (LIBRARY_BARS:
  loading weights, tokenizing datasets);
- in all text outputs, machine paths become placeholders: site-packages -> "<site-packages>",
  the virtual environment -> "<venv>", the repository -> "<repo>", the temp dir -> "<tmp>",
  the home directory -> "~".

Re-executing a notebook on the same machine therefore writes the same .ipynb apart from timings
(papermill.duration, training speeds, elapsed times in progress lines).

A summary (one record per notebook: notebook, status, seconds, metrics, error, profile) goes to
summary.json next to the written notebooks, or to --summary. The exit status is 1 if any
notebook failed. --timeout is papermill's per-cell execution timeout in seconds.

Without a GPU, notebooks run side by side (--jobs, default `default_jobs()`): on the cpu profile each
kernel uses one thread, and each notebook's results do not depend on what runs beside it. With a
GPU they run one at a time, since they would share its memory.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import html
import json
import math
import multiprocessing
import os
import re
import site
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
import papermill
from papermill.exceptions import PapermillExecutionError

from labkit.metrics import METRICS_FILE_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "python3"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": KERNEL_NAME}
DROPPED_CELL_TAGS = ("injected-parameters", "papermill-error-cell-tag")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# Progress bars of the libraries' bookkeeping (loading weights, tokenizing a dataset): dropped from
# written notebooks, where they say nothing about the lab; labkit's own bars (training, evaluation) stay.
LIBRARY_BARS = ("Loading weights", "Tokenizing ", "Map", "Filter", "Applying chat template", "Extracting prompt",
                "Truncating ", "Adding EOS", "Generating ")

_NOTEBOOK_RE = re.compile(r"\d\d_\w+")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class CourseError(ValueError):
    """Bad input to the runner (unknown notebook name, missing directory, bad option)."""


# --- finding notebooks ------------------------------------------------------------------------

def discover(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The notebooks' percent scripts `NN_name.py`, sorted by name."""
    if not notebooks_dir.is_dir():
        raise CourseError(f"No notebooks directory at {notebooks_dir}; pass notebooks_dir / --notebooks-dir.")
    return sorted(p for p in notebooks_dir.glob("*.py") if _NOTEBOOK_RE.fullmatch(p.stem))


def resolve_names(names: list[str] | None, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Map "01", "01_sft", "01_sft.py" or "01_sft.ipynb" to scripts; None means all of them."""
    available = discover(notebooks_dir)
    if names is None:
        return available
    chosen = []
    for name in names:
        stem = Path(name).name.removesuffix(".py").removesuffix(".ipynb")  # also "notebooks/01_sft.py"
        matches = [p for p in available if p.stem == stem or p.stem.split("_", 1)[0] == stem]
        if len(matches) != 1:
            problem = "matches several notebooks" if matches else "is not a notebook"
            listing = ", ".join(p.stem for p in available) or "(none)"
            raise CourseError(f"{name!r} {problem} in {notebooks_dir}. Available: {listing}.")
        chosen.append(matches[0])
    return chosen


# --- making outputs path-free and diff-friendly -------------------------------------------------

def path_replacements(repo_root: Path) -> list[tuple[str, str]]:
    """(machine path, placeholder) pairs, longest path first so the most specific one wins."""
    pairs: dict[str, str] = {}

    def add(path: str | Path | None, placeholder: str) -> None:
        if path:
            for variant in {str(path), os.path.realpath(path)}:
                if len(variant) > 1:  # never replace "/" itself
                    pairs.setdefault(variant.rstrip(os.sep), placeholder)

    for packages in [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]:
        add(packages, "<site-packages>")
    if sys.prefix != sys.base_prefix:
        add(sys.prefix, "<venv>")
    add(repo_root, "<repo>")
    add(REPO_ROOT, "<repo>")  # where labkit itself lives (the same directory in a normal checkout)
    add(tempfile.gettempdir(), "<tmp>")
    add("/tmp", "<tmp>")
    add(Path.home(), "~")
    return sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)


def sanitize_text(text: str, replacements: list[tuple[str, str]]) -> str:
    """Replace each machine path in `text` by its placeholder, only where a whole path component
    matches ("/tmp/x" -> "<tmp>/x", but "/tmpfoo" and "/data/tmp" are left alone)."""
    for path, placeholder in replacements:
        pattern = r"(?<![\w.-])" + re.escape(path) + r"(?![\w.-])"
        text = re.sub(pattern, lambda _: placeholder, text)
    return text


def clean_notebook(nb: nbformat.NotebookNode, replacements: list[tuple[str, str]],
                   metrics: dict | None = None) -> None:
    """Drop papermill's extra cells and timing metadata, set stable ids, sanitize text outputs,
    turn progress widgets into text; keep `metrics` in the metadata (`labkit.metrics`)."""
    nb.cells = [c for c in nb.cells if not set(c.metadata.get("tags", [])) & set(DROPPED_CELL_TAGS)]
    widgets = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    seen: dict[str, int] = {}
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = _join_streams([o for o in (_widget_as_text(o, widgets) for o in cell.outputs)
                                          if o is not None])
            if cell.execution_count is not None:
                count += 1
                cell.execution_count = count
                for output in cell.outputs:
                    if output.output_type == "execute_result":
                        output.execution_count = count
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
        digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
        for output in cell.get("outputs", []):
            _sanitize_output(output, replacements)
    run = nb.metadata.get("papermill", {})
    duration = run.get("duration")
    nb.metadata["papermill"] = {
        "duration": round(duration, 1) if duration is not None else None,
        "parameters": run.get("parameters", {}),
    }
    if metrics is not None:
        nb.metadata["labkit"] = {"metrics": metrics}
    nb.metadata.setdefault("jupytext", {}).setdefault("formats", "ipynb,py:percent")
    nb.metadata["jupytext"].pop("text_representation", None)  # carries jupytext's version: noise


def _join_streams(outputs: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    """Join each run of adjacent stream outputs with the same name (stdout, stderr) into one
    (a new list; the outputs passed in are not changed)."""
    joined: list[nbformat.NotebookNode] = []
    for output in outputs:
        previous = joined[-1] if joined else None
        if (output.output_type == "stream" and previous is not None and previous.output_type == "stream"
                and previous.name == output.name):
            joined[-1] = nbformat.v4.new_output("stream", name=output.name, text=previous.text + output.text)
        else:
            joined.append(output)
    return joined


def _widget_as_text(output: nbformat.NotebookNode, widgets: dict) -> nbformat.NotebookNode | None:
    """A tqdm widget output as one text line "<description> <n>/<total>" from its final state;
    None when the widget was closed (hidden, or not in the saved state). Other outputs pass unchanged."""
    view = output.get("data", {}).get(WIDGET_VIEW) if output.output_type == "display_data" else None
    if view is None:
        return output
    box = widgets.get(view.get("model_id"))
    layout = widgets.get(str(box["state"].get("layout", "")).removeprefix("IPY_MODEL_"), {}) if box else {}
    if box is None or layout.get("state", {}).get("visibility") == "hidden":
        return None
    parts = [widgets.get(child.removeprefix("IPY_MODEL_"), {}) for child in box["state"].get("children", [])]
    text, count = [], ""
    for part in parts:
        state = part.get("state", {})
        if part.get("model_name") == "FloatProgressModel":
            count = f"{state.get('value', 0):g}/{state.get('max', 0):g}"
        elif part.get("model_name") == "HTMLModel" and not text:
            text.append(html.unescape(state.get("value", "")).replace("\u2007", " ").strip())
    line = " ".join(t for t in [*text, count] if t)
    if line.startswith(LIBRARY_BARS):
        return None
    return nbformat.v4.new_output("display_data", data={"text/plain": line})


def _sanitize_output(output: nbformat.NotebookNode, replacements: list[tuple[str, str]]) -> None:
    if output.output_type == "stream":
        output.text = sanitize_text(output.text, replacements)
    elif output.output_type == "error":
        output.evalue = sanitize_text(output.evalue, replacements)
        output.traceback = [sanitize_text(line, replacements) for line in output.traceback]
    elif output.output_type in ("display_data", "execute_result"):
        for mime, data in output.data.items():
            if mime.startswith("text/") and isinstance(data, str):
                output.data[mime] = sanitize_text(data, replacements)


# --- running --------------------------------------------------------------------------------------

def run_notebooks(
    names: list[str] | None = None,
    profile: str = "auto",
    out_dir: str | Path | None = None,
    summary_path: str | Path | None = None,
    timeout: float | None = None,
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    parameters: dict | None = None,
    jobs: int = 1,
) -> list[dict]:
    """Execute notebooks (a failure does not stop the others); return the summary records in order.

    `parameters` sets names of the parameters cell (e.g. {"SEED": 1}) in every notebook. `jobs`
    notebooks run at a time, each in its own process. Prints one progress line per notebook as it
    finishes. Writes the executed notebooks to `out_dir` (default:
    the notebooks directory itself) and the records to `summary_path` (default: summary.json in
    the directory the notebooks are written to).
    """
    if not isinstance(profile, str) or not profile:
        raise CourseError(f"profile must be a profile name such as 'cpu' or 'auto', got {profile!r}.")
    if timeout is not None and timeout <= 0:
        raise CourseError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if not isinstance(jobs, int) or jobs < 1:
        raise CourseError(f"jobs must be a whole number >= 1, got {jobs!r}.")
    notebooks_dir = Path(notebooks_dir).resolve()
    scripts = resolve_names(names, notebooks_dir)
    if not scripts:
        raise CourseError(f"No NN_name.py notebooks in {notebooks_dir}.")
    out_dir = Path(out_dir).resolve() if out_dir is not None else notebooks_dir
    summary_path = Path(summary_path) if summary_path is not None else out_dir / "summary.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    replacements = path_replacements(notebooks_dir.parent)

    width = max(len(p.stem) for p in scripts) + 3
    calls = [(script, profile, out_dir / f"{script.stem}.ipynb", timeout, replacements, parameters)
             for script in scripts]

    def report(done: int, record: dict) -> None:
        dots = "." * (width - len(record["notebook"]))
        print(f"[{done}/{len(scripts)}] {record['notebook']} {dots} {_progress_tail(record)}", flush=True)

    if jobs == 1 or len(scripts) == 1:
        records = []
        for call in calls:
            records.append(run_one(*call))
            report(len(records), records[-1])
    else:
        # Separate processes: run_one sets the kernel's environment (LABKIT_METRICS_FILE) in os.environ.
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(scripts)),
                                                    mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, *call): call[0].stem for call in calls}
            finished = {}
            for future in concurrent.futures.as_completed(futures):
                finished[futures[future]] = future.result()
                report(len(finished), finished[futures[future]])
        records = [finished[script.stem] for script in scripts]

    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return records


def run_one(script: Path, profile: str, out_path: Path, timeout: float | None,
            replacements: list[tuple[str, str]], extra: dict | None = None) -> dict:
    """Execute one percent script with papermill, write the cleaned notebook, return its record."""
    parameters = {**({} if profile == "auto" else {"PROFILE": profile}), **(extra or {})}
    error = None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labkit-course-") as tmp:
        input_path, output_path = Path(tmp, "input.ipynb"), Path(tmp, "output.ipynb")
        metrics_path = Path(tmp, "metrics.json")
        previous = os.environ.get(METRICS_FILE_ENV)
        os.environ[METRICS_FILE_ENV] = str(metrics_path)  # the kernel inherits our environment
        try:
            nb = jupytext.read(script)
            nb.metadata.setdefault("kernelspec", dict(KERNELSPEC))  # papermill needs the language
            nbformat.write(nb, input_path)
            papermill.execute_notebook(
                input_path, output_path, parameters=parameters, kernel_name=KERNEL_NAME,
                cwd=script.parent, progress_bar=False, log_output=False, execution_timeout=None if timeout is None else math.ceil(timeout),
            )
        except PapermillExecutionError as exc:
            error = f"{exc.ename}: {exc.evalue}"
        except Exception as exc:  # kernel died, timeout, unreadable script, ...: report, go on
            error = f"{type(exc).__name__}: {exc}"
        finally:
            if previous is None:
                os.environ.pop(METRICS_FILE_ENV, None)
            else:
                os.environ[METRICS_FILE_ENV] = previous
        seconds = time.perf_counter() - start
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else {}
        if output_path.exists():  # absent only if execution never started: keep the old notebook
            nb = nbformat.read(output_path, as_version=4)
            clean_notebook(nb, replacements, metrics)
            nbformat.write(nb, out_path)

    if error is not None:
        error = sanitize_text(_first_line(error), replacements)
    return {
        "notebook": script.stem,
        "status": "failed" if error is not None else "ok",
        "seconds": round(seconds, 1),
        "metrics": metrics,
        "error": error,
        "profile": profile,
        **({"parameters": extra} if extra else {}),
    }


def default_jobs() -> int:
    """How many notebooks to run at a time: 1 with a CUDA GPU (they would share its memory); else
    one per CPU core, at most 4 and at most one per 3 GiB of memory (a cpu-profile kernel peaks
    near 1.5 GiB)."""
    from labkit.hardware import detect

    hardware = detect()
    if hardware.device == "cuda":
        return 1
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): do not guess
        return 1
    return max(1, min(4, hardware.cpu_cores, int(memory_gib // 3)))


def _first_line(text: str) -> str:
    lines = [line for line in _ANSI_RE.sub("", text).splitlines() if line.strip()]
    return lines[0].strip() if lines else text.strip()


def _progress_tail(record: dict) -> str:
    seconds = f"{record['seconds']:.1f} s"
    if record["status"] != "ok":
        return f"FAILED  {seconds}  {record['error']}"
    metrics = " ".join(f"{k}={_format_value(v)}" for k, v in record["metrics"].items())
    return f"ok  {seconds}  {metrics}".rstrip()


def _format_value(value: float | int | str | None) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


# --- comparing a run with the committed notebook -------------------------------------------------

COMPARE_MARKER = "NBVAL_CHECK_OUTPUT"   # nbval's marker: this cell's output must match the committed one
COMPARE_TAG = "nbval-check-output"       # the same as a cell tag


def compared_cells(nb: nbformat.NotebookNode) -> dict[int, list[str]]:
    """{code cell index: its text outputs} for the cells marked to match the committed notebook.

    Consecutive stdout chunks are joined (how a print is split into chunks depends on timing);
    stderr (warnings, progress) is left out, as nbval does."""
    marked = {}
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        if COMPARE_MARKER not in cell.source and COMPARE_TAG not in cell.metadata.get("tags", []):
            continue
        texts: list[str] = []
        for output in _join_streams([o for o in cell.outputs if o.get("name") != "stderr"]):
            if output.output_type == "stream":
                texts.append("stdout:" + output.text)
            elif output.output_type in ("display_data", "execute_result"):
                texts.append(output.get("data", {}).get("text/plain", ""))
            elif output.output_type == "error":
                texts.append(f"{output.ename}: {output.evalue}")
        marked[i] = texts
    return marked


def compare_notebooks(committed: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> list[str]:
    """Differences between the marked cells' text outputs of two runs of one notebook (empty: same)."""
    before, after = compared_cells(committed), compared_cells(executed)
    problems = []
    if sorted(before) != sorted(after):
        problems.append(f"marked cells differ: committed {sorted(before)}, executed {sorted(after)}")
    for i in sorted(set(before) & set(after)):
        if before[i] != after[i]:
            problems.append(f"code cell {i}: committed output {before[i]!r} != executed {after[i]!r}")
    return problems


def committed_metrics(nb: nbformat.NotebookNode) -> dict:
    """The metrics the run that made `nb` recorded (kept by `clean_notebook`)."""
    return dict(nb.metadata.get("labkit", {}).get("metrics", {}))


# --- command line ---------------------------------------------------------------------------------

# Parameters that may name a local folder: an existing relative path is made absolute here, where
# it was typed (the notebooks run with the notebooks directory as their working directory).
PATH_PARAMETERS = ("MODEL_ID", "DATA_DIR")


def parse_parameters(items: list[str]) -> dict:
    """["SEED=1", "LABEL=x"] -> {"SEED": 1, "LABEL": "x"}; a value that is not JSON stays text.

    MODEL_ID / DATA_DIR naming an existing path become absolute paths.
    """
    parameters = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise CourseError(f"a parameter is NAME=VALUE with NAME a Python name, got {item!r}")
        try:
            parameters[name] = json.loads(value)
        except json.JSONDecodeError:
            parameters[name] = value
        path = parameters[name]
        if name in PATH_PARAMETERS and isinstance(path, str) and os.path.exists(os.path.expanduser(path)):
            parameters[name] = os.path.abspath(os.path.expanduser(path))
    return parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.course",
                                     description="Execute the course notebooks and collect their metrics.")
    parser.add_argument("names", nargs="*", help='notebooks to run: "01", "01_sft", "01_sft.py" (default: all)')
    parser.add_argument("--profile", default="auto", help='PROFILE passed to every notebook (default: "auto")')
    parser.add_argument("--summary", type=Path, help="where to write summary.json")
    parser.add_argument("--out-dir", type=Path, help="write executed notebooks here instead of notebooks/")
    parser.add_argument("--timeout", type=float, help="per-cell execution timeout in seconds")
    parser.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help="where the NN_name.py files are")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="set a parameters-cell name in every notebook, e.g. -p SEED=1 (VALUE as JSON, else text)")
    parser.add_argument("--jobs", type=int, help="notebooks run at a time (default: 1 with a GPU, else one per "
                                                 "core, at most 4)")
    args = parser.parse_args(argv)
    try:
        records = run_notebooks(args.names or None, profile=args.profile, out_dir=args.out_dir,
                                summary_path=args.summary, timeout=args.timeout, notebooks_dir=args.notebooks_dir,
                                parameters=parse_parameters(args.parameter),
                                jobs=args.jobs if args.jobs is not None else default_jobs())
    except CourseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = [r["notebook"] for r in records if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} of {len(records)} notebooks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
