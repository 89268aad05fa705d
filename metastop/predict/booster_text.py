"""A structural check of LightGBM's text model format, run before LightGBM parses a file.

LightGBM trusts its own text format: it finds each tree by the byte counts in
``tree_sizes``, reads a declared number of values from each array without counting them and
follows child indices without bounds checks. A truncated or edited file (even one whose
SHA-256 was updated to match) can therefore crash the process (SIGABRT, SIGSEGV) instead of
raising. ``check_booster_text`` checks what LightGBM relies on, cheaply (under 0.1 s for
each of the shipped model's files, in time linear in their size):

- printable ASCII only; the header keys, their integers, ``feature_names`` and
  ``feature_infos`` with one entry per feature;
- every ``Tree=i`` block where ``tree_sizes`` puts it, each ``key=value`` line well formed
  (at most 22), every array a run of numbers with exactly the declared count;
- each tree a tree: its children name every leaf and non-root node once, features in range,
  decision types and categorical splits consistent; every number finite;
- ``end of trees`` right after the last tree; the ``parameters:`` section and the last
  ``pandas_categorical:`` line in the shapes the Python package parses.

Example:
    >>> check_booster_text(Path("quantile_0.5.txt").read_bytes(), Path("quantile_0.5.txt"),
    ...                    n_features=33)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import ModelError

HEADER_KEYS = ("version", "num_class", "num_tree_per_iteration", "label_index",
               "max_feature_idx", "objective", "feature_names", "feature_infos", "tree_sizes")
MAX_LEAVES = 131072  # LightGBM's own limit on num_leaves
_TREE_LINES = 22     # LightGBM reads at most this many key=value lines per tree
# Each number has one way to match (no nested optional digit runs), so a line that fails
# to match fails fast instead of backtracking through every way to split its digits.
_NUMBER = rb"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d{1,3})?|\.\d+(?:[eE][-+]?\d{1,3})?|inf|nan)"
_INTS = re.compile(rb"(?:-?\d{1,10}(?: -?\d{1,10})*)?")
_FLOATS = re.compile(rb"(?:%s(?: %s)*)?" % (_NUMBER, _NUMBER))
_NOT_TEXT = re.compile(rb"[^\x20-\x7e\n]")
_PARAMETER = re.compile(rb"\[[A-Za-z0-9_]+: [^\"\\]*\]")
# array -> (integer?, length: num_leaves + offset)
_ARRAYS = {"split_feature": (True, -1), "split_gain": (False, -1), "threshold": (False, -1),
           "decision_type": (True, -1), "left_child": (True, -1), "right_child": (True, -1),
           "leaf_weight": (False, 0), "leaf_count": (True, 0),
           "internal_value": (False, -1), "internal_weight": (False, -1),
           "internal_count": (True, -1)}
_SPLIT_ARRAYS = ("left_child", "right_child", "split_feature", "threshold")
_BARE_KEYS = (b"average_output",)  # header flags LightGBM writes without a value


class _Broken(Exception):
    """A broken rule and the byte offset where it shows."""

    def __init__(self, rule: str, offset: int):
        super().__init__(rule)
        self.rule, self.offset = rule, offset


def check_booster_text(data: bytes, path: Path, *, n_features: int) -> None:
    """Raise ``ModelError`` naming the file, the line and the rule unless ``data`` is a
    well-formed LightGBM text model over ``n_features`` features."""
    try:
        _check(data, n_features)
    except _Broken as broken:
        line = data.count(b"\n", 0, broken.offset) + 1
        raise ModelError(f"file {path}: line {line}: {broken.rule}; not a LightGBM text model "
                         f"metastop can load (truncated or edited?): retrain or restore it") from None


def _check(data: bytes, n_features: int) -> None:
    bad = _NOT_TEXT.search(data)
    if bad:
        raise _Broken(f"byte {data[bad.start()]:#04x} is not printable ASCII", bad.start())
    if not data.startswith(b"tree\n"):
        raise _Broken("the first line must be 'tree'", 0)
    start = data.find(b"\nTree=") + 1
    if start == 0:
        raise _Broken("no 'Tree=' block", len(data))
    sizes, max_feature = _check_header(data[:start], n_features)
    offset = start
    for i, size in enumerate(sizes):
        _check_tree(data[offset:offset + size], i, max_feature, offset)
        offset += size
    if not data[offset:].lstrip(b"\n").startswith(b"end of trees\n"):
        raise _Broken("'end of trees' must follow the last tree that tree_sizes declares",
                      offset)
    _check_parameters(data, offset)
    _check_pandas_line(data)


def _check_header(header: bytes, n_features: int) -> tuple[list[int], int]:
    keys = _key_values(header.split(b"\n")[1:], 5, multi=("feature_names",))
    missing = [k for k in HEADER_KEYS if k not in keys]
    if missing:
        raise _Broken(f"the header lacks {missing}", len(header))
    for name in ("num_class", "num_tree_per_iteration"):
        _integer(keys, name, 1, 1 << 20)
    _integer(keys, "label_index", 0, 1 << 30)
    max_feature = _integer(keys, "max_feature_idx", n_features - 1, n_features - 1)
    for name in ("feature_names", "feature_infos"):
        if len(keys[name][0].split(b" ")) != n_features:
            raise _Broken(f"{name} must list {n_features} entries", keys[name][1])
    value, at = keys["tree_sizes"]
    if not _INTS.fullmatch(value) or not value:
        raise _Broken("tree_sizes must be integers", at)
    sizes = [int(s) for s in value.split()]
    per_iteration = int(keys["num_tree_per_iteration"][0])
    if min(sizes) <= 0 or len(sizes) % per_iteration:
        raise _Broken(f"tree_sizes must be > 0, a multiple of {per_iteration} trees", at)
    return sizes, max_feature


def _key_values(lines: list[bytes], offset: int, *, multi: tuple[str, ...] = (),
                limit: int | None = None) -> dict[str, tuple[bytes, int]]:
    """``key -> (value, byte offset)`` of ``key=value`` lines, the last one winning as in
    LightGBM; a tree's lines (``limit`` set) end at the first blank line, the header's don't."""
    found: dict[str, tuple[bytes, int]] = {}
    for number, line in enumerate(lines):
        if not line and limit is not None:
            break
        if limit is not None and number >= limit:
            raise _Broken(f"a tree has more than {limit} key=value lines", offset)
        key, sep, value = line.partition(b"=")
        bare = not sep and limit is None and key in _BARE_KEYS
        malformed = not sep or not key or (b"=" in value and key.decode() not in multi)
        if line and malformed and not bare:
            raise _Broken(f"{line[:40]!r} is not a key=value line", offset)
        if line:
            found[key.decode()] = (value, offset + len(key) + 1)
        offset += len(line) + 1
    return found


def _integer(keys: dict[str, tuple[bytes, int]], name: str, low: int, high: int) -> int:
    value, at = keys[name]
    if not re.fullmatch(rb"-?\d{1,10}", value) or not low <= int(value) <= high:
        raise _Broken(f"{name} must be an integer in [{low}, {high}], got {value[:20]!r}", at)
    return int(value)


def _check_tree(block: bytes, index: int, max_feature: int, offset: int) -> None:
    head = b"Tree=%d\n" % index
    if not block.startswith(head):
        raise _Broken(f"tree {index} must start with {head.strip().decode()!r} where "
                      f"tree_sizes puts it", offset)
    body = block[len(head):]
    fields, blank, rest = body.partition(b"\n\n")
    if not blank or rest.strip(b"\n"):
        raise _Broken(f"tree {index} must end in a blank line exactly where tree_sizes says",
                      offset + len(block))
    keys = _key_values(fields.split(b"\n"), offset + len(head), limit=_TREE_LINES)
    for name in ("num_leaves", "num_cat", "leaf_value"):
        if name not in keys:
            raise _Broken(f"tree {index} lacks {name}", offset)
    leaves = _integer(keys, "num_leaves", 1, MAX_LEAVES)
    n_cat = _integer(keys, "num_cat", 0, leaves)
    if keys.get("is_linear", (b"0",))[0] != b"0":
        raise _Broken("is_linear must be 0: metastop never trains linear trees",
                      keys["is_linear"][1])
    _numbers(keys, "leaf_value", leaves, integer=False, finite=True)
    if "shrinkage" in keys:
        _numbers(keys, "shrinkage", 1, integer=False, finite=True)
    if leaves == 1:  # LightGBM reads nothing else of a one-leaf tree
        return
    arrays = {name: _numbers(keys, name, leaves + extra, integer=integer)
              for name, (integer, extra) in _ARRAYS.items() if name in keys}
    missing = [name for name in _SPLIT_ARRAYS if name not in arrays]
    if missing:
        raise _Broken(f"tree {index} has {leaves} leaves but lacks {missing}", offset)
    _check_splits(keys, arrays, leaves, n_cat, max_feature)


def _numbers(keys: dict[str, tuple[bytes, int]], name: str, count: int, *,
             integer: bool, finite: bool = False) -> np.ndarray:
    """The ``count`` numbers of array ``name``; ``finite`` refuses inf and nan (LightGBM
    writes them in thresholds and gains, never in the leaf values a prediction adds up)."""
    value, at = keys[name]
    if not (_INTS if integer else _FLOATS).fullmatch(value):
        kind = "integers" if integer else "numbers"
        raise _Broken(f"{name} must be {kind} separated by single spaces", at)
    array = np.array(value.decode().split(), dtype=np.int64 if integer else np.float64)
    if len(array) != count:
        raise _Broken(f"{name} must hold {count} values, got {len(array)}", at)
    if finite and not np.isfinite(array).all():
        raise _Broken(f"{name} must be finite", at)
    return array


def _check_splits(keys, arrays: dict[str, np.ndarray], leaves: int, n_cat: int,
                  max_feature: int) -> None:
    """Children form one tree under node 0; features, decision types and categorical
    splits point inside their tables."""
    children = np.concatenate([arrays["left_child"], arrays["right_child"]])
    expected = np.r_[np.arange(-leaves, 0), np.arange(1, leaves - 1)]
    if not np.array_equal(np.sort(children), expected):
        raise _Broken(f"left_child/right_child must name each of the {leaves} leaves and "
                      f"{leaves - 2} non-root nodes exactly once", keys["left_child"][1])
    feature = arrays["split_feature"]
    if feature.min() < 0 or feature.max() > max_feature:
        raise _Broken(f"split_feature must lie in [0, {max_feature}]", keys["split_feature"][1])
    decision = arrays.get("decision_type", np.zeros(leaves - 1, dtype=np.int64))
    if decision.min() < 0 or decision.max() > 15 or ((decision >> 2) & 3).max() > 2:
        raise _Broken("decision_type must be in [0, 15] with a missing type <= 2",
                      keys.get("decision_type", keys["split_feature"])[1])
    categorical = (decision & 1).astype(bool)
    if categorical.any() or n_cat:
        _check_categorical(keys, arrays["threshold"][categorical], n_cat)


def _check_categorical(keys, thresholds: np.ndarray, n_cat: int) -> None:
    at = keys["num_cat"][1]
    if n_cat == 0 or "cat_boundaries" not in keys or "cat_threshold" not in keys:
        raise _Broken("categorical splits need num_cat > 0, cat_boundaries and cat_threshold",
                      at)
    bounds = _numbers(keys, "cat_boundaries", n_cat + 1, integer=True)
    if bounds[0] != 0 or np.any(np.diff(bounds) < 0):
        raise _Broken("cat_boundaries must start at 0 and never decrease", at)
    cats = _numbers(keys, "cat_threshold", int(bounds[-1]), integer=True)
    if len(cats) and (cats.min() < 0 or cats.max() >= 1 << 32):
        raise _Broken("cat_threshold must hold 32-bit unsigned integers", at)
    if len(thresholds) and (not np.isfinite(thresholds).all()
                            or np.any(thresholds != np.floor(thresholds))
                            or thresholds.min() < 0 or thresholds.max() >= n_cat):
        raise _Broken(f"a categorical split's threshold must index one of {n_cat} categories", at)


def _check_parameters(data: bytes, offset: int) -> None:
    start = data.find(b"\nparameters:\n", offset)
    if start < 0:
        return
    end = data.find(b"\nend of parameters", start)
    if end < 0:
        raise _Broken("'parameters:' without 'end of parameters'", start + 1)
    at = start + len(b"\nparameters:\n")
    for line in data[at:end + 1].split(b"\n")[:-1]:
        if line and not _PARAMETER.fullmatch(line):
            raise _Broken(f"{line[:40]!r} is not a '[name: value]' parameter line", at)
        at += len(line) + 1


def _check_pandas_line(data: bytes) -> None:
    """The last line, when it starts with ``pandas_categorical:``, must hold the JSON the
    Python package loads (null or a list), found as the package finds it."""
    text = data.decode("ascii")
    key = "pandas_categorical:"
    last = text[text.rfind("\n", 0, -len(key)):].strip()
    if not last.startswith(key):
        return
    try:
        value = json.loads(last[len(key):])
    except (ValueError, RecursionError):
        value = ...
    if value is not None and not isinstance(value, list):
        raise _Broken(f"{last[:40]!r} must end the file with null or a JSON list",
                      len(data) - len(last))
