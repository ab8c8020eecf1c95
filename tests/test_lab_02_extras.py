"""labkit.reward_model.error_kind: the kind of a wrong completion, as labs 02 and 07 count them."""

import pytest

from labkit.reward_model import ERROR_KINDS, error_kind


@pytest.mark.parametrize(("completion", "kind"), [
    ("3+4=7 7", "bad_format"),
    ("<think></think>4", "no_reasoning"),
    ("<think>19+3=22</think>24", "wrong_final"),
    ("<think>19+3=24</think>24", "wrong_step"),
    ("<think>6+2=8, 8+6=15</think>15", "wrong_step"),
    ("<think>5-7=-2</think>-3", "wrong_final"),
])
def test_error_kind(completion, kind):
    assert error_kind(completion) == kind
    assert kind in ERROR_KINDS


def test_error_kind_rejects_non_strings():
    with pytest.raises(TypeError, match="string"):
        error_kind(None)
