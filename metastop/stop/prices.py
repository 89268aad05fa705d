"""What an EM point is worth in tokens: ``Price`` and the per-task ``PriceBook``.

One *point* is 0.01 in metric units (score units): EM 0.37 is 37 points. ``POINT`` is that
constant and ``to_points`` the one conversion from metric units to points: losses and gains
are kept in metric units inside, and reported to people in points. A price says how many
training tokens one point is worth, so a policy can weigh a predicted gain against the tokens
it would cost. Past the command line a price is always a ``Price``, never a bare number
(``check_price`` says so to a caller who passes one).

Example:
    >>> Price.fraction_of_budget(0.05).tokens_per_point(budget=1e9)
    50000000.0
    >>> Price.money(per_point=100.0, per_million_tokens=0.5).tokens_per_point(budget=1e9)
    200000000.0
"""

from __future__ import annotations

import json
import numbers
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from .._checks import positive
from ..curves import atomic_path
from ..errors import ParameterError, ReadError

POINT = 0.01
"""One point in metric units (an accuracy of 0.37 is 37 points)."""


def to_points(x: float) -> float:
    """A quantity in metric units (a loss, a gain, a score) in points: ``x / POINT``.

    Works elementwise on numpy arrays too.

    Example:
        >>> to_points(0.25)
        25.0
    """
    return x / POINT


TOKENS = "tokens"
FRACTION_OF_BUDGET = "fraction_of_budget"
MONEY = "money"
KINDS = (TOKENS, FRACTION_OF_BUDGET, MONEY)


@dataclass(frozen=True)
class Price:
    """What one point (0.01 of the metric) is worth, in one of three forms.

    Build it with a constructor, not directly:
    ``Price.tokens(n)`` (one point is worth ``n`` tokens), ``Price.fraction_of_budget(f)``
    (one point is worth ``f`` of the run's budget) or ``Price.money(per_point,
    per_million_tokens)`` (a money value per point and a token price).

    Example:
        >>> Price.tokens(2e8).tokens_per_point(budget=1e12)
        200000000.0
    """

    kind: str
    amount: float
    per_million_tokens: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ParameterError(f"kind must be one of {KINDS}, got kind={self.kind!r}")
        object.__setattr__(self, "amount", positive("amount", self.amount))
        if self.kind == MONEY:
            object.__setattr__(self, "per_million_tokens",
                               positive("per_million_tokens", self.per_million_tokens))
        elif self.per_million_tokens is not None:
            raise ParameterError(f"per_million_tokens only applies to kind='money', got "
                                 f"per_million_tokens={self.per_million_tokens!r} for kind={self.kind!r}")

    @classmethod
    def tokens(cls, n: float) -> Price:
        """One point is worth ``n`` tokens."""
        return cls(TOKENS, positive("n", n))

    @classmethod
    def fraction_of_budget(cls, f: float) -> Price:
        """One point is worth the share ``f`` of the run's budget (0.05 = 5%)."""
        return cls(FRACTION_OF_BUDGET, positive("f", f))

    @classmethod
    def money(cls, per_point: float, per_million_tokens: float) -> Price:
        """One point is worth ``per_point`` money; a million tokens cost ``per_million_tokens``."""
        return cls(MONEY, positive("per_point", per_point),
                   positive("per_million_tokens", per_million_tokens))

    def tokens_per_point(self, budget: float) -> float:
        """How many tokens one point is worth for a run with this ``budget``."""
        if self.kind == TOKENS:
            return self.amount
        if self.kind == MONEY:
            return self.amount / self.per_million_tokens * 1e6
        return self.amount * positive("budget", budget)

    def points_for(self, tokens: float, budget: float) -> float:
        """How many points ``tokens`` tokens are worth for a run with this ``budget``.

        The backtest's utility charges a run's full length so: at one point per 5% of the
        budget, a run that spends its whole budget costs 20 points.

        Example:
            >>> Price.fraction_of_budget(0.05).points_for(1e9, budget=1e9)
            20.0
        """
        return float(tokens) / self.tokens_per_point(budget)

    def scaled(self, factor: float) -> Price:
        """The same kind of price, ``factor`` times as high (the governor tunes prices so)."""
        return Price(self.kind, self.amount * positive("factor", factor), self.per_million_tokens)

    def __str__(self) -> str:
        if self.kind == TOKENS:
            return f"1 pt = {self.amount:.3g} tokens"
        if self.kind == MONEY:
            return f"1 pt = {self.amount:g} money at {self.per_million_tokens:g} per 1M tokens"
        return f"1 pt = {self.amount:.3g} of the budget"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "amount": self.amount}
        if self.per_million_tokens is not None:
            data["per_million_tokens"] = self.per_million_tokens
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Price:
        """Build from ``to_dict`` output, or the short forms ``{"tokens": n}``,
        ``{"fraction_of_budget": f}``, ``{"money": per_point, "per_million_tokens": m}``."""
        if not isinstance(data, Mapping):
            raise ParameterError(f"a price must be a table/object, got {data!r}")
        if "kind" in data:
            extra = set(data) - {"kind", "amount", "per_million_tokens"}
            if extra:
                raise ParameterError(f"unknown price keys {sorted(extra)} in {dict(data)!r}")
            if "amount" not in data:
                raise ParameterError(f"a price needs 'amount', got {dict(data)!r}")
            return cls(data["kind"], data["amount"], data.get("per_million_tokens"))
        kinds = [k for k in KINDS if k in data]
        extra = set(data) - set(KINDS) - {"per_million_tokens"}
        if len(kinds) != 1 or extra:
            raise ParameterError(f"a price needs exactly one of {KINDS} (money also needs "
                                 f"per_million_tokens), got {dict(data)!r}")
        amount = positive(kinds[0], data[kinds[0]])
        return cls(kinds[0], amount, data.get("per_million_tokens") if kinds[0] == MONEY else None)


def check_price(name: str, value: Any) -> Price:
    """``value`` when it is a ``Price``, else a ``ParameterError`` naming ``name``.

    A bare number is refused: it could be a share of the budget, tokens, or points per full
    budget, and the message says how to write each one.

    Example:
        >>> check_price("price", Price.tokens(1e8)).kind
        'tokens'
    """
    if isinstance(value, Price):
        return value
    hint = ""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        hint = (f"; a bare number is ambiguous: write Price.fraction_of_budget({value!r}) for a "
                f"share of the budget per point, Price.tokens({value!r}) for tokens per point, "
                f"or Price.fraction_of_budget(1 / k) for k points per full budget")
    raise ParameterError(f"{name} must be a Price (metastop.stop.prices), got {name}={value!r}{hint}")


DEFAULT_PRICE = Price.fraction_of_budget(0.1)
"""The shipped default price: one point (0.01 EM) is worth 10% of the run's budget.

On held-out LCDB and Pythia curves it saves more tokens than patience-5 and loses less EM
(``scripts/bench_stopping.py``, figures in the README). It is a trade, not a loss limit:
even the hindsight oracle gives up about one point on average at this price, so a task that
must lose less should be given a higher price."""


@dataclass(frozen=True)
class PriceBook:
    """Prices per task and per priority class, with a default.

    A task's own price overrides its priority class's, which overrides the default.

    Example:
        >>> book = PriceBook(Price.fraction_of_budget(0.05),
        ...                  priorities={"bulk": Price.fraction_of_budget(0.2)},
        ...                  tasks={"gsm8k": Price.tokens(1e8)})
        >>> str(book.price_for(task="arc", priority="bulk"))
        '1 pt = 0.2 of the budget'
    """

    default: Price
    priorities: Mapping[str, Price] = field(default_factory=dict)
    tasks: Mapping[str, Price] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.default, Price):
            raise ParameterError(f"default must be a Price, got default={self.default!r}")
        for name in ("priorities", "tasks"):
            table = dict(getattr(self, name))
            for key, price in table.items():
                if not isinstance(key, str) or not key:
                    raise ParameterError(f"{name} keys must be non-empty strings, got {key!r}")
                if not isinstance(price, Price):
                    raise ParameterError(f"{name}[{key!r}] must be a Price, got {price!r}")
            object.__setattr__(self, name, MappingProxyType(table))

    def price_for(self, task: str | None = None, priority: str | None = None) -> Price:
        """The price of ``task``, else of its ``priority`` class, else the default."""
        if task is not None and task in self.tasks:
            return self.tasks[task]
        if priority is not None:
            if priority not in self.priorities:
                raise ParameterError(f"unknown priority={priority!r}; known: {sorted(self.priorities)}")
            return self.priorities[priority]
        return self.default

    def with_price(self, task: str, price: Price) -> PriceBook:
        """A new book in which ``task`` has ``price`` (this one is unchanged)."""
        return PriceBook(self.default, self.priorities, {**self.tasks, task: price})

    def with_default(self, price: Price) -> PriceBook:
        return PriceBook(price, self.priorities, self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default.to_dict(),
                "priorities": {k: v.to_dict() for k, v in sorted(self.priorities.items())},
                "tasks": {k: v.to_dict() for k, v in sorted(self.tasks.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> PriceBook:
        """Build from plain data; errors name ``source`` and the key concerned."""
        if not isinstance(data, Mapping):
            raise ParameterError(f"{source}: a price book must be a table/object, got {type(data).__name__}")
        unknown = set(data) - {"default", "priorities", "tasks"}
        if unknown:
            raise ParameterError(f"{source}: unknown keys {sorted(unknown)}; "
                                 f"expected 'default', 'priorities', 'tasks'")
        if "default" not in data:
            raise ParameterError(f"{source}: missing key 'default' (the price used when no "
                                 f"task or priority matches)")
        default = _read_price(data["default"], source, "default")
        tables = {}
        for name in ("priorities", "tasks"):
            table = data.get(name, {})
            if not isinstance(table, Mapping):
                raise ParameterError(f"{source}: key {name!r} must be a table/object, got {table!r}")
            tables[name] = {k: _read_price(v, source, f"{name}.{k}") for k, v in table.items()}
        return cls(default, **tables)

    @classmethod
    def read(cls, path: str | os.PathLike) -> PriceBook:
        """Read a price book from TOML (``.toml``) or JSON (anything else).

        TOML example::

            default = { fraction_of_budget = 0.1 }
            [priorities]          # urgent work values an EM point more: it stops later
            critical = { fraction_of_budget = 0.5 }
            bulk = { tokens = 1e8 }
            [tasks]
            gsm8k = { money = 50.0, per_million_tokens = 0.4 }
        """
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise ReadError(f"cannot read price book {path}: {error.strerror or error}") from None
        try:
            data = _toml().loads(raw.decode("utf-8")) if path.suffix == ".toml" else json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ReadError(f"price book {path} is not valid "
                            f"{'TOML' if path.suffix == '.toml' else 'JSON'}: {error}") from None
        return cls.from_dict(data, source=str(path))

    def write(self, path: str | os.PathLike) -> Path:
        """Write as JSON, atomically (a reader never sees a half-written book)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _read_price(data: Any, source: str, key: str) -> Price:
    try:
        return Price.from_dict(data)
    except ParameterError as error:
        raise ParameterError(f"{source}: key {key!r}: {error}") from None


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib
    try:
        import tomli
    except ImportError:  # pragma: no cover - tomli is a dependency below 3.11
        raise ReadError("reading TOML price books needs tomli on Python < 3.11: pip install tomli") from None
    return tomli
