"""Size and flag parsing shared by every backend's settings (hicache_core.config_values)."""

from __future__ import annotations

import pytest

from hicache_core.config_values import parse_bool, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (4096, 4096),
        (3.0, 3),
        ("2048", 2048),
        ("512b", 512),
        ("4gb", 4 << 30),
        ("4GB", 4 << 30),
        ("64GiB", 64 << 30),
        ("64G", 64 << 30),
        ("16 MiB", 16 << 20),
        ("512m", 512 << 20),
        ("64kb", 64 << 10),
        ("1.5k", 1536),
        ("1.5g", int(1.5 * (1 << 30))),
        ("2t", 2 << 40),
        (" 1p ", 1 << 50),
    ],
)
def test_sizes_are_ints_or_numbers_with_binary_units(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["4 gigs", "-1", -5, True, "gb", "", [1], "1.5.2gb", 1.5, "4ib", "4kbb", None])
def test_anything_else_is_not_a_size(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize("word", [True, 1, "1", "true", "TRUE", " yes ", "on"])
def test_true_words(word: object) -> None:
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", [False, 0, "0", "false", "No", "off"])
def test_false_words(word: object) -> None:
    assert parse_bool(word) is False


def test_empty_is_an_error_unless_given_a_meaning() -> None:
    with pytest.raises(ValueError):
        parse_bool("")
    assert parse_bool("  ", empty=False) is False
    assert parse_bool("", empty=True) is True


@pytest.mark.parametrize("value", [2, "2", "maybe", None, 1.0, "truth"])
def test_other_values_are_not_flags(value: object) -> None:
    with pytest.raises(ValueError):
        parse_bool(value)
