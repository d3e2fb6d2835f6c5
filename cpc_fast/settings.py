"""The configuration system: dataclasses whose defaults are the paper's, under one set of rules.

Every configurable part is a dataclass deriving from :class:`Config`, its fields declared
with :func:`setting`: the runs (``config.pretrain``, ``config.experiment``), the CPC model
and the recognizer (``models``), the loss (``losses.config``) and the synthetic corpora
(``data.corpora``). This module sits at the bottom of the library, above ``errors`` only, so
that each of them can be one. A field carries its help text, the check its value must pass,
whether a resumed run may change it, and, when the command line offers it, its flag. From
these:

* constructing a config checks every field (:meth:`Config.check_fields`) and raises a
  :class:`~cpc_fast.errors.UserInputError` naming the field in backticks; ``validate()``
  also checks how fields fit together (a subclass's :meth:`Config.check_whole`);
* ``replace(**changes)`` is ``dataclasses.replace`` and then ``validate()``: nothing is
  dropped or defaulted behind the caller's back;
* ``to_dict()`` / ``from_dict()`` round-trip through JSON (the run folder's record); a
  record written before a field moved is brought up to date first (:meth:`Config.upgrade`),
  so old run folders and model files still load and resume;
* :func:`differences` compares a saved configuration with the current one, skipping the
  fields declared ``resumable``, for every config alike;
* ``cpc_fast.cli.options`` builds a command's typer options from the same fields, so an
  option is declared once.

Presets are module functions returning a config (``paper()``, ``tiny()``), looked up by name
through :func:`pick_preset`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

from cpc_fast.errors import UserInputError

C = TypeVar("C", bound="Config")
Check = Callable[[Any], str | None]  # a value -> what is wrong with it, or None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002 - the word typer and argparse use
    check: Check | None = None,
    flag: bool | str = False,
    resumable: bool = False,
    default_text: str | None = None,
    metavar: str | None = None,
    required_flag: bool = False,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A config field.

    Args:
        default: as for ``dataclasses.field``.
        default_factory: as for ``dataclasses.field``.
        help: one line for documentation and ``--help``.
        check: the field's own check (:func:`at_least`, :func:`one_of`, ...).
        flag: whether the command line offers the field: True for the flag its name gives
            (``batch_size`` -> ``--batch-size``), or the flag itself where it differs
            (``"--data"``, ``"--bf16/--no-bf16"`` for an on/off pair).
        resumable: a run resumed with another value of this field is still the same run
            (how long to train, how often to report, how to execute).
        default_text: what ``--help`` says for a default of None.
        metavar: the placeholder ``--help`` shows for the value ("PATH").
        required_flag: the command line must give the flag.
    """
    metadata = {
        "help": help,
        "check": check,
        "flag": flag,
        "resumable": resumable,
        "default_text": default_text,
        "metavar": metavar,
        "required_flag": required_flag,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# ------------------------------------------------------------------------------- checks


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low:g}, got {v}"


def positive(v: float) -> str | None:
    return None if math.isfinite(v) and v > 0 else f"must be positive, got {v}"


def non_negative(v: float) -> str | None:
    return None if math.isfinite(v) and v >= 0 else f"must be 0 or more, got {v}"


def in_range(low: float, high: float) -> Check:
    """low <= v < high."""
    return lambda v: None if low <= v < high else f"must be in [{low:g}, {high:g}), got {v}"


def one_of(choices: tuple[str, ...]) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def optional(check: Check) -> Check:
    """``check`` for a value that may also be None."""
    return lambda v: None if v is None else check(v)


# ------------------------------------------------------------------------------- configs


class Config:
    """Base of the run configurations (a mixin for ``@dataclass`` classes)."""

    # What ``--help`` says for a default of None where it depends on the run (a field
    # declared once for several runs, see config.common), by field name.
    default_texts: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            nested = _nested_type(type(self), f.name)
            if nested is not None and isinstance(value, Mapping):
                setattr(self, f.name, nested.from_dict(value))
            elif isinstance(value, list):  # tuples come back from JSON as lists
                setattr(self, f.name, tuple(value))
        self.check_fields()

    def check_fields(self) -> None:
        """Raises :class:`UserInputError` for the first field whose own check fails."""
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check is not None else None
            if problem:
                raise UserInputError(f"`{f.name}` {problem}")

    def check_whole(self) -> None:
        """Checks that fields fit together (subclasses); raises :class:`UserInputError`."""

    def validate(self: C) -> C:
        """Every field, then the whole; returns ``self``."""
        self.check_fields()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                value.validate()
        self.check_whole()
        return self

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied, validated."""
        return dataclasses.replace(self, **changes).validate()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: nested configs as dicts, tuples as lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """From a ``to_dict()`` record, of this version or an earlier one (:meth:`upgrade`)."""
        d = cls.upgraded(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserInputError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def upgrade(cls, record: dict[str, Any]) -> dict[str, Any]:
        """A record written by an earlier version, in this version's layout (subclasses whose
        fields moved; ``record`` is a copy they may change). A field added since stays
        absent: :meth:`from_dict` gives it its default and :func:`differences` reports it,
        unless ``upgrade`` fills in what the earlier version did."""
        return record

    @classmethod
    def upgraded(cls, record: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`upgrade` applied to ``record``, then to each nested config's record."""
        record = cls.upgrade(dict(record))
        for f in dataclasses.fields(cls):
            nested = _nested_type(cls, f.name)
            if nested is not None and isinstance(record.get(f.name), Mapping):
                record[f.name] = nested.upgraded(record[f.name])
        return record


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested_type(cls: type, name: str) -> type[Config] | None:
    """The class of a field that holds a config of its own, if any."""
    hint = _hints(cls)[name]
    return hint if isinstance(hint, type) and issubclass(hint, Config) else None


def config_fields(cls: type[Config], prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """``(dotted name, field)`` of every leaf field, nested configs flattened ("data.path")."""
    for f in dataclasses.fields(cls):
        nested = _nested_type(cls, f.name)
        if nested is not None:
            yield from config_fields(nested, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def resumable_fields(cls: type[Config]) -> frozenset[str]:
    """Dotted names of the fields a resumed run may change."""
    return frozenset(name for name, f in config_fields(cls) if f.metadata.get("resumable"))


def differences(
    cls: type[Config], saved: Mapping[str, Any], current: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(dotted name, saved value, current value)`` of every field that differs between two
    ``to_dict()`` records of ``cls``, except the resumable ones; sorted by name. ``saved`` may
    come from an earlier version (:meth:`Config.upgrade`)."""
    skip = resumable_fields(cls)
    old, new = flatten(cls.upgraded(saved)), flatten(current)
    names = sorted((old.keys() | new.keys()) - skip)
    return [
        (name, old.get(name), new.get(name)) for name in names if old.get(name) != new.get(name)
    ]


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def field_type(cls: type[Config], dotted: str) -> Any:
    """The annotated type of a (dotted) field, ``Optional`` unwrapped."""
    *path, leaf = dotted.split(".")
    for name in path:
        cls = _hints(cls)[name]
    hint = _hints(cls)[leaf]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def apply_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """``config`` with dotted fields replaced (``{"data.path": ..., "lr": ...}``), validated."""
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for name, value in overrides.items():
        head, _, rest = name.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = apply_overrides(getattr(config, head), sub)
    return config.replace(**direct)


def pick_preset(presets: Mapping[str, Callable[..., C]], name: str, **overrides: Any) -> C:
    """``presets[name](**overrides)``; an unknown name is a :class:`UserInputError`."""
    try:
        make = presets[name]
    except KeyError:
        raise UserInputError(
            f"unknown preset {name!r}; choose one of {', '.join(presets)} (`preset`)"
        ) from None
    return make(**overrides)


def flag_of(name: str, f: dataclasses.Field) -> str | None:
    """The command-line flag of field ``name`` (the last part of a dotted name), or None."""
    flag = f.metadata.get("flag")
    if flag is True:
        return "--" + name.rpartition(".")[2].replace("_", "-")
    return flag or None


__all__ = [
    "Config",
    "apply_overrides",
    "at_least",
    "config_fields",
    "differences",
    "field_type",
    "flag_of",
    "flatten",
    "in_range",
    "non_negative",
    "one_of",
    "optional",
    "pick_preset",
    "positive",
    "resumable_fields",
    "setting",
]
