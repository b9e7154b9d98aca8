"""Typed, frozen configuration: plain data (a params section) -> dataclasses that reject unknown keys.
`read_mapping` reads a file of plain data (a metrics JSON; the stages hand it YAML's parser), and
`parse_mapping` the same from text (a file at another git revision).

Allowed values are declared on the fields, so every key is checked where it is read:
`mask_ratio: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)]`, `epochs: PosInt`,
`crop_scale: Scale` ...; a dataclass can add checks across its fields in `problems()`, which
returns (key, message) pairs.  A violation is one line naming file, key, value and what is allowed:
`params/smoke.yaml: mae.model.mask_ratio: 1.2 is outside (0, 1)`.

Nothing in `mim/` reads YAML: the stages read `params/<profile>.yaml` (stages/common.py) and
hand each section to `from_dict`, which builds the frozen dataclass the library takes.  Every
error names the file and the dotted key, so a typo in a params file is a one-line message.
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mim.errors import ConfigError, MimError

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """A number's allowed interval; None = unbounded, *_open = the end itself is excluded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def ok(self, v: float) -> bool:
        if v != v:  # NaN
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.lo_open or self.lo is None else '['}{lo}, {hi}{')' if self.hi_open or self.hi is None else ']'}"

    def problem(self, v: Any) -> str | None:
        return None if self.ok(v) else f"{v!r} is outside {self}"


@dataclass(frozen=True)
class Check:
    """Any other rule on one value: `test(value)` True when allowed; `text` says what is allowed."""

    test: Callable[[Any], bool]
    text: str

    def problem(self, v: Any) -> str | None:
        return None if self.test(v) else f"{list(v) if isinstance(v, tuple) else v!r} {self.text}"


def _scale(v: Any) -> bool:
    return 0 < v[0] <= v[1] <= 1


def _ordered(v: Any) -> bool:
    return 0 < v[0] <= v[1]


def _betas(v: Any) -> bool:
    return all(0 <= b < 1 for b in v)


# The field types the configs share.
PosInt = Annotated[int, Range(1)]  # sizes, counts, epochs
NonNegInt = Annotated[int, Range(0)]  # counts where 0 means "off" or "all"
PosFloat = Annotated[float, Range(0, lo_open=True)]  # learning rates, temperatures
NonNegFloat = Annotated[float, Range(0)]  # weight decay, drop rates' upper-unbounded cousins
Fraction = Annotated[float, Range(0, 1)]  # probabilities, [0, 1]
OpenFraction = Annotated[float, Range(0, 1, lo_open=True, hi_open=True)]  # mask ratios, (0, 1)
Momentum = Annotated[float, Range(0, 1, hi_open=True)]  # EMA decays and momenta, [0, 1)
DropRate = Annotated[float, Range(0, 1, hi_open=True)]  # drop path, label smoothing, [0, 1)
LayerDecay = Annotated[float, Range(0, 1, lo_open=True)]  # layer-wise lr decay, (0, 1]
Scale = Annotated[tuple[float, float], Check(_scale, "must be [lo, hi] with 0 < lo <= hi <= 1 (a fraction of the image)")]
Ratios = Annotated[tuple[float, float], Check(_ordered, "must be [lo, hi] with 0 < lo <= hi")]
Betas = Annotated[tuple[float, float], Check(_betas, "must be two numbers in [0, 1)")]


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass `cls` from plain data, checking keys and types recursively."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if not has_default:
                raise ConfigError(f"{where}.{name}: required key is missing")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}")
    obj = cls(**kwargs)
    for key, message in getattr(obj, "problems", lambda: [])():
        raise ConfigError(f"{where}.{key}: {message}")
    return obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Annotated:
        out = _coerce(args[0], value, where)
        for rule in args[1:]:
            problem = rule.problem(out) if out is not None else None
            if problem:
                raise ConfigError(f"{where}: {problem}")
        return out
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own message (its range, its check) says more
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: {value!r} matches none of {_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(args[0], k, where): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-3, without a dot, as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {tp!r}")


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (for checkpoints and output folders)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def read_mapping(path: str | Path, what: str, fmt: str = "JSON", parse: Callable[[str], Any] = json.loads,
                 error: type[MimError] = MimError) -> dict[str, Any]:
    """A file holding one mapping (JSON; the stages pass yaml.safe_load for params files), with
    one-line errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    return parse_mapping(path.read_text(), str(path), fmt, parse, error)


def parse_mapping(text: str, where: str, fmt: str = "JSON", parse: Callable[[str], Any] = json.loads,
                  error: type[MimError] = MimError) -> dict[str, Any]:
    """`text` holding one mapping (a file's, or `git show REV:PATH`'s), parsed by `parse`; one-line
    errors start with `where`."""
    try:
        data = parse(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: the parser's own message, on one line
        mark = getattr(e, "problem_mark", None)  # YAML: where it went wrong
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        message = getattr(e, "problem", None) or " ".join(str(e).split())
        raise error(f"{where}: not valid {fmt}{at}: {message}") from None
    if not isinstance(data, dict):
        raise error(f"{where}: top level must be a mapping, got {type(data).__name__}")
    return data
