"""Tests for labkit.plotting: log_history parsing, aliases, curves, saving, Chinese glyphs."""

from __future__ import annotations

import importlib.util
import re
import struct
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from fontTools.ttLib import TTFont  # noqa: E402
from matplotlib import font_manager  # noqa: E402

from labkit import plotting  # noqa: E402
from labkit.plotting import (  # noqa: E402
    FONT_PATH,
    METRIC_ALIASES,
    MetricNotFoundError,
    PlottingError,
    ema,
    history_frame,
    plot_bars,
    plot_curves,
    plot_hist,
    plot_metrics,
    resolve_metric,
    setup_chinese_font,
)

CHINESE_SAMPLE = "奖励 训练步 长度 熵"


def grpo_step(step: int, reward: float, kl: float) -> dict:
    """One train log entry with the keys GRPOTrainer (TRL 1.16) + Trainer write."""
    return {
        "loss": 0.01 * step,
        "grad_norm": 0.5,
        "learning_rate": 1e-6,
        "num_tokens": 1000.0 * step,
        "completions/mean_length": 100.0 + step,
        "completions/min_length": 20.0,
        "completions/max_length": 256.0,
        "completions/clipped_ratio": 0.125,
        "completions/mean_terminated_length": 90.0,
        "completions/min_terminated_length": 20.0,
        "completions/max_terminated_length": 200.0,
        "rewards/correctness_reward/mean": reward,
        "rewards/correctness_reward/std": 0.4,
        "rewards/format_reward/mean": 1.0 - reward,
        "rewards/format_reward/std": None,  # TRL logs None when a reward was NaN for the whole batch
        "reward": reward,
        "reward_std": 0.3,
        "frac_reward_zero_std": 0.25,
        "kl": kl,
        "entropy": 0.8,
        "clip_ratio/low_mean": 0.0,
        "clip_ratio/high_mean": 0.0,
        "clip_ratio/region_mean": 0.0,
        "clip_ratio/low_min": 0.0,
        "clip_ratio/high_max": 0.0,
        "step_time": 3.5,
        "epoch": step / 100,
        "step": step,
    }


def grpo_history(rewards=(0.25, 0.5, 0.75), kls=(0.001, 0.002, 0.004)) -> list[dict]:
    history = [grpo_step(i + 1, r, k) for i, (r, k) in enumerate(zip(rewards, kls))]
    history.insert(2, {
        "eval_loss": 0.02, "eval_reward": 0.4, "eval_runtime": 1.5, "eval_samples_per_second": 8.0,
        "eval_steps_per_second": 2.0, "epoch": 0.02, "step": 2,
    })  # fmt: skip
    history.append({
        "train_runtime": 12.3, "train_samples_per_second": 4.1, "train_steps_per_second": 0.2,
        "total_flos": 0.0, "train_loss": 0.02, "epoch": 0.03, "step": 3,
    })  # fmt: skip
    return history


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- history_frame


def test_history_frame_parses_grpo_log():
    frame = history_frame(grpo_history())
    assert frame["reward"] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert frame["completions/mean_length"] == [(1, 101.0), (2, 102.0), (3, 103.0)]
    assert frame["eval_reward"] == [(2, 0.4)]
    assert frame["epoch"] == [(1, 0.01), (2, 0.02), (2, 0.02), (3, 0.03)]  # summary entry skipped
    assert "rewards/format_reward/std" not in frame  # only None values
    assert "step" not in frame
    for summary_key in ("train_runtime", "train_loss", "total_flos", "train_steps_per_second"):
        assert summary_key not in frame


def test_history_frame_skips_non_numeric_and_nan():
    history = [{"loss": 1.0, "note": "hi", "flag": True, "bad": float("nan"), "step": 5}]
    assert history_frame(history) == {"loss": [(5, 1.0)]}


@pytest.mark.parametrize("bad", [{"loss": 1.0, "step": 1}, "log.json", [{"loss": 1.0}], [3.0]])
def test_history_frame_rejects_bad_input(bad):
    with pytest.raises(PlottingError, match="log_history"):
        history_frame(bad)


# ---------------------------------------------------------------- aliases


def test_aliases_resolve_to_trl_keys():
    keys = history_frame(grpo_history()).keys()
    assert resolve_metric("completion_length", keys) == ["completions/mean_length"]
    assert resolve_metric("clip_ratio", keys) == ["clip_ratio/region_mean"]
    assert resolve_metric("truncated_frac", keys) == ["completions/clipped_ratio"]
    assert resolve_metric("reward_per_func", keys) == [
        "rewards/correctness_reward/mean",
        "rewards/format_reward/mean",
    ]
    assert resolve_metric("rewards/*/std", keys) == ["rewards/correctness_reward/std"]
    assert resolve_metric("kl", keys) == ["kl"]
    assert resolve_metric("eval_reward", keys) == ["eval_reward"]
    assert resolve_metric("eval_loss", keys) == ["eval_loss"]
    assert resolve_metric("eval_completion_length", ["eval_completions/mean_length"]) == [
        "eval_completions/mean_length"
    ]


def _site_package(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed")
    return Path(spec.submodule_search_locations[0])


def test_every_alias_target_is_logged_by_trl_or_transformers():
    trl_dir = _site_package("trl") / "trainer"
    sources = [p.read_text(encoding="utf-8") for p in sorted(trl_dir.glob("*_trainer.py"))]
    sources.append((_site_package("transformers") / "trainer.py").read_text(encoding="utf-8"))
    text = "\n".join(sources)
    for alias, key in METRIC_ALIASES.items():
        # "rewards/*/mean" is logged as f"rewards/{reward_func_name}/mean"
        pattern = re.escape(f'"{key}"').replace(r"\*", r"\{\w+\}")
        assert re.search(pattern, text), f"alias {alias!r} -> {key!r} is not logged by TRL/transformers"


def test_missing_metric_error_lists_available_keys():
    history = grpo_history()
    with pytest.raises(KeyError) as info:
        plot_metrics(history, ["reward", "no_such_metric"])
    message = str(info.value)
    assert isinstance(info.value, MetricNotFoundError)
    assert "'no_such_metric'" in message
    assert "Available keys:" in message
    for key in ("reward", "completions/mean_length", "rewards/correctness_reward/mean", "eval_reward"):
        assert key in message
    assert not plt.get_fignums()  # failed before creating an empty figure


def test_missing_alias_error_names_the_trl_key():
    sft_history = [{"loss": 2.0, "mean_token_accuracy": 0.5, "entropy": 1.0, "step": 1}]
    with pytest.raises(KeyError, match=r"'completion_length' \(= 'completions/mean_length'\)") as info:
        resolve_metric("completion_length", history_frame(sft_history))
    assert "mean_token_accuracy" in str(info.value)
    with pytest.raises(KeyError, match="rewards"):
        resolve_metric("reward_per_func", history_frame(sft_history))


# ---------------------------------------------------------------- plot_metrics


def test_several_runs_one_line_per_run_per_axes():
    runs = {
        "beta=0.04": grpo_history(),
        "beta=0.1": grpo_history(rewards=(0.1, 0.2, 0.3), kls=(0.01, 0.02, 0.03)),
    }
    fig = plot_metrics(runs, ["reward", "kl", "reward_per_func", "completion_length"], title="GRPO 对比")
    axes = fig.axes
    assert len(axes) == 5  # reward_per_func expands to two reward functions
    assert [ax.get_title() for ax in axes] == [
        "reward",
        "kl",
        "reward_per_func [rewards/correctness_reward/mean]",
        "reward_per_func [rewards/format_reward/mean]",
        "completion_length [completions/mean_length]",
    ]
    for ax in axes:
        assert len(ax.lines) == 2
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["beta=0.04", "beta=0.1"]
        assert ax.get_xlabel() == "训练步 (step)"
        assert ax.get_ylabel()
    assert list(axes[0].lines[1].get_xdata()) == [1, 2, 3]
    assert list(axes[0].lines[1].get_ydata()) == [0.1, 0.2, 0.3]
    assert "nats" in axes[1].get_ylabel()
    assert "tokens" in axes[4].get_ylabel()
    assert fig.get_suptitle() == "GRPO 对比"


def test_single_run_has_no_legend_and_grid_shape():
    fig = plot_metrics(grpo_history(), ["loss", "reward", "entropy", "kl"], ncols=3)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_legend() is None
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 2)  # balanced: no empty axes
    assert "nats" in fig.axes[0].get_ylabel() and "nats" in fig.axes[2].get_ylabel()


def test_grid_is_balanced():
    from labkit.plotting import _grid

    assert [_grid(n, 3) for n in (1, 2, 3, 4, 5, 6, 7)] == [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (2, 3), (3, 3)]


def test_tuple_panel_overlays_metrics():
    history = [{"step": s, "rewards/chosen": -0.1 * s, "rewards/rejected": -0.3 * s, "rewards/margins": 0.2 * s}
               for s in (1, 2, 3)]
    fig = plot_metrics(history, [("rewards/chosen", "rewards/rejected"), "rewards/margins"])
    assert len(fig.axes) == 2
    first = fig.axes[0]
    assert len(first.lines) == 2
    assert [t.get_text() for t in first.get_legend().get_texts()] == ["rewards/chosen", "rewards/rejected"]
    assert first.lines[0].get_color() != first.lines[1].get_color()
    assert list(first.lines[1].get_ydata()) == pytest.approx([-0.3, -0.6, -0.9])
    two = plot_metrics({"a": history, "b": history}, [("rewards/chosen", "rewards/rejected")])
    ax = two.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "a · rewards/chosen", "b · rewards/chosen", "a · rewards/rejected", "b · rewards/rejected"]
    assert ax.lines[0].get_color() == ax.lines[2].get_color() and ax.lines[0].get_linestyle() != ax.lines[2].get_linestyle()


def test_baseline_draws_differences():
    base = [{"step": s, "entropy": 0.5} for s in (1, 2, 3)]
    other = [{"step": s, "entropy": 0.5 + 0.01 * s} for s in (1, 2, 4)]
    fig = plot_metrics({"grpo": base, "dapo": other}, ["entropy"], baseline="grpo")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines if not line.get_label().startswith("_")] == ["dapo"]
    assert list(ax.lines[0].get_xdata()) == [1, 2]  # only steps both runs logged
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.01, 0.02])
    assert ax.get_ylabel().startswith("Δ vs grpo")
    with pytest.raises(PlottingError, match="baseline"):
        plot_metrics({"grpo": base, "dapo": other}, ["entropy"], baseline="ppo")


def test_grouped_bars_colour_is_the_series():
    from labkit.plotting import plot_grouped_bars

    fig = plot_grouped_bars({"难度 1": {"SFT": 0.9, "DPO": 0.5}, "难度 2": {"SFT": 0.8, "DPO": 0.4}},
                            title="t / t", ylabel="准确率 (0-1)", errors={"难度 1": {"SFT": 0.02}})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SFT", "DPO"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["难度 1", "难度 2"]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.4, 0.5, 0.8, 0.9]
    colours = {tuple(p.get_facecolor()) for p in ax.patches}
    assert len(colours) == 2
    with pytest.raises(PlottingError, match="numeric"):
        plot_grouped_bars({"a": {"x": "high"}}, title="t", ylabel="y")
    with pytest.raises(PlottingError, match="errors"):
        plot_grouped_bars({"a": {"x": 1.0}}, title="t", ylabel="y", errors={"a": {"y": 0.1}})


def test_twin_axes_and_density():
    from labkit.plotting import plot_twin

    fig = plot_twin([1, 2, 3], {"RM score": [1.0, 2.0, 3.0]}, {"accuracy": [0.5, 0.5, 0.4]}, title="t / t",
                    xlabel="step", left_label="RM 分数", right_label="准确率 (0-1)")
    left, right = fig.axes
    assert left.get_ylabel() == "RM 分数" and right.get_ylabel() == "准确率 (0-1)"
    assert left.get_legend() is None and right.get_legend() is None   # one legend below the axes
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["RM score", "accuracy"]
    with pytest.raises(PlottingError, match="needs 3 values"):
        plot_twin([1, 2, 3], {"a": [1.0]}, {"b": [1.0, 2.0, 3.0]}, title="t", xlabel="x", left_label="l",
                  right_label="r")
    fig = plot_hist({"big": [0.0] * 30 + [1.0] * 10, "small": [0.0, 1.0]}, "t", "分数 (RM score)", bins=2,
                    density=True)
    ax = fig.axes[0]
    assert "密度" in ax.get_ylabel()
    big = [p.get_height() for p in ax.patches[:2]]
    assert sum(h * 0.5 for h in big) == pytest.approx(1.0)  # area 1 with bin width 0.5


def test_metric_missing_from_one_run_is_annotated():
    no_kl = [{k: v for k, v in e.items() if k != "kl"} for e in grpo_history()]
    fig = plot_metrics({"beta=0": no_kl, "beta=0.04": grpo_history()}, "kl")
    (ax,) = fig.axes
    assert len(ax.lines) == 1
    assert any("beta=0" in t.get_text() for t in ax.texts)


def test_ema_hand_examples():
    assert ema([1.0, 2.0, 3.0], 0.5) == [1.0, 1.5, 2.25]
    assert ema([0.0, 10.0, 0.0, 10.0], 0.9) == pytest.approx([0.0, 1.0, 0.9, 1.81])
    assert ema([4.0, 8.0], 0.0) == [4.0, 8.0]
    with pytest.raises(PlottingError, match="smooth"):
        ema([1.0], 1.0)


def test_smoothing_draws_raw_faint_and_smoothed_solid():
    history = [{"reward": r, "step": s} for s, r in [(1, 0.0), (2, 10.0), (3, 0.0), (4, 10.0)]]
    fig = plot_metrics({"a": history, "b": history}, "reward", smooth=0.9)
    (ax,) = fig.axes
    assert len(ax.lines) == 4  # raw + smoothed per run
    raw, smoothed = ax.lines[0], ax.lines[1]
    assert list(raw.get_ydata()) == [0.0, 10.0, 0.0, 10.0]
    assert list(smoothed.get_ydata()) == pytest.approx([0.0, 1.0, 0.9, 1.81])
    assert raw.get_alpha() < 0.5 and smoothed.get_alpha() in (None, 1.0)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    with pytest.raises(PlottingError, match="smooth"):
        plot_metrics(history, "reward", smooth=-0.1)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_save_writes_png_and_creates_parent_dirs(tmp_path):
    target = tmp_path / "figs" / "grpo" / "reward.png"
    plot_metrics(grpo_history(), "reward", save=target)
    assert target.stat().st_size > 1000
    assert _png_size(target) == (540, 396)  # figsize (4.5, 3.3) inches at dpi 120


def test_plot_bars_and_hist(tmp_path):
    fig = plot_bars({"训练前": 0.31, "训练后": 0.58}, "准确率", "accuracy", save=tmp_path / "bars.png")
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.patches] == [0.31, 0.58]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["训练前", "训练后"]
    assert (tmp_path / "bars.png").stat().st_size > 0

    fig = plot_hist({"前": [0.0, 0.0, 1.0], "后": [1.0, 1.0, 1.0, 0.5]}, "奖励分布", "奖励", bins=4)
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == 7
    assert heights[:4] == [2, 0, 0, 1] and heights[4:] == [0, 0, 1, 3]  # shared edges 0, .25, .5, .75, 1
    with pytest.raises(PlottingError):
        plot_bars({}, "t", "y")
    with pytest.raises(PlottingError):
        plot_hist({"a": [1.0, float("nan")]}, "t", "x")


def test_plot_curves_panels_colours_styles_and_labels(tmp_path):
    panels = {"vs N": {"oracle": ([1, 2, 4], [0.6, 0.8, 0.9]), "pass@k": ([1, 2, 4], [0.6, 0.8, 0.9]),
                       "greedy": ([1], [0.7])},
              "vs tokens": {"pass@k": ([30, 60, 120], [0.6, 0.8, 0.9])}}
    fig = plot_curves(panels, "Best-of-N", ["样本数 N", "tokens"], "accuracy", log2_x=True, dashed=["pass@k"],
                      save=tmp_path / "curves.png")
    left, right = fig.axes
    assert [ax.get_xlabel() for ax in (left, right)] == ["样本数 N", "tokens"]
    assert left.get_xscale() == "log" and left.get_title() == "vs N" and fig._suptitle.get_text() == "Best-of-N"
    oracle, pass_k, greedy = left.get_lines()
    assert oracle.get_linestyle() == "-" and pass_k.get_linestyle() == "--"
    assert greedy.get_linestyle() == "None" and greedy.get_marker() == "*"  # one point: a big marker
    assert right.get_lines()[0].get_color() == pass_k.get_color()  # a label keeps its colour
    assert list(oracle.get_ydata()) == [0.6, 0.8, 0.9]
    assert (tmp_path / "curves.png").stat().st_size > 0

    many = {"p": {f"line {i}": ([1, 2], [i, i + 1]) for i in range(6)}}
    fig = plot_curves(many, "t", "x", "y")
    (ax,) = fig.axes
    fig.canvas.draw()  # a legend of more than 5 lines sits to the right of the axes, not over the lines
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    assert len(ax.get_legend().get_texts()) == 6
    fig = plot_curves({"p": {"a": ([1, 2], [1, 2])}}, "t", "x", "y")
    fig.canvas.draw()
    assert fig.axes[0].get_legend().get_window_extent().x0 < fig.axes[0].get_window_extent().x1

    for bad, match in [({}, "empty"), ({"p": {}}, "empty"), ({"p": {"a": ([1, 2], [1])}}, "equally long"),
                       ({"p": {"a": ([1], [float("nan")])}}, "NaN"), ({"p": {"a": ([0, 1], [1, 2])}}, "x <= 0")]:
        with pytest.raises(PlottingError, match=match):
            plot_curves(bad, "t", "x", "y", log2_x=True)
    with pytest.raises(PlottingError, match="2 x labels for 1 panels"):
        plot_curves({"p": {"a": ([1], [1])}}, "t", ["x", "y"], "y")


# ---------------------------------------------------------------- Chinese font


def _missing_glyph_warnings(text: str) -> list[str]:
    fig, ax = plt.subplots()
    ax.set_title(text)
    ax.set_xlabel(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_setup_chinese_font_registers_bundled_font():
    family = setup_chinese_font()
    assert family == "LabKit Sans SC"
    assert setup_chinese_font() == family  # idempotent
    assert matplotlib.rcParams["font.sans-serif"][0] == family
    assert matplotlib.rcParams["font.sans-serif"].count(family) == 1
    assert matplotlib.rcParams["axes.unicode_minus"] is False
    found = font_manager.findfont(font_manager.FontProperties(family=["sans-serif"]), fallback_to_default=False)
    assert Path(found).resolve() == FONT_PATH.resolve()


def test_chinese_renders_without_missing_glyph_warnings():
    setup_chinese_font()
    assert _missing_glyph_warnings(CHINESE_SAMPLE + " reward −0.5 → ≈ ①（全角）") == []
    # The check itself works: a character outside GB2312 and DejaVu Sans is reported.
    assert _missing_glyph_warnings("𠀀")


def test_plot_metrics_with_chinese_title_has_all_glyphs():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing from font.*")
        fig = plot_metrics({"基线": grpo_history(), "新方法": grpo_history()}, ["reward", "kl"], title="奖励曲线")
        fig.canvas.draw()


def test_font_file_has_the_glyphs_and_stays_small():
    assert FONT_PATH.stat().st_size < 5_000_000
    assert (FONT_PATH.parent / "OFL.txt").is_file()
    cmap = TTFont(FONT_PATH, lazy=True).getBestCmap()
    labels = [plotting.X_LABEL, "数量 (count)", "无数据"] + [label for _, label in plotting._YLABEL_RULES]
    wanted = {c for c in CHINESE_SAMPLE + "".join(labels) if not c.isspace()}
    assert sorted(c for c in wanted if ord(c) not in cmap) == []
    # GB2312 level-1 (3,755 most common hanzi) is fully covered.
    level1 = [bytes([r, c]).decode("gb2312") for r in range(0xB0, 0xD8) for c in range(0xA1, 0xFF) if (r, c) < (0xD7, 0xFA)]
    assert len(level1) == 3755
    assert all(ord(c) in cmap for c in level1)
    assert "𠀀" not in {chr(cp) for cp in cmap}


def test_shares_and_lengths_are_not_labelled_as_rewards():
    from labkit.plotting import _ylabel

    assert _ylabel("frac_reward_zero_std") == "比例 fraction"
    assert _ylabel("rewards/wrong_answer_length/mean") == "长度 (tokens)"
    assert _ylabel("rewards/accuracy_reward/mean") == "正确率 accuracy"
    assert _ylabel("rewards/format_reward/mean") == "奖励 reward"
    assert _ylabel("logps/chosen") == _ylabel("eval_logps/rejected") == "序列对数概率 log-prob (nats)"


def test_plot_bars_draws_error_bars_and_refuses_bad_ones():
    import matplotlib.pyplot as plt

    from labkit.plotting import PlottingError, plot_bars

    fig = plot_bars({"a": 0.5, "b": 0.7}, title="t", ylabel="y", errors={"a": 0.02})
    from matplotlib.container import BarContainer

    bars = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    assert bars and bars[0].errorbar is not None
    plt.close(fig)
    with pytest.raises(PlottingError, match="errors"):
        plot_bars({"a": 0.5}, title="t", ylabel="y", errors={"c": 0.1})
