"""Launch variables and options: what a task declares, and the values a run is given.

A task may declare typed variables (``text, integer, number, boolean, choice, multichoice,
secret``). The declarations are checked when the task is saved (``declarations``); the values
of every launch - API, web form, schedule, relaunch - are checked against them
(``check_values``), so a run only ever sees values of the declared type and range.

In a ``commands`` task a line may hold ``[#NAME#]``: at run time it becomes the value as one
shell-quoted word (``render``; a multichoice gives one quoted word per value). The
substitution is one pass over the saved line, so a value that itself contains ``[#X#]`` stays
literal text. Secret values are never in the saved line or the step names: the step name is
the line with its placeholders, and the secret reaches the run only through a prompt answer
(runs/prepare.py).

Also here: the rolling-run settings (``serial``, ``max_fail_percentage``) and tag lists.
"""
from __future__ import annotations

import fnmatch
import math
import re
import shlex
from typing import Any

from server.core.errors import ValidationError
from server.core.validation import VAR_NAME_RE, Invalid, reserved_var, type_name, valid_unicode

TYPES = ("text", "integer", "number", "boolean", "choice", "multichoice", "secret")
DECLARATION_KEYS = ("name", "type", "label", "required", "default", "choices", "min", "max", "pattern")
MAX_VARIABLES = 100
MAX_CHOICES = 200
MAX_TEXT = 4096
MASK = "********"
PLACEHOLDER_RE = re.compile(r"\[#([A-Za-z_][A-Za-z0-9_]*)#\]")
TAG_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
SERIAL_RE = re.compile(r"^([1-9][0-9]{0,4})%?$")


# --- declarations (checked when a task is saved) ---------------------------------------------

def _check_text(value: Any, decl: dict[str, Any], label: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{label} must be a string, not {type_name(value)}")
    if not valid_unicode(value) or "\x00" in value:
        raise Invalid(f"{label} must be valid text without NUL characters")
    if len(value) > MAX_TEXT:
        raise Invalid(f"{label} must be at most {MAX_TEXT} characters")
    lo, hi = decl.get("min"), decl.get("max")
    if lo is not None and len(value) < lo:
        raise Invalid(f"{label} must be at least {lo} characters")
    if hi is not None and len(value) > hi:
        raise Invalid(f"{label} must be at most {hi} characters")
    if decl.get("pattern") and not re.fullmatch(decl["pattern"], value):
        raise Invalid(f"{label} does not match the pattern {decl['pattern']}")
    return value


def _check_number(value: Any, decl: dict[str, Any], label: str, integer: bool) -> int | float:
    if isinstance(value, float) and integer and value.is_integer():
        value = int(value)
    ok = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok) or (isinstance(value, float) and not math.isfinite(value)):
        raise Invalid(f"{label} must be {'an integer' if integer else 'a number'}, not {type_name(value)}")
    lo, hi = decl.get("min"), decl.get("max")
    if lo is not None and value < lo:
        raise Invalid(f"{label} must be at least {lo}")
    if hi is not None and value > hi:
        raise Invalid(f"{label} must be at most {hi}")
    return value


def check_value(decl: dict[str, Any], value: Any, label: str) -> Any:
    """``value`` if it fits the declaration (type, range, choices, pattern), else Invalid."""
    kind = decl["type"]
    if kind in ("text", "secret"):
        return _check_text(value, decl, label)
    if kind in ("integer", "number"):
        return _check_number(value, decl, label, kind == "integer")
    if kind == "boolean":
        if not isinstance(value, bool):
            raise Invalid(f"{label} must be true or false, not {type_name(value)}")
        return value
    choices = decl.get("choices") or []
    if kind == "choice":
        if not isinstance(value, str) or value not in choices:
            raise Invalid(f"{label} must be one of {', '.join(choices)}")
        return value
    if not isinstance(value, list):  # multichoice
        raise Invalid(f"{label} must be a list of choices, not {type_name(value)}")
    bad = [v for v in value if not isinstance(v, str) or v not in choices]
    if bad:
        raise Invalid(f"{label} has {bad[0]!r}, which is not one of {', '.join(choices)}")
    out = list(dict.fromkeys(value))
    lo, hi = decl.get("min"), decl.get("max")
    if lo is not None and len(out) < lo:
        raise Invalid(f"{label} must have at least {lo} choices")
    if hi is not None and len(out) > hi:
        raise Invalid(f"{label} must have at most {hi} choices")
    return out


def _declaration(item: Any, seen: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise Invalid(f"must be objects, not {type_name(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not VAR_NAME_RE.match(name):
        raise Invalid(f"has an invalid variable name {name!r} (use letters, digits and _, not starting "
                      "with a digit)")
    where = f"variable {name!r}"
    if reserved_var(name):
        raise Invalid(f"{where}: names starting with ansible_ or tm_ are reserved")
    if name in seen:
        raise Invalid(f"{where} is declared twice")
    unknown = sorted(str(k) for k in item if k not in DECLARATION_KEYS)
    if unknown:
        raise Invalid(f"{where} has unknown key(s) {', '.join(unknown)} (allowed: {', '.join(DECLARATION_KEYS)})")
    kind = item.get("type", "text")
    if kind not in TYPES:
        raise Invalid(f"{where} has unknown type {kind!r} (use one of {', '.join(TYPES)})")
    label = item.get("label") or name
    if not isinstance(label, str) or len(label) > 200:
        raise Invalid(f"{where}: 'label' must be a string of at most 200 characters")
    required = item.get("required", False)
    if not isinstance(required, bool):
        raise Invalid(f"{where}: 'required' must be true or false")
    decl: dict[str, Any] = {"name": name, "type": kind, "label": label, "required": required}
    for bound in ("min", "max"):
        value = item.get(bound)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Invalid(f"{where}: {bound!r} must be a number")
        if kind in ("boolean", "choice"):
            raise Invalid(f"{where}: {bound!r} does not apply to type {kind}")
        decl[bound] = value
    if decl.get("min") is not None and decl.get("max") is not None and decl["min"] > decl["max"]:
        raise Invalid(f"{where}: 'min' is greater than 'max'")
    choices = item.get("choices")
    if kind in ("choice", "multichoice"):
        if (not isinstance(choices, list) or not choices or len(choices) > MAX_CHOICES
                or not all(isinstance(c, str) and c and len(c) <= 200 for c in choices)):
            raise Invalid(f"{where}: type {kind} needs 'choices', a list of 1 to {MAX_CHOICES} non-empty strings")
        decl["choices"] = list(dict.fromkeys(choices))
    elif choices is not None:
        raise Invalid(f"{where}: 'choices' applies to choice and multichoice only")
    pattern = item.get("pattern")
    if pattern is not None:
        if kind not in ("text", "secret"):
            raise Invalid(f"{where}: 'pattern' applies to text and secret only")
        if not isinstance(pattern, str) or len(pattern) > 500:
            raise Invalid(f"{where}: 'pattern' must be a regular expression of at most 500 characters")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise Invalid(f"{where}: 'pattern' is not a valid regular expression ({exc})") from None
        decl["pattern"] = pattern
    if "default" in item and item["default"] is not None:
        if kind == "secret":
            raise Invalid(f"{where}: a secret variable has no default (it would be stored in clear)")
        try:
            decl["default"] = check_value(decl, item["default"], "its 'default'")
        except Invalid as exc:
            raise Invalid(f"{where}: {exc}") from None
    seen.add(name)
    return decl


def declarations(value: Any) -> list[dict[str, Any]]:
    """The checked list of variable declarations of a task (the ``variables`` field)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(f"must be a list of variable declarations, not {type_name(value)}")
    if len(value) > MAX_VARIABLES:
        raise Invalid(f"must declare at most {MAX_VARIABLES} variables")
    seen: set[str] = set()
    return [_declaration(item, seen) for item in value]


def placeholders(commands: list[str]) -> list[str]:
    """The names used as ``[#NAME#]`` in command lines, in order of first use."""
    return list(dict.fromkeys(m.group(1) for c in commands for m in PLACEHOLDER_RE.finditer(c)))


def undeclared_placeholders(commands: list[str], decls: list[dict[str, Any]]) -> list[str]:
    names = {d["name"] for d in decls}
    return [n for n in placeholders(commands) if n not in names]


# --- values (checked at every launch) --------------------------------------------------------

def secret_names(decls: list[dict[str, Any]] | None) -> list[str]:
    return [d["name"] for d in decls or [] if d["type"] == "secret"]


def check_values(decls: list[dict[str, Any]] | None, values: dict[str, Any],
                 secret_given: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(public values, secret values) for a launch of a task with ``decls``.

    ``values`` are the run variables as given (already checked as Ansible variables). On a
    task without declarations they pass unchanged. Otherwise each must be declared and fit
    its declaration, defaults fill what is missing, and a missing required one is refused.
    A secret value given as ``********`` (a masked copy) counts as missing unless
    ``secret_given`` (e.g. the stored values of a schedule) holds it. Errors are 422s naming
    ``vars.NAME``.
    """
    if not decls:
        return dict(values), {}
    by_name = {d["name"]: d for d in decls}
    for name in values:
        if name not in by_name:
            raise ValidationError(f"'vars.{name}' is not a variable of this task (declared: "
                                  f"{', '.join(by_name) or 'none'})", field=f"vars.{name}")
    public: dict[str, Any] = {}
    hidden: dict[str, str] = {}
    for decl in decls:
        name = decl["name"]
        value = values.get(name)
        if decl["type"] == "secret" and (value is None or value == MASK):
            value = (secret_given or {}).get(name)
        if value is None or (value == "" and decl["type"] in ("text", "secret")):
            if decl.get("default") is not None:
                public[name] = decl["default"]
            elif decl["required"]:
                raise ValidationError(f"'vars.{name}' is required ({decl['label']})", field=f"vars.{name}")
            continue
        try:
            value = check_value(decl, value, f"'vars.{name}'")
        except Invalid as exc:
            raise ValidationError(str(exc), field=f"vars.{name}") from None
        if decl["type"] == "secret":
            hidden[name] = value
        else:
            public[name] = value
    return public, hidden


def masked(public: dict[str, Any], hidden: dict[str, Any]) -> dict[str, Any]:
    """The values as stored and shown: every secret one as ``********``."""
    return {**public, **{name: MASK for name in hidden}}


# --- commands ------------------------------------------------------------------------------

def quoted(value: Any) -> str:
    """A value as shell words: one quoted word, or one per item of a list (multichoice)."""
    if isinstance(value, list):
        return " ".join(quoted(v) for v in value)
    if isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def render(command: str, values: dict[str, Any]) -> str:
    """``command`` with each ``[#NAME#]`` of ``values`` replaced by its quoted word(s), in
    one pass (a value is never scanned again); other placeholders stay as they are."""
    def sub(m: re.Match) -> str:
        name = m.group(1)
        return quoted(values[name]) if name in values else m.group(0)

    return PLACEHOLDER_RE.sub(sub, command)


# --- options -------------------------------------------------------------------------------

def tag_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, list) or len(value) > 100:
        raise Invalid("must be a list of at most 100 tags")
    for tag in value:
        if not isinstance(tag, str) or not TAG_RE.match(tag):
            raise Invalid(f"has an invalid tag {tag!r} (letters, digits, '_', '.', '-')")
    return list(dict.fromkeys(value))


def _serial_item(item: Any) -> int | str:
    if isinstance(item, int) and not isinstance(item, bool) and 1 <= item <= 100_000:
        return item
    if isinstance(item, str) and SERIAL_RE.match(item.strip()):
        item = item.strip()
        if item.endswith("%") and int(item[:-1]) > 100:
            raise Invalid("percentages must be at most 100%")
        return item if item.endswith("%") else int(item)
    raise Invalid(f"has {item!r}: use a number of hosts, a percentage such as '25%', or a list of them")


def serial(value: Any) -> int | str | list[int | str] | None:
    """Ansible's ``serial``: hosts per batch, as a number, a percentage or a list of them."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        if len(value) > 20:
            raise Invalid("must list at most 20 batch sizes")
        return [_serial_item(v) for v in value]
    return _serial_item(value)


# --- limit: Ansible host patterns, always within the task's targets ---------------------------

MAX_LIMIT = 1000


def limit_terms(value: Any) -> list[str]:
    """The terms of a ``limit``: a list of names/patterns, or one Ansible pattern string
    (``web:!web-03``, ``a,b``, ``shop:&eu``)."""
    if isinstance(value, list):
        raw = value
    elif isinstance(value, str):
        text = value.strip()
        raw = text.split(",") if "," in text else text.split(":")
    else:
        raise Invalid(f"must be a host pattern or a list of names, not {type_name(value)}")
    terms = [t.strip() for t in raw if isinstance(t, str) and t.strip()]
    if len(terms) != len(raw) or not terms or len(terms) > MAX_LIMIT:
        raise Invalid(f"must hold 1 to {MAX_LIMIT} non-empty host names, group names or patterns")
    for term in terms:
        if len(term) > 255 or not valid_unicode(term) or any(ord(c) < 32 for c in term):
            raise Invalid(f"has an invalid term {term[:40]!r}")
    return terms


def _term_hosts(term: str, hosts: list[Any]) -> list[Any]:
    """The hosts among ``hosts`` one positive term names: a host, a group, a glob or ~regex."""
    if term == "all" or term == "*":
        return list(hosts)
    if term.startswith("~"):
        try:
            rx = re.compile(term[1:])
        except re.error:
            raise Invalid(f"has an invalid regular expression {term!r}") from None
        return [h for h in hosts if rx.search(h.name)]
    if any(c in term for c in "*?["):
        return [h for h in hosts if fnmatch.fnmatchcase(h.name, term)
                or any(fnmatch.fnmatchcase(g.name, term) for g in _all_groups(h))]
    return [h for h in hosts if h.name == term or any(g.name == term for g in _all_groups(h))]


def _all_groups(host: Any) -> list[Any]:
    """The host's groups and their ancestors: a host of ``east`` is in ``usa`` when ``usa``
    has ``east`` as a child, as in Ansible's patterns."""
    return [g for group in host.groups for g in group.lineage()]


def select_hosts(hosts: list[Any], terms: list[str]) -> list[Any]:
    """Ansible's pattern rules over the task's own targets: the union of the plain terms
    (all of them when there are none), then ``&term`` intersections and ``!term`` exclusions.
    A term that names none of the targets is refused (a typo must not silently run nowhere)."""
    chosen: dict[int, Any] = {}
    plain = [t for t in terms if not t.startswith(("!", "&"))]
    for term in plain or ["all"]:
        found = _term_hosts(term, hosts)
        if not found:
            raise Invalid(f"term {term!r} matches none of the task's target hosts")
        chosen.update((h.id, h) for h in found)
    for term in terms:
        if term[0] in "!&":
            found = {h.id for h in _term_hosts(term[1:], hosts)}
            if not found:
                raise Invalid(f"term {term!r} matches none of the task's target hosts")
            chosen = {i: h for i, h in chosen.items() if (i in found) == (term[0] == "&")}
    return sorted(chosen.values(), key=lambda h: h.name)
