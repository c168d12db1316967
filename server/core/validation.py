"""Input checking shared by the API and the web forms.

Both front ends hand the service layer a plain dict; ``Fields`` checks it field by field,
collects every problem (the forms show each next to its field, the API reports them all)
and only then lets the service touch the database, so a rejected request writes nothing.
"""
from __future__ import annotations

import json
import keyword
import math
import re
from typing import Any, Callable, Iterable

from server.core.errors import ValidationError

Check = Callable[[Any], Any]
MISSING = object()
MAX_VARS_BYTES = 64 * 1024
INT32_MAX = 2**31 - 1

VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Host names and group names end up in an Ansible inventory; keep them to what it accepts.
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-\[\]@]*$")
GROUP_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
RESERVED_GROUPS = frozenset({"all", "ungrouped"})
MAX_VARS_DEPTH = 20
# Variable names are refused by prefix (compared case-insensitively): ``ansible_`` names
# change how, where and as whom Ansible runs code (connection, become, interpreter, shell,
# remote tmp dir, host-key checking, kinit command...) and ``tm_`` names are the ones Task
# Manager itself puts in the inventory (URLs, addresses, TLS settings). Connection settings
# come from the host's protocol and the task's credential; secrets belong in a credential.
RESERVED_VAR_PREFIXES = ("ansible_", "tm_")
# ``ansible_`` names reviewed as unable to change how or where code runs, connects or
# escalates. Deliberately empty: every name asked for so far either is a connection,
# become, interpreter, shell or tmp-dir setting, or overrides a fact that roles use to pick
# what to run (ansible_pkg_mgr, ansible_os_family...). Add a name only after that review.
ALLOWED_ANSIBLE_VARS: frozenset[str] = frozenset()


class Invalid(Exception):
    """Raised by a check with the reason, phrased to follow the field's name."""


class FieldErrors(ValidationError):
    """One or more invalid fields. The API shows the first as ``message``/``field`` and all of
    them under ``fields``; the web forms put each next to its input."""

    def __init__(self, errors: dict[str, str]):
        field, message = next(iter(errors.items()))
        super().__init__(message, field=field)
        self.errors = dict(errors)

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["fields"] = self.errors
        return body


class Fields:
    """Checks one input object: unknown keys, then each field, collecting the problems."""

    def __init__(self, data: Any, allowed: Iterable[str], *, partial: bool, ignored: Iterable[str] = ()):
        if not isinstance(data, dict):
            raise ValidationError("request body must be a JSON object")
        allowed = set(allowed)
        ignored = set(ignored) | {"id", "created_at", "updated_at"}
        unknown = sorted(str(k) for k in data if k not in allowed and k not in ignored)
        if unknown:
            raise ValidationError(
                f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(allowed))})",
                code="unknown_fields",
                field=unknown[0],
            )
        self.data = {k: v for k, v in data.items() if k in allowed}
        self.partial = partial
        self.errors: dict[str, str] = {}
        self.clean: dict[str, Any] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.clean

    def error(self, key: str, message: str) -> None:
        self.errors.setdefault(key, message)

    def take(self, key: str, check: Check, *, required: bool = False, default: Any = MISSING) -> None:
        """Check ``data[key]`` into ``clean[key]``; on create, apply ``required``/``default``."""
        if key not in self.data:
            if self.partial:
                return
            if required:
                self.error(key, f"'{key}' is required")
            elif default is not MISSING:
                self.clean[key] = default() if callable(default) else default
            return
        try:
            self.clean[key] = check(self.data[key])
        except Invalid as exc:
            self.error(key, f"'{key}' {exc}")

    def raise_if_invalid(self) -> None:
        if self.errors:
            raise FieldErrors(self.errors)


# --- checks: each returns the cleaned value or raises Invalid ------------------------------
# Each check made by a factory below carries ``check.schema``: the JSON Schema of what it
# accepts, which api/openapi.py puts in the spec (``schema_of``), so the limits, enums and
# patterns the server enforces and the ones the spec documents come from one place.

_PRINTABLE = "[^\\x00-\\x1f\\x7f]"
_PRINTABLE_LINES = "[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]"  # tabs and line breaks too


def schema_of(check: Check, **extra: Any) -> dict[str, Any]:
    """The JSON Schema a check carries (a copy), with ``extra`` keys added."""
    return {**getattr(check, "schema", {}), **extra}


def _with_schema(check: Check, schema: dict[str, Any]) -> Check:
    check.schema = schema  # type: ignore[attr-defined]
    return check

def valid_unicode(value: str) -> bool:
    """False for lone surrogates (JSON allows "\\ud800"; UTF-8 databases do not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _no_control(value: str, *, newlines: bool = False) -> None:
    if not valid_unicode(value):
        raise Invalid("must be valid Unicode text")
    for ch in value:
        if ch == "\x00" or (ord(ch) < 32 and not (newlines and ch in "\n\r\t")) or ch == "\x7f":
            raise Invalid("must not contain control characters")


def text(max_len: int, *, nullable: bool = False, allow_empty: bool = False, pattern: re.Pattern | None = None,
         pattern_hint: str = "", strip: bool = True, multiline: bool = False) -> Check:
    def check(value: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise Invalid("must be a string, not null")
        if not isinstance(value, str):
            raise Invalid(f"must be a string, not {type_name(value)}")
        if strip:
            value = value.strip()
        if not value:
            if allow_empty:
                return None if nullable else ""
            raise Invalid("must not be empty")
        if len(value) > max_len:
            raise Invalid(f"must be at most {max_len} characters")
        _no_control(value, newlines=multiline)
        if pattern is not None and not pattern.match(value):
            raise Invalid(pattern_hint or "has an invalid format")
        return value

    schema: dict[str, Any] = {"type": ["string", "null"] if nullable else "string", "maxLength": max_len}
    if pattern is not None:
        schema["pattern"] = pattern.pattern
    else:
        chars = _PRINTABLE_LINES if multiline else _PRINTABLE
        schema["pattern"] = f"^{chars}*$" if allow_empty else f"^{chars}*[^\\s\\x00-\\x1f\\x7f]{chars}*$"
    if not allow_empty:
        schema["minLength"] = 1
    return _with_schema(check, schema)


def integer(lo: int, hi: int, *, nullable: bool = False) -> Check:
    def check(value: Any) -> Any:
        if value is None and nullable:
            return None
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer, not {type_name(value)}")
        if not lo <= value <= hi:
            raise Invalid(f"must be between {lo} and {hi}")
        return value

    return _with_schema(check, {"type": ["integer", "null"] if nullable else "integer", "minimum": lo, "maximum": hi})


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, not {type_name(value)}")
    return value


def choice(values: Iterable[str]) -> Check:
    values = tuple(values)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in values:
            raise Invalid(f"must be one of {', '.join(values)}")
        return value

    return _with_schema(check, {"type": "string", "enum": list(values)})


def name_list(max_items: int = 1000, item: Check | None = None) -> Check:
    """A list of names, de-duplicated in order (hosts, groups)."""
    item = item or text(255)

    def check(value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise Invalid(f"must be a list of names, not {type_name(value)}")
        if len(value) > max_items:
            raise Invalid(f"must have at most {max_items} entries")
        out: list[str] = []
        for i, name in enumerate(value):
            try:
                name = item(name)
            except Invalid as exc:
                raise Invalid(f"entry {i + 1} {exc}") from None
            if name not in out:
                out.append(name)
        return out

    return _with_schema(check, {"type": ["array", "null"], "maxItems": max_items, "items": schema_of(item),
                                "description": "names; null is the empty list"})


def reserved_var(name: str) -> bool:
    """True for a name only Ansible's connection layer or Task Manager may set."""
    lower = name.lower()
    if lower in ALLOWED_ANSIBLE_VARS:
        return False
    return lower.startswith(RESERVED_VAR_PREFIXES)


def var_name_problem(key: Any) -> str | None:
    """Why ``key`` may not be a variable name (None when it may): the one rule for host,
    group, task, schedule and run variables, and for rows read back at run time."""
    if not isinstance(key, str) or not VAR_NAME_RE.match(key) or keyword.iskeyword(key):
        return f"has an invalid variable name {key!r} (use letters, digits and _, not starting with a digit)"
    if reserved_var(key):
        return (f"may not set {key!r}: names starting with ansible_ or tm_ are reserved (connection settings "
                "come from the host's protocol and the credential, and secrets belong in a credential)")
    return None


def _too_deep(value: Any, limit: int) -> bool:
    """Whether lists/objects nest more than ``limit`` levels (iterative: no RecursionError)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def variables(value: Any) -> dict[str, Any]:
    """A JSON object of Ansible variables: allowed top-level names, JSON values, bounded
    size and depth. Keys of nested objects are data, not variable names."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"must be an object, not {type_name(value)}")
    for key, item in value.items():
        problem = var_name_problem(key)
        if problem:
            raise Invalid(problem)
        if _too_deep(item, MAX_VARS_DEPTH):
            raise Invalid(f"variable {key!r} is nested more than {MAX_VARS_DEPTH} levels deep")
    try:
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise Invalid("must contain only JSON values (strings, numbers, booleans, null, lists, objects)") from exc
    except RecursionError as exc:
        raise Invalid("is nested too deeply") from exc
    if not valid_unicode(encoded):
        raise Invalid("must be valid Unicode text")
    if "\\u0000" in encoded:
        raise Invalid("must not contain NUL characters")
    if len(encoded) > MAX_VARS_BYTES:
        raise Invalid(f"must be at most {MAX_VARS_BYTES // 1024} KiB as JSON")
    return json.loads(encoded)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
