"""Turning HTML form fields into the dicts the service layer (and the API) take.

The forms do no validation of their own beyond parsing text into JSON-like values: the
services check everything, so a form and the API always agree on what is valid.
"""
from __future__ import annotations

from typing import Any

import yaml
from werkzeug.datastructures import MultiDict

from server.core.errors import ApiError
from server.core.validation import FieldErrors

MAX_VARS_TEXT = 64 * 1024


class _VarsLoader(yaml.SafeLoader):
    """Safe YAML without timestamps (kept as strings, as JSON would) and without aliases
    (``*x`` references can expand a small text into a huge document)."""

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError("while reading variables", None,
                                       "aliases (*name) are not supported", event.start_mark)
        return super().compose_node(parent, index)


_VarsLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class FormError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def parse_vars(raw: str, field: str = "vars") -> Any:
    """YAML or JSON (JSON is YAML) text -> value; empty text -> {}."""
    if not raw or not raw.strip():
        return {}
    if len(raw) > MAX_VARS_TEXT:
        raise FormError(field, f"variables must be at most {MAX_VARS_TEXT // 1024} KiB")
    try:
        value = yaml.load(raw, Loader=_VarsLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise FormError(field, f"not valid YAML or JSON{where}: {problem}") from None
    except RecursionError:
        raise FormError(field, "variables are nested too deeply") from None
    return {} if value is None else value


def dump_vars(value: dict[str, Any] | None) -> str:
    if not value:
        return ""
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)


def split_names(raw: str) -> list[str]:
    """'web, db  prod' -> ['web', 'db', 'prod'] (commas or whitespace)."""
    return [part for part in raw.replace(",", " ").split() if part]


def int_or_text(raw: str | None) -> Any:
    """A number field: '' -> None, '22' -> 22, anything else passed on for the service to refuse."""
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        return raw


def checkbox(form: MultiDict, name: str) -> bool:
    return form.get(name) in ("on", "1", "true", "yes")


def lines(raw: str) -> list[str]:
    """Textarea -> non-empty lines (one command per line)."""
    return [line.rstrip() for line in (raw or "").replace("\r\n", "\n").split("\n") if line.strip()]


def errors_of(err: ApiError | FormError) -> dict[str, str]:
    """Field -> message for the templates; '_' holds a message for the whole form."""
    if isinstance(err, FieldErrors):
        return dict(err.errors)
    return {err.field or "_": err.message}
