"""Training curves from a HF/TRL trainer's ``state.log_history``, with Chinese labels.

``trainer.state.log_history`` is a list of dicts, one per logging event, e.g.
``{"loss": 0.01, "reward": 0.5, "kl": 0.002, "step": 10, "epoch": 0.1}``; eval
events use ``eval_``-prefixed keys and the last entry is a run summary
(``train_runtime``, ``train_loss``, ``total_flos``, ...).

Chinese text needs a CJK font, which neither Colab nor CI has. labkit ships a
1.6 MB subset of Noto Sans CJK SC (SIL OFL 1.1) as ``labkit/fonts/
LabKitSansSC-Regular.otf``; ``setup_chinese_font`` registers it with matplotlib.

The plotting functions create pyplot figures (shown by Jupyter's inline backend
at the end of a cell) and return them; write ``fig = plot_metrics(...)`` so a
notebook does not show the figure twice.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from matplotlib import font_manager
from matplotlib.figure import Figure

FONT_PATH = Path(__file__).parent / "fonts" / "LabKitSansSC-Regular.otf"
X_LABEL = "训练步 (step)"
SAVE_DPI = 120

# Course-level name -> key that TRL 1.16 / transformers 5.23 writes into log_history.
# Eval entries carry the same keys with an "eval_" prefix ("eval_reward", ...).
METRIC_ALIASES: dict[str, str] = {
    # transformers/trainer.py (_maybe_log_save_evaluate)
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "learning_rate",
    # trl/trainer/grpo_trainer.py (_generate_and_score_completions)
    "reward": "reward",
    "reward_std": "reward_std",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "reward_per_func": "rewards/*/mean",  # one "rewards/<reward_func_name>/mean" per reward function
    "completion_length": "completions/mean_length",
    "truncated_frac": "completions/clipped_ratio",  # share of completions cut at max_completion_length
    # trl/trainer/grpo_trainer.py (_compute_loss); "kl" only when beta != 0
    "kl": "kl",
    "entropy": "entropy",  # also sft_trainer.py and dpo_trainer.py
    "clip_ratio": "clip_ratio/region_mean",
    # trl/trainer/dpo_trainer.py (_compute_loss)
    "chosen_reward": "rewards/chosen",
    "rejected_reward": "rewards/rejected",
    "reward_margin": "rewards/margins",
    "preference_accuracy": "rewards/accuracies",
    # trl/trainer/sft_trainer.py (compute_loss); dpo_trainer.py logs it too
    "token_accuracy": "mean_token_accuracy",
    "num_tokens": "num_tokens",
    # trl/trainer/reward_trainer.py (compute_loss)
    "rm_accuracy": "accuracy",
    "rm_margin": "margin",
    "rm_mean_reward": "mean_reward",
}

# Y-axis label for a raw key (without "eval_"), first matching pattern wins.
_YLABEL_RULES: list[tuple[str, str]] = [
    ("logps/*", "序列对数概率 log-prob (nats)"),
    ("*value_loss", "价值损失 value loss (reward²)"),
    ("*loss", "损失 loss (nats)"),
    ("kl", "KL 散度 (nats)"),
    ("approx_kl", "KL 散度 (nats)"),
    ("entropy", "熵 entropy (nats)"),
    ("completions/*length", "长度 (tokens)"),
    ("response_length", "长度 (tokens)"),
    ("score", "奖励模型分数 RM score"),
    ("num_tokens", "tokens"),
    ("reward_std", "奖励标准差 reward std"),
    ("rewards/accuracies", "准确率 accuracy"),
    ("*accuracy", "准确率 accuracy"),
    ("rewards/*/std", "奖励标准差 reward std"),
    # before "*reward*": frac_reward_zero_std is a share of groups, wrong_answer_length a length
    ("*ratio*", "比例 fraction"),
    ("*frac*", "比例 fraction"),
    ("*length*", "长度 (tokens)"),
    ("rewards/accuracy*", "正确率 accuracy"),
    ("*reward*", "奖励 reward"),
    ("*margin*", "奖励差 margin"),
    ("format", "比例 fraction"),
    ("value_mean", "价值 value (reward)"),
    ("learning_rate", "学习率 learning rate"),
    ("grad_norm", "梯度范数 grad norm"),
]

_LINE_STYLES = ("-", "--", ":", "-.")

# End-of-training summary entry (Trainer._finalize_training); not a curve.
_SUMMARY_KEYS = ("train_loss", "total_flos")


class PlottingError(ValueError):
    """Input that the plotting helpers cannot draw (wrong type, bad option)."""


class MetricNotFoundError(KeyError):
    """A requested metric is in none of the runs' log histories."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


def setup_chinese_font() -> str:
    """Register the bundled CJK font with matplotlib and make it the default sans-serif.

    Safe to call many times. Glyphs the subset lacks fall back to DejaVu Sans.
    Returns the font's family name.
    """
    if not FONT_PATH.is_file():
        raise FileNotFoundError(
            f"labkit's CJK font is missing at {FONT_PATH}; reinstall labkit "
            "(the package data labkit/fonts/*.otf must be installed)."
        )
    family = font_manager.FontProperties(fname=FONT_PATH).get_name()
    registered = {entry.name for entry in font_manager.fontManager.ttflist}
    if family not in registered:
        font_manager.fontManager.addfont(str(FONT_PATH))
    rc = matplotlib.rcParams
    rc["font.sans-serif"] = [family] + [f for f in rc["font.sans-serif"] if f != family]
    rc["font.family"] = ["sans-serif", "DejaVu Sans"]  # 2nd entry = per-glyph fallback
    rc["axes.unicode_minus"] = False
    return family


def history_frame(log_history: Sequence[Mapping]) -> dict[str, list[tuple[int, float]]]:
    """Turn a log_history into {metric: [(step, value), ...]} in logging order.

    Skips non-numeric and NaN values, the "step" key itself and the final
    training summary entry (the one holding "train_loss"/"total_flos").
    """
    if isinstance(log_history, (str, bytes, Mapping)) or not isinstance(log_history, Sequence):
        raise PlottingError(
            f"log_history must be a list of dicts (trainer.state.log_history), got {type(log_history).__name__}."
        )
    series: dict[str, list[tuple[int, float]]] = {}
    for i, entry in enumerate(log_history):
        if not isinstance(entry, Mapping) or "step" not in entry:
            raise PlottingError(f"log_history[{i}] must be a dict with a 'step' key, got {entry!r}.")
        if any(key in entry for key in _SUMMARY_KEYS):
            continue
        for key, value in entry.items():
            if key == "step" or not _is_number(value):
                continue
            series.setdefault(key, []).append((int(entry["step"]), float(value)))
    return series


def resolve_metric(name: str, available: Iterable[str]) -> list[str]:
    """Map an alias, raw key or glob pattern ("rewards/*/mean") to the raw keys present.

    Raises MetricNotFoundError listing the available keys when nothing matches.
    """
    available = sorted(set(available))
    if name in available:
        return [name]
    key = METRIC_ALIASES.get(name, name)
    if name.startswith("eval_") and name[5:] in METRIC_ALIASES:
        key = "eval_" + METRIC_ALIASES[name[5:]]
    matches = [k for k in available if fnmatch.fnmatchcase(k, key)] if "*" in key else [key]
    matches = [k for k in matches if k in available]
    if not matches:
        shown = f"{name!r} (= {key!r})" if key != name else repr(name)
        raise MetricNotFoundError(
            f"metric {shown} is not in the log history. Available keys: {', '.join(available) or '(none)'}. "
            f"Aliases: {', '.join(sorted(METRIC_ALIASES))}."
        )
    return matches


def ema(values: Sequence[float], smooth: float) -> list[float]:
    """Exponential moving average: s[0] = x[0], s[t] = smooth * s[t-1] + (1 - smooth) * x[t]."""
    _check_smooth(smooth)
    out: list[float] = []
    for x in values:
        out.append(x if not out else smooth * out[-1] + (1 - smooth) * x)
    return out


def plot_metrics(
    runs: Sequence[Mapping] | Mapping[str, Sequence[Mapping]],
    metrics: str | Sequence[str],
    *,
    smooth: float = 0.0,
    title: str | None = None,
    save: str | Path | None = None,
    ncols: int = 3,
    baseline: str | None = None,
) -> Figure:
    """Plot metrics against step: one subplot per metric, one line per run.

    runs: one log_history, or {run_name: log_history} to compare runs.
    metrics: aliases (METRIC_ALIASES), raw keys, or glob patterns such as
    "rewards/*/mean" (one subplot per matching key); a tuple of names is one
    subplot with those metrics overlaid, e.g. ("rewards/chosen", "rewards/rejected").
    smooth: EMA factor in [0, 1); when > 0 the raw curve is drawn faintly
    and the smoothed one solid.
    baseline: a run name of `runs`; every other run is drawn as its difference
    to that run at the same steps (curves that coincide become visible).
    """
    setup_chinese_font()
    _check_smooth(smooth)
    if ncols < 1:
        raise PlottingError(f"ncols must be >= 1, got {ncols}.")
    if isinstance(metrics, str):
        metrics = [metrics]
    if not metrics:
        raise PlottingError("metrics is empty: name at least one metric, e.g. ['loss', 'reward'].")
    if isinstance(runs, Mapping):
        if not runs:
            raise PlottingError("runs is an empty dict: pass {run_name: trainer.state.log_history}.")
        frames = {str(name): history_frame(history) for name, history in runs.items()}
    else:
        frames = {"": history_frame(runs)}

    available = {key for frame in frames.values() for key in frame}
    panels: list[tuple[str, list[str]]] = []  # (panel title, raw keys drawn in it)
    for name in metrics:
        if isinstance(name, (tuple, list)):
            keys = [key for part in name for key in resolve_metric(part, available)]
            panels.append((" vs ".join(name), keys))
        else:
            panels.extend((name if name == key else f"{name} [{key}]", [key]) for key in resolve_metric(name, available))
    if baseline is not None:
        if baseline not in frames or len(frames) < 2:
            raise PlottingError(f"baseline={baseline!r} must name one of several runs, got runs {list(frames)}.")
        base = frames.pop(baseline)
        frames = {name: _difference(frame, base) for name, frame in frames.items()}

    nrows, ncols = _grid(len(panels), ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(4.5 * ncols, 3.3 * nrows), layout="constrained")
    axes = axes.ravel()
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)

    for ax, (panel_title, keys) in zip(axes, panels):
        missing = []
        for j, key in enumerate(keys):
            for i, (run_name, frame) in enumerate(frames.items()):
                if key not in frame:
                    missing.append(run_name or key)
                    continue
                steps = [step for step, _ in frame[key]]
                values = [value for _, value in frame[key]]
                marker = "o" if len(steps) == 1 else None
                # one run: a colour per metric; several runs: a colour per run, a line style per metric
                colour = f"C{(j if len(frames) == 1 else i) % 10}"
                style = _LINE_STYLES[(i // 10 + (j if len(frames) > 1 else 0)) % len(_LINE_STYLES)]
                label = " · ".join(part for part in (run_name, key if len(keys) > 1 else "") if part) or None
                if smooth > 0:
                    ax.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
                    values = ema(values, smooth)
                ax.plot(steps, values, color=colour, linestyle=style, marker=marker, label=label)
        ax.set_title(panel_title)
        ax.set_xlabel(X_LABEL)
        ylabel = _ylabel(keys[0])
        ax.set_ylabel(f"Δ vs {baseline}: {ylabel}" if baseline is not None else ylabel)
        if baseline is not None:
            ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
        if len(frames) > 1 or len(keys) > 1:
            ax.legend(fontsize="small")
        if missing:
            ax.text(0.02, 0.02, "无数据 no data: " + ", ".join(missing), transform=ax.transAxes, fontsize="small")
    if title:
        fig.suptitle(title)
    _save(fig, save)
    return fig


def plot_bars(
    values: Mapping[str, float], title: str, ylabel: str, save: str | Path | None = None,
    errors: Mapping[str, float] | None = None,
) -> Figure:
    """Bar chart of {label: value}, e.g. accuracy before/after training, values written on the bars.
    errors: {label: standard error} drawn as error bars (labels without one get none)."""
    setup_chinese_font()
    if not values:
        raise PlottingError("values is empty: pass e.g. {'训练前': 0.31, '训练后': 0.58}.")
    bad = {k: v for k, v in values.items() if not _is_number(v)}
    if bad:
        raise PlottingError(f"plot_bars needs numeric values, got {bad!r}.")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(values) + 2), 3.5), layout="constrained")
    yerr = None
    if errors:
        bad = {k: v for k, v in errors.items() if k not in values or not _is_number(v)}
        if bad:
            raise PlottingError(f"errors must be numbers for labels in values, got {bad!r}.")
        yerr = [float(errors.get(k, 0.0)) for k in values]
    bars = ax.bar(list(values), [float(v) for v in values.values()], color=[f"C{i % 10}" for i in range(len(values))],
                  yerr=yerr, capsize=4 if yerr else 0)
    ax.bar_label(bars, fmt="%.3g", padding=2)
    if len(values) > 6:
        ax.tick_params(axis="x", labelrotation=30)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, save)
    return fig


def plot_grouped_bars(
    groups: Mapping[str, Mapping[str, float]],
    title: str,
    ylabel: str,
    *,
    xlabel: str = "",
    errors: Mapping[str, Mapping[str, float]] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Bars clustered by group, one colour per series with a legend, values written on the bars.

    groups: {group: {series: value}}, e.g. {"难度 1": {"SFT": 0.99, "DPO": 0.52}, "难度 2": {...}};
    a series missing from a group leaves a gap. errors: the same shape, standard errors as error bars.
    """
    setup_chinese_font()
    if not groups or not any(groups.values()):
        raise PlottingError("groups is empty: pass e.g. {'难度 1': {'SFT': 0.9, 'DPO': 0.5}}.")
    bad = {(g, k): v for g, row in groups.items() for k, v in row.items() if not _is_number(v)}
    if bad:
        raise PlottingError(f"plot_grouped_bars needs numeric values, got {bad!r}.")
    errors = errors or {}
    bad = {(g, k): v for g, row in errors.items() for k, v in row.items()
           if k not in groups.get(g, {}) or not _is_number(v)}
    if bad:
        raise PlottingError(f"errors must be numbers for (group, series) pairs in groups, got {bad!r}.")
    series = list(dict.fromkeys(k for row in groups.values() for k in row))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(groups) * len(series) + 2.5), 3.6), layout="constrained")
    for j, name in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i, row in enumerate(groups.values()) if name in row]
        ys = [float(row[name]) for row in groups.values() if name in row]
        yerr = [float(errors.get(g, {}).get(name, 0.0)) for g, row in groups.items() if name in row]
        bars = ax.bar(xs, ys, width=width, color=f"C{j % 10}", label=name,
                      yerr=yerr if any(yerr) else None, capsize=3 if any(yerr) else 0)
        ax.bar_label(bars, fmt="%.3g", padding=2, fontsize="small")
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, save)
    return fig


def plot_twin(
    xs: Sequence[float],
    left: Mapping[str, Sequence[float]],
    right: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    left_label: str,
    right_label: str,
    save: str | Path | None = None,
) -> Figure:
    """Two quantities on different scales against one x: `left` lines on the left y axis (solid),
    `right` lines on the right y axis (dashed), one legend; e.g. RM score vs exact accuracy per step."""
    setup_chinese_font()
    if not left or not right:
        raise PlottingError("plot_twin needs at least one line on each side: left={'RM': [...]}, right={...}.")
    for label, ys in {**left, **right}.items():
        if len(ys) != len(xs) or not xs:
            raise PlottingError(f"line {label!r}: needs {len(xs)} values (one per x), got {len(ys)}.")
        bad = [v for v in [*xs, *ys] if not _is_number(v)]
        if bad:
            raise PlottingError(f"line {label!r}: non-numeric or NaN values, e.g. {bad[:3]!r}.")
    fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    other = ax.twinx()
    handles = []
    for i, (label, ys) in enumerate(left.items()):
        handles += ax.plot(list(xs), list(ys), color=f"C{i}", marker="o", markersize=3, label=label)
    for i, (label, ys) in enumerate(right.items(), start=len(left)):
        handles += other.plot(list(xs), list(ys), color=f"C{i}", linestyle="--", marker="s", markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(left_label)
    other.set_ylabel(right_label)
    ax.grid(alpha=0.3)
    # below the axes: on twin axes any spot inside can cover a line of the other scale
    fig.legend(handles=handles, fontsize="small", loc="outside lower center", ncols=min(len(handles), 3))
    _save(fig, save)
    return fig


def plot_curves(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    title: str,
    xlabel: str | Sequence[str],
    ylabel: str,
    *,
    log2_x: bool = False,
    dashed: Iterable[str] = (),
    ncols: int = 3,
    save: str | Path | None = None,
) -> Figure:
    """Lines with markers: one subplot per panel, {label: (xs, ys)} per panel; a label keeps its
    colour across panels, and a one-point "line" is drawn as a larger marker.

    xlabel: one label for every panel, or one per panel. log2_x: a base-2 log x axis (for
    N = 1, 2, 4, ... samples, or tokens that double). dashed: labels drawn as dashed lines
    (e.g. a reference curve that another one lies on).
    """
    setup_chinese_font()
    if not panels or not all(panels.values()):
        raise PlottingError("panels is empty: pass {'panel title': {'label': ([x...], [y...])}}.")
    if ncols < 1:
        raise PlottingError(f"ncols must be >= 1, got {ncols}.")
    for panel, lines in panels.items():
        for label, (xs, ys) in lines.items():
            if len(xs) != len(ys) or not xs:
                raise PlottingError(f"panel {panel!r}, line {label!r}: xs and ys must be non-empty and "
                                    f"equally long, got {len(xs)} and {len(ys)}.")
            bad = [v for v in [*xs, *ys] if not _is_number(v)] + [x for x in xs if log2_x and _is_number(x) and x <= 0]
            if bad:
                raise PlottingError(f"panel {panel!r}, line {label!r}: non-numeric or NaN values "
                                    f"(or x <= 0 on a log axis), e.g. {bad[:3]!r}.")
    xlabels = [xlabel] * len(panels) if isinstance(xlabel, str) else list(xlabel)
    if len(xlabels) != len(panels):
        raise PlottingError(f"got {len(xlabels)} x labels for {len(panels)} panels.")
    dashed = set(dashed)
    colours: dict[str, str] = {}
    for lines in panels.values():
        for label in lines:
            colours.setdefault(label, f"C{len(colours) % 10}")
    nrows, ncols = _grid(len(panels), ncols)
    legend_room = 2.2 if any(len(lines) > 5 for lines in panels.values()) else 0.0
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(4.8 * ncols + legend_room, 3.6 * nrows),
                             layout="constrained")
    axes = axes.ravel()
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    for ax, (panel, lines), panel_xlabel in zip(axes, panels.items(), xlabels):
        for label, (xs, ys) in lines.items():
            single = len(xs) == 1
            style = "none" if single else "--" if label in dashed else "-"
            ax.plot(list(xs), list(ys), marker="*" if single else "o", markersize=12 if single else 4,
                    linestyle=style, color=colours[label], label=label)
        if log2_x:
            ax.set_xscale("log", base=2)
        ax.set_title(panel)
        ax.set_xlabel(panel_xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 5:  # a long legend goes beside the axes instead of over the lines
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    _save(fig, save)
    return fig


def plot_hist(
    groups: Mapping[str, Sequence[float]],
    title: str,
    xlabel: str,
    bins: int = 20,
    save: str | Path | None = None,
    density: bool = False,
) -> Figure:
    """Overlaid histograms of {group: scores} with shared bin edges, e.g. rewards before/after.
    density: normalise each group to area 1, to compare groups of different sizes."""
    setup_chinese_font()
    if not groups or not any(len(v) for v in groups.values()):
        raise PlottingError("groups is empty: pass e.g. {'训练前': [0.0, 1.0, ...], '训练后': [...]}.")
    if bins < 1:
        raise PlottingError(f"bins must be >= 1, got {bins}.")
    for name, scores in groups.items():
        bad = [v for v in scores if not _is_number(v)]
        if bad:
            raise PlottingError(f"group {name!r} has non-numeric or NaN scores, e.g. {bad[:3]!r}.")
    everything = [float(v) for scores in groups.values() for v in scores]
    low, high = min(everything), max(everything)
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    fig, ax = plt.subplots(figsize=(5.5, 3.5), layout="constrained")
    for i, (name, scores) in enumerate(groups.items()):
        ax.hist([float(v) for v in scores], bins=edges, alpha=0.5, color=f"C{i}", density=density,
                label=f"{name} (n={len(scores)})" if density else name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"密度 density (1/{xlabel.split('(')[-1].rstrip(')')})" if density and "(" in xlabel
                  else "密度 density" if density else "数量 (count)")
    ax.legend()
    _save(fig, save)
    return fig


def _grid(panels: int, ncols: int) -> tuple[int, int]:
    """(rows, columns) for `panels` subplots with at most `ncols` columns, rows filled evenly (4 -> 2x2)."""
    nrows = math.ceil(panels / min(ncols, panels))
    return nrows, math.ceil(panels / nrows)


def _difference(frame: dict[str, list[tuple[int, float]]], base: dict[str, list[tuple[int, float]]]
                ) -> dict[str, list[tuple[int, float]]]:
    """frame - base for every key, at the steps both runs logged."""
    out = {}
    for key, points in frame.items():
        reference = dict(base.get(key, []))
        diff = [(step, value - reference[step]) for step, value in points if step in reference]
        if diff:
            out[key] = diff
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def _check_smooth(smooth: float) -> None:
    if not 0.0 <= smooth < 1.0:
        raise PlottingError(f"smooth must be in [0, 1) (0 = no smoothing, 0.9 = strong), got {smooth}.")


def _ylabel(key: str) -> str:
    base = key.removeprefix("eval_")
    for pattern, label in _YLABEL_RULES:
        if fnmatch.fnmatchcase(base, pattern):
            return label
    return base


def _save(fig: Figure, save: str | Path | None) -> None:
    if save is None:
        return
    path = Path(save)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=SAVE_DPI, format="png")
