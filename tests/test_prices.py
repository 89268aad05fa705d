"""Prices and price books."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metastop.errors import ParameterError, ReadError
from metastop.stop.prices import DEFAULT_PRICE, POINT, Price, PriceBook, check_price, to_points


@pytest.mark.parametrize("price, budget, expected", [
    (Price.tokens(2e8), 1e12, 2e8),
    (Price.tokens(2e8), 1.0, 2e8),
    (Price.fraction_of_budget(0.05), 1e9, 5e7),
    (Price.fraction_of_budget(0.05), 2e9, 1e8),
    (Price.money(per_point=100.0, per_million_tokens=0.5), 1e9, 2e8),
    (Price.money(per_point=1.0, per_million_tokens=2.0), 5.0, 5e5),
])
def test_tokens_per_point(price, budget, expected):
    assert price.tokens_per_point(budget) == pytest.approx(expected)


@pytest.mark.parametrize("make, message", [
    (lambda: Price.tokens(0), r"n must be finite and > 0, got n=0"),
    (lambda: Price.tokens(-5.0), r"n=-5.0"),
    (lambda: Price.fraction_of_budget(float("inf")), r"f must be finite and > 0, got f=inf"),
    (lambda: Price.fraction_of_budget("5%"), r"f must be a number, got f='5%'"),
    (lambda: Price.money(per_point=10.0, per_million_tokens=0.0), r"per_million_tokens=0.0"),
    (lambda: Price.money(per_point=None, per_million_tokens=1.0), r"per_point must be a number"),
    (lambda: Price("dollars", 1.0), r"kind must be one of .*got kind='dollars'"),
    (lambda: Price("tokens", 1.0, per_million_tokens=2.0), r"per_million_tokens only applies"),
    (lambda: Price.fraction_of_budget(0.05).tokens_per_point(0.0), r"budget must be finite and > 0"),
    (lambda: Price.tokens(1e8).scaled(-1.0), r"factor=-1.0"),
])
def test_bad_prices_name_the_parameter(make, message):
    with pytest.raises(ParameterError, match=message):
        make()


@pytest.mark.parametrize("price", [
    Price.tokens(3e8), Price.fraction_of_budget(0.02), Price.money(50.0, per_million_tokens=0.4),
])
def test_price_round_trip(price):
    data = json.loads(json.dumps(price.to_dict()))
    assert Price.from_dict(data) == price


@pytest.mark.parametrize("short, expected", [
    ({"tokens": 1e8}, Price.tokens(1e8)),
    ({"fraction_of_budget": 0.05}, Price.fraction_of_budget(0.05)),
    ({"money": 20, "per_million_tokens": 0.1}, Price.money(20, 0.1)),
])
def test_price_short_forms(short, expected):
    assert Price.from_dict(short) == expected


def test_one_point_constant_and_one_conversion():
    assert POINT == 0.01
    assert to_points(0.37) == pytest.approx(37.0)
    assert to_points(0.0) == 0.0
    np.testing.assert_allclose(to_points(np.array([0.005, 0.02])), [0.5, 2.0])


@pytest.mark.parametrize("price, tokens, budget, expected", [
    (Price.fraction_of_budget(0.05), 1e9, 1e9, 20.0),      # a full run at 5% per point
    (Price.fraction_of_budget(0.05), 5e8, 1e9, 10.0),      # half the budget spent
    (Price.tokens(1e8), 1e9, 5e12, 10.0),                  # the budget does not matter
    (Price.money(per_point=100.0, per_million_tokens=0.5), 1e9, 1e9, 5.0),
])
def test_points_for_tokens(price, tokens, budget, expected):
    assert price.points_for(tokens, budget) == pytest.approx(expected)
    assert price.points_for(price.tokens_per_point(budget), budget) == pytest.approx(1.0)


def test_check_price_passes_prices_and_explains_bare_numbers():
    assert check_price("price", DEFAULT_PRICE) is DEFAULT_PRICE
    with pytest.raises(ParameterError, match=r"price must be a Price \(metastop.stop.prices\), "
                                             r"got price=0.05; a bare number is ambiguous: write "
                                             r"Price.fraction_of_budget\(0.05\)"):
        check_price("price", 0.05)
    with pytest.raises(ParameterError, match=r"^default must be a Price .*got default=\{'f': 0.1\}$"):
        check_price("default", {"f": 0.1})
    with pytest.raises(ParameterError, match=r"got price=True$"):
        check_price("price", True)


def test_price_is_frozen_and_scales():
    price = Price.fraction_of_budget(0.05)
    with pytest.raises(AttributeError):
        price.amount = 1.0  # type: ignore[misc]
    assert price.scaled(2.0) == Price.fraction_of_budget(0.1)
    assert str(Price.tokens(1e8)) == "1 pt = 1e+08 tokens"


def book() -> PriceBook:
    return PriceBook(Price.fraction_of_budget(0.05),
                     priorities={"critical": Price.fraction_of_budget(0.01),
                                 "bulk": Price.fraction_of_budget(0.2)},
                     tasks={"gsm8k": Price.tokens(1e8)})


@pytest.mark.parametrize("task, priority, expected", [
    (None, None, Price.fraction_of_budget(0.05)),
    ("arc", None, Price.fraction_of_budget(0.05)),
    ("arc", "bulk", Price.fraction_of_budget(0.2)),
    (None, "critical", Price.fraction_of_budget(0.01)),
    ("gsm8k", "bulk", Price.tokens(1e8)),
    ("gsm8k", None, Price.tokens(1e8)),
])
def test_price_for_precedence(task, priority, expected):
    assert book().price_for(task=task, priority=priority) == expected


def test_unknown_priority_lists_known_ones():
    with pytest.raises(ParameterError, match=r"unknown priority='urgent'; known: \['bulk', 'critical'\]"):
        book().price_for(priority="urgent")


def test_with_price_returns_a_new_book():
    old = book()
    new = old.with_price("arc", Price.tokens(5e7)).with_price("gsm8k", Price.tokens(2e8))
    assert new.price_for("arc") == Price.tokens(5e7) and new.price_for("gsm8k") == Price.tokens(2e8)
    assert old.price_for("arc") == Price.fraction_of_budget(0.05)
    assert old.price_for("gsm8k") == Price.tokens(1e8)
    with pytest.raises(TypeError):
        old.tasks["arc"] = Price.tokens(1.0)  # type: ignore[index]


def test_read_toml(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(
        'default = { fraction_of_budget = 0.05 }\n'
        '[priorities]\ncritical = { fraction_of_budget = 0.01 }\nbulk = { tokens = 1e8 }\n'
        '[tasks]\ngsm8k = { money = 50.0, per_million_tokens = 0.4 }\n')
    loaded = PriceBook.read(path)
    assert loaded.price_for() == Price.fraction_of_budget(0.05)
    assert loaded.price_for(priority="bulk") == Price.tokens(1e8)
    assert loaded.price_for("gsm8k").tokens_per_point(1.0) == pytest.approx(50.0 / 0.4 * 1e6)


def test_write_then_read_json_round_trip(tmp_path):
    path = book().write(tmp_path / "sub" / "prices.json")
    assert PriceBook.read(path) == book()
    assert not [p for p in path.parent.iterdir() if p.name != "prices.json"], "no temp files left"


@pytest.mark.parametrize("text, message", [
    ('{"priorities": {}}', r"prices.json: missing key 'default'"),
    ('{"default": {"money": 5}}', r"prices.json: key 'default': per_million_tokens must be a number"),
    ('{"default": {"tokens": 1e8}, "tasks": {"gsm8k": {"tokens": -1}}}',
     r"prices.json: key 'tasks.gsm8k': tokens must be finite and > 0, got tokens=-1"),
    ('{"default": {"tokens": 1e8, "fraction_of_budget": 0.1}}',
     r"prices.json: key 'default': a price needs exactly one of"),
    ('{"default": {"tokens": 1e8}, "prices": {}}', r"prices.json: unknown keys \['prices'\]"),
    ('{"default": {"tokens": 1e8}, "priorities": [1]}', r"prices.json: key 'priorities' must be a table"),
])
def test_bad_books_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(ParameterError, match=message):
        PriceBook.read(path)


def test_unreadable_books_name_the_file(tmp_path):
    with pytest.raises(ReadError, match=r"cannot read price book .*missing.toml"):
        PriceBook.read(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("default = {")
    with pytest.raises(ReadError, match=r"price book .*broken.toml is not valid TOML"):
        PriceBook.read(broken)
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{")
    with pytest.raises(ReadError, match=r"broken.json is not valid JSON"):
        PriceBook.read(bad_json)
