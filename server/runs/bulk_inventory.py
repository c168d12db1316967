"""Pasted or uploaded host lists (the bulk hosts page): an Ansible inventory, read by
``ansible-inventory`` exactly as ``flask hosts import`` reads a file, or a CSV file.

Both become an ``inventory.ImportPlan`` that the page previews (hosts, groups, skipped
variables and why, values kept literal, errors with their line) before anything is written;
``inventory.apply_plan`` writes it. CSV columns: ``name`` (required), ``address``, ``port``,
``protocol``, ``groups`` (separated by ``;`` or spaces); any other column is a host variable.
"""
from __future__ import annotations

import csv
import io
import re
import tempfile
from pathlib import Path
from typing import Any

from server.catalog.hosts import HOST_CHECKS
from server.core.errors import ValidationError
from server.core.validation import Invalid
from server.runs import inventory

MAX_TEXT = 2 * 1024 * 1024
FORMATS = ("auto", "ini", "yaml", "csv")
CSV_FIELDS = ("name", "address", "port", "protocol", "groups")


def detect(text: str) -> str:
    """``csv`` when the first line is a CSV header naming ``name``; ``yaml`` when the first
    meaningful line is a YAML mapping key or document start; ``ini`` otherwise."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if "," in stripped and "name" in [c.strip().lower() for c in stripped.split(",")]:
            return "csv"
        if stripped == "---" or re.match(r"^[A-Za-z0-9_.\-]+:\s*(#.*)?$", stripped):
            return "yaml"
        return "ini"
    return "ini"


def _line_of(text: str, name: str) -> int | None:
    """The first line mentioning ``name`` (an inventory error names a host, not a line)."""
    for number, line in enumerate(text.splitlines(), 1):
        if name in line:
            return number
    return None


def _with_lines(text: str, plan: inventory.ImportPlan) -> inventory.ImportPlan:
    located = []
    for message in plan.errors:
        names = re.findall(r"'([^']+)'", message)
        line = _line_of(text, names[0]) if names else None
        located.append(f"line {line}: {message}" if line else message)
    plan.errors = located
    return plan


def plan_inventory_text(text: str, fmt: str) -> inventory.ImportPlan:
    """An INI or YAML inventory given as text, read by ansible-inventory from a private file."""
    suffix = ".yml" if fmt == "yaml" else ".ini"
    with tempfile.TemporaryDirectory(prefix="tm-bulk-") as tmp:
        path = Path(tmp) / f"inventory{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            plan = inventory.read_plan(str(path))
        except ValidationError as exc:
            plan = inventory.ImportPlan(errors=[exc.message.replace(str(path), "the inventory")])
    return _with_lines(text, plan)


def _csv_host(row: dict[str, Any], plan: inventory.ImportPlan) -> tuple[str, dict[str, Any]]:
    """One CSV row checked by the same checks as the host form; raises Invalid with the field."""
    values: dict[str, Any] = {}
    for key in CSV_FIELDS:
        raw = (row.get(key) or "").strip()
        try:
            if key == "name":
                values[key] = HOST_CHECKS["name"](raw)
            elif key == "address":
                values[key] = HOST_CHECKS["address"](raw) if raw else None
            elif key == "port":
                values[key] = HOST_CHECKS["port"](int(raw)) if raw.isdigit() else HOST_CHECKS["port"](raw or None)
            elif key == "protocol":
                values[key] = HOST_CHECKS["protocol"](raw or "ssh")
            elif key == "groups":
                values[key] = HOST_CHECKS["groups"](raw.replace(";", " ").split())
        except Invalid as exc:
            raise Invalid(f"'{key}' {exc}") from None
    extra = {k: v for k, v in row.items() if k not in CSV_FIELDS and k and v not in (None, "")}
    name = values["name"]
    kept = plan.keep(f"host {name}", extra)
    return name, {"address": values["address"] or name, "port": values["port"], "protocol": values["protocol"],
                  "vars": kept, "groups": values["groups"]}


def plan_csv(text: str) -> inventory.ImportPlan:
    plan = inventory.ImportPlan()
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "name" not in fields:
        plan.errors.append("line 1: the header must name a 'name' column")
        return plan
    reader.fieldnames = fields
    for row in reader:
        line = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        if None in row:
            plan.errors.append(f"line {line}: more values than columns")
            continue
        try:
            name, spec = _csv_host(row, plan)
        except Invalid as exc:
            plan.errors.append(f"line {line}: {exc}")
            continue
        if name in plan.hosts:
            plan.errors.append(f"line {line}: host {name!r} appears twice")
            continue
        plan.hosts[name] = spec
        for group in spec["groups"]:
            plan.groups.setdefault(group, {"vars": {}, "priority": None, "children": []})
    if not plan.hosts and not plan.errors:
        plan.errors.append("the file contains no hosts")
    return plan


def plan_text(text: str, fmt: str = "auto") -> tuple[str, inventory.ImportPlan]:
    """(format used, plan) for pasted or uploaded text."""
    if fmt not in FORMATS:
        raise ValidationError(f"'format' must be one of {', '.join(FORMATS)}", field="format")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT:
        raise ValidationError(f"'inventory' must be at most {MAX_TEXT // 1024 // 1024} MB", field="inventory")
    if not text.strip():
        raise ValidationError("'inventory' is empty: paste an inventory or choose a file", field="inventory")
    if fmt == "auto":
        fmt = detect(text)
    return fmt, plan_csv(text) if fmt == "csv" else plan_inventory_text(text, fmt)
