"""The shared argument checks: the valid range in words, and what counts as a number."""

import math

import pytest

from distill.arguments import (
    require_each,
    require_int,
    require_ints,
    require_number,
    require_positive,
)
from distill.errors import ConfigError


@pytest.mark.parametrize(
    ("bounds", "words"),
    [
        (dict(low=0.0, high=1.0, high_open=True), "a number in [0, 1)"),
        (dict(low=0.0, high=1.0, low_open=True), "a number in (0, 1]"),
        (dict(low=-1.0, high=1.0), "a number in [-1, 1]"),
        (dict(low=0.0, low_open=True), "a number > 0"),
        (dict(low=0.0), "a number >= 0"),
        (dict(high=1.0, high_open=True), "a number < 1"),
        ({}, "a number"),
    ],
)
def test_the_valid_range_is_said_in_words(bounds, words):
    with pytest.raises(ConfigError) as error:
        require_number("model.init_args.x", "text", **bounds)
    assert str(error.value) == f"model.init_args.x='text'; valid: {words}"


@pytest.mark.parametrize("value", [1.0, math.nan, math.inf, True])
def test_an_open_end_nan_infinity_and_bools_are_refused(value):
    with pytest.raises(ConfigError):
        require_number("key", value, 0.0, 1.0, high_open=True)


@pytest.mark.parametrize("value", [0.0, 0.5, 1 - 1e-9, 0])
def test_values_within_the_range_pass(value):
    require_number("key", value, 0.0, 1.0, high_open=True)


def test_integers_refuse_floats_and_bools():
    for value in (2.0, True, "3"):
        with pytest.raises(ConfigError, match="valid: an integer >= 1"):
            require_int("key", value, 1)
    require_int("key", 1, 1)
    with pytest.raises(ConfigError, match=r"key=\(\); valid: one or more integers >= 1"):
        require_ints("key", (), 1)
    require_ints("key", [20, 200], 1)


def test_each_keyword_is_checked_under_the_prefix():
    with pytest.raises(ConfigError, match=r"^model.init_args.b=0.0; valid: a number > 0$"):
        require_each(require_positive, "model.init_args", a=1.0, b=0.0)
