"""labkit.sft.short_sft_run: the short SFT experiment of lab 01's exercise 3."""

import pytest

from labkit.profiles import get_profile
from labkit.sft import ShortRun, short_sft_run


@pytest.mark.parametrize("kwargs", [dict(max_steps=0, learning_rate=1e-3), dict(max_steps=2.5, learning_rate=1e-3),
                                    dict(max_steps=True, learning_rate=1e-3), dict(max_steps=2, learning_rate=0),
                                    dict(max_steps=2, learning_rate=3.0)])
def test_short_sft_run_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        short_sft_run(get_profile("cpu"), "unused", [{"question": "1+1", "answer": "2", "level": 1}], **kwargs)


def test_short_sft_run_rejects_no_eval_rows():
    with pytest.raises(ValueError, match="eval_rows"):
        short_sft_run(get_profile("cpu"), "unused", [], max_steps=2, learning_rate=1e-3)


def test_short_sft_run_trains_and_scores(tmp_path):
    from labkit.data import load_problems
    from labkit.stages import get_stage, model_path

    profile = get_profile("cpu")
    rows = load_problems(profile.dataset, "eval", limit=4)
    run = short_sft_run(profile, model_path(get_stage("base", profile)), rows, max_steps=2,
                        learning_rate=5e-3, output_dir=tmp_path)
    assert isinstance(run, ShortRun)
    assert (run.max_steps, run.learning_rate) == (2, 5e-3)
    assert 0 <= run.accuracy <= 1 and 0 <= run.format_rate <= 1 and run.train_seconds >= 0
