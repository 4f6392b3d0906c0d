"""Checks of configuration values, declared with the dataclass fields they check.

Every config dataclass (:class:`~sbnn.models.ModelConfig` and the run-config sections in
:mod:`sbnn.config`) declares each checked field with :func:`checked` and calls :func:`validate_fields`
from ``__post_init__``.  A check takes a given value and returns the normalised one (a list of
integers becomes a tuple, an integer in a float field a float) or raises :class:`BadValue` with the
reason.  The field is added by :func:`check_field` and :func:`validate_fields`, which raise
:class:`FieldError`: its ``key`` names the field, so a caller can name the key without reading the
message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, field, fields
from typing import Any, Callable

from sbnn.estimators import DEFAULT_ESTIMATOR, EstimatorConfig, estimator_names, get_estimator

Check = Callable[[Any], Any]

MAX_INTEGER = (1 << 63) - 1   # TOML integers are 64-bit; tomllib itself accepts any size
_CHECK = "check"              # the key of a field's check in its dataclass metadata


class BadValue(Exception):
    """Raised by a check: the reason a value is bad (the caller adds which field)."""


class FieldError(ValueError):
    """A bad value of a config field; the message is ``"<key>: <reason>"``.

    Attributes:
        key: the field's name, e.g. ``"threshold"``.
        reason: what is wrong, e.g. ``"must be > 0, got 0"``.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


# ----------------------------------------------------------------------------------------------------
# Fields
# ----------------------------------------------------------------------------------------------------


def checked(check: Check, *, default: Any = MISSING) -> Any:
    """A dataclass field (with ``default``, if given) whose value :func:`validate_fields` passes through ``check``."""
    return field(default=default, metadata={_CHECK: check})


def field_checks(config_class: type) -> dict[str, Check]:
    """The checked fields of a config dataclass by name, in field order."""
    return {f.name: f.metadata[_CHECK] for f in fields(config_class) if _CHECK in f.metadata}


def check_field(config_class: type, name: str, value: Any) -> Any:
    """``value`` checked and normalised as field ``name`` of ``config_class``.

    Raises:
        FieldError: with ``key == name``.
    """
    return check_value(name, field_checks(config_class)[name], value)


def validate_fields(config: Any) -> None:
    """Check every checked field of the (frozen) dataclass ``config`` in field order, storing the normalised values.

    Raises:
        FieldError: naming the first bad field.
    """
    for name, check in field_checks(type(config)).items():
        object.__setattr__(config, name, check_value(name, check, getattr(config, name)))


def check_value(name: str, check: Check, value: Any) -> Any:
    """``check(value)``, raising :class:`FieldError` with ``key == name`` where it fails."""
    try:
        return check(value)
    except BadValue as reason:
        raise FieldError(name, str(reason)) from None


# ----------------------------------------------------------------------------------------------------
# Checks (each returns the normalised value or raises BadValue with the reason)
# ----------------------------------------------------------------------------------------------------


def show(value: Any) -> str:
    """``value`` with its TOML kind, for a message: ``"string 'x'"``, ``"integer 3"``."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{kind.get(type(value), type(value).__name__)} {value!r}"


def optional(check: Check) -> Check:
    """``check``, but ``None`` (unset) passes unchanged."""
    return lambda value: None if value is None else check(value)


def integer(*, at_least: int | None = None) -> Check:
    """An integer (not a boolean) of at most 64 bits, ``>= at_least`` if given."""
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadValue(f"must be an integer, got {show(value)}")
        if at_least is not None and value < at_least:
            raise BadValue(f"must be >= {at_least}, got {value}")
        if value > MAX_INTEGER:
            raise BadValue(f"must be <= {MAX_INTEGER} (a 64-bit integer), got {value}")
        return value

    return check


def number(*, at_least: float | None = None, above: float | None = None, at_most: float | None = None) -> Check:
    """A finite number (integer or float, not a boolean) within the bounds, as a float."""
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadValue(f"must be a number, got {show(value)}")
        try:
            result = float(value)
        except OverflowError:   # an integer beyond float range
            result = math.inf
        if not math.isfinite(result):
            raise BadValue(f"must be finite, got {value if isinstance(value, float) else 'a huge integer'}")
        if at_least is not None and result < at_least:
            raise BadValue(f"must be >= {at_least:g}, got {value}")
        if above is not None and result <= above:
            raise BadValue(f"must be > {above:g}, got {value}")
        if at_most is not None and result > at_most:
            raise BadValue(f"must be <= {at_most:g}, got {value}")
        return result

    return check


def choice(choices: tuple[str, ...] | Callable[[], tuple[str, ...]]) -> Check:
    """One of ``choices`` (a tuple, or a function giving it when checked: a registry's names)."""
    def check(value: Any) -> str:
        options = choices() if callable(choices) else choices
        if not isinstance(value, str):
            raise BadValue(f"must be one of {', '.join(options)} (a string), got {show(value)}")
        if value not in options:
            raise BadValue(f"must be one of {', '.join(options)}, got {value!r}")
        return value

    return check


def boolean(value: Any) -> bool:
    """``True`` or ``False`` (not 0 or 1)."""
    if not isinstance(value, bool):
        raise BadValue(f"must be true or false, got {show(value)}")
    return value


def or_auto(check: Check) -> Check:
    """``"auto"`` (a value chosen when the data are known), or a value ``check`` accepts."""
    def either(value: Any) -> Any:
        if value == "auto":
            return "auto"
        try:
            return check(value)
        except BadValue as error:
            reason = str(error)
            raise BadValue(reason.replace(", got", ' (or "auto"), got', 1) if ", got" in reason
                           else f'{reason} (or "auto")') from None

    return either


def positive_integers(*, allow_empty: bool = False) -> Check:
    """A list or tuple of integers >= 1, as a tuple; empty only with ``allow_empty``."""
    def check(value: Any) -> tuple[int, ...]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise BadValue(f"must be a list of positive integers, got {show(value)}")
        items = tuple(value)
        if not items and not allow_empty:
            raise BadValue("must not be empty")
        if any(isinstance(item, bool) or not isinstance(item, int) or item < 1 for item in items):
            raise BadValue(f"must be a list of positive integers, got {show(value)}")
        return items

    return check


def string(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise BadValue(f"must be a non-empty string, got {show(value)}")
    return value


def path(value: Any) -> str:
    """A file or folder path: a non-empty string without NUL characters."""
    value = string(value)
    if "\0" in value:
        raise BadValue("must be a file or folder path, got a string holding a NUL character")
    return value


def estimator_value(*, method_defaults: bool) -> Check:
    """An :class:`~sbnn.estimators.EstimatorConfig`, or what describes one.

    Args:
        method_defaults: ``True`` for a run config's value: a method name (``"iwst"``) or a table of
            settings, which the method's config defaults complete (a table without ``method`` gets
            :data:`~sbnn.estimators.DEFAULT_ESTIMATOR`'s).  ``False`` for ``ModelConfig(estimator=...)``
            in Python: only a dict of :class:`EstimatorConfig` fields, taken as given (what
            ``ModelConfig.to_dict`` writes), so ``{"method": "agr"}`` without ``tau`` is refused there.
    """
    def check(value: Any) -> EstimatorConfig:
        if isinstance(value, EstimatorConfig):
            return value
        if isinstance(value, str) and method_defaults:
            settings = _named_estimator(value)
        elif isinstance(value, dict):
            settings = _completed_table(value) if method_defaults else _known_settings(value)
        elif method_defaults:
            raise BadValue(f"must be a method name or a table of estimator settings, got {show(value)}")
        else:
            raise BadValue(f"must be an EstimatorConfig or a dict of its fields, got {show(value)}")
        try:
            return EstimatorConfig(**settings)
        except (TypeError, ValueError) as error:
            raise BadValue(str(error)) from None

    return check


def _named_estimator(method: str) -> dict[str, Any]:
    methods = estimator_names()
    if method not in methods:
        raise BadValue(f"must be one of {', '.join(methods)} or a table of estimator settings, got {method!r}")
    return {"method": method, **get_estimator(method).defaults_for({})}


def _known_settings(table: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(EstimatorConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise BadValue(f"unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    return dict(table)


def _completed_table(table: dict[str, Any]) -> dict[str, Any]:
    settings = _known_settings(table)
    methods = estimator_names()
    method = settings.get("method", DEFAULT_ESTIMATOR.method)
    if not isinstance(method, str) or method not in methods:
        raise BadValue(f"method must be one of {', '.join(methods)}, got {method!r}")
    # A table names what it changes; the method's own defaults fill what it needs and leaves out
    # (IW-ST's p and lam are alternatives: p = 1/2 only when neither is given).
    return {**get_estimator(method).defaults_for(settings), **settings, "method": method}


__all__ = [
    "MAX_INTEGER",
    "BadValue",
    "Check",
    "FieldError",
    "boolean",
    "check_field",
    "check_value",
    "checked",
    "choice",
    "estimator_value",
    "field_checks",
    "integer",
    "number",
    "optional",
    "path",
    "positive_integers",
    "show",
    "string",
    "validate_fields",
]
