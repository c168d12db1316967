"""Playbooks: safe resolution under the playbook dir, revisions, and the generated play
for ``commands`` tasks."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import yaml
from pathlib import Path
from typing import Any

from server.core.errors import ValidationError

PLAYBOOK_SUFFIXES = (".yml", ".yaml")


def resolve(playbook_dir: Path, name: str) -> Path:
    """The playbook's absolute path; refuses traversal, absolute paths and symlink escapes."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("'playbook' must be a path under the playbook directory", field="playbook")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\x00" in name:
        raise ValidationError("'playbook' must be a relative path without '..'", field="playbook")
    if rel.suffix not in PLAYBOOK_SUFFIXES:
        raise ValidationError("'playbook' must be a .yml or .yaml file", field="playbook")
    base = playbook_dir.resolve()
    path = (base / rel).resolve()
    if base not in path.parents:
        raise ValidationError("'playbook' escapes the playbook directory", field="playbook")
    if not path.is_file():
        raise ValidationError(f"playbook '{name}' does not exist in the playbook directory", field="playbook")
    return path


PLAY_KEYS = {"hosts", "import_playbook", "ansible.builtin.import_playbook"}
# The play a run puts before a playbook to set its secret launch values (runs.prepare.secret_play):
# bookkeeping, not the task's work, so its events make no steps (runs.recorder). Each run adds
# a random word, so a playbook naming its own play so cannot hide that play's steps.
LAUNCH_VALUES_PLAY = "Task Manager launch values"


def _yaml(text: str) -> Any:
    """Safe YAML that reads ``!vault``/``!unsafe`` values as opaque data (only the shape matters)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return None


def holds_plays(text: str) -> bool:
    """A playbook is a non-empty list of plays: mappings with ``hosts`` or an ``import_playbook``
    (not a task list, handlers, variables or a requirements file)."""
    doc = _yaml(text)
    return isinstance(doc, list) and bool(doc) and all(isinstance(p, dict) and PLAY_KEYS & set(p) for p in doc)


def list_playbooks(playbook_dir: Path) -> list[str]:
    """The files of the playbook directory that hold plays (the picker's list)."""
    base = playbook_dir.resolve()
    if not base.is_dir():
        return []
    return sorted(
        str(p.relative_to(base))
        for p in base.rglob("*")
        if p.suffix in PLAYBOOK_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts)
        and "roles" not in p.relative_to(base).parts and "vars" not in p.relative_to(base).parts
        and p.stat().st_size <= 1 << 20 and holds_plays(p.read_text(errors="replace"))
    )


def content_hash(path: Path, roles_dirs: list[Path] | None = None) -> str:
    """SHA-256 over the playbook and every file of the role dirs it may use."""
    h = hashlib.sha256()
    h.update(path.read_bytes())
    for rdir in roles_dirs or []:
        if rdir.is_dir():
            for f in sorted(p for p in rdir.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(rdir)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def tree_hash(base: Path, skip: list[Path]) -> str | None:
    """SHA-256 over every other file under ``base`` (None when there is none): each file's
    relative name and bytes, a symlink's target (never followed: the sandbox shows the tree,
    not what a link points at outside it). ``skip``: files and directories hashed elsewhere.
    ``.git`` is left out: Ansible loads nothing from it, and a fetch would move the digest."""
    base = base.resolve()
    skipped = {p.resolve() for p in skip}
    h = hashlib.sha256()
    found = False
    for root, dirs, files in os.walk(base):
        here = Path(root)
        names = sorted(dirs + files)
        dirs[:] = []
        for name in names:
            path = here / name
            if name == ".git" or path in skipped:
                continue
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                dirs.append(name)
                continue
            if stat.S_ISLNK(mode):
                data = b"symlink:" + os.fsencode(os.readlink(path))
            elif stat.S_ISREG(mode):
                data = path.read_bytes()
            else:
                continue  # a fifo or a device: nothing Ansible reads as content
            h.update(os.fsencode(str(path.relative_to(base))) + b"\0" + len(data).to_bytes(8, "big") + data)
            found = True
    return h.hexdigest() if found else None


def git_commit(directory: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "log", "-1", "--format=%H", "--", "."],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(directory), "status", "--porcelain", "--", "."],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def prompts(text: str) -> list[dict[str, Any]]:
    """The ``vars_prompt`` entries of a playbook's plays: ``{name, prompt, default, has_default}``.

    Unknown YAML tags (``!vault``, ``!unsafe``) read as opaque values: only the shape matters.
    """
    doc = _yaml(text)
    found = []
    for play in doc if isinstance(doc, list) else []:
        entries = play.get("vars_prompt") if isinstance(play, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                found.append({"name": entry["name"], "prompt": str(entry.get("prompt") or ""),
                              "default": entry.get("default"), "has_default": "default" in entry})
    return found


# The prompt the runner always answers: the protocol playbooks' credential secret
# (runs.protocols.SECRET_VAR, an empty line when the run has no such credential).
ANSWERED_PROMPTS = frozenset({"tm_secret"})


def prompt_problem(text: str, declared: set[str]) -> str | None:
    """Why a playbook would wait for an answer nobody gives: a ``vars_prompt`` without a default
    whose variable the task does not set (None when every prompt is answered)."""
    missing = [p["name"] for p in prompts(text)
               if not p["has_default"] and p["name"] not in declared | ANSWERED_PROMPTS]
    if not missing:
        return None
    names = ", ".join(repr(n) for n in missing)
    return (f"the playbook prompts for {names} (vars_prompt) without a default: give the prompt a default "
            f"or set the variable in the task's vars")


def command_step_name(index: int, command: str) -> str:
    """The step name of a ``commands`` task's command line ``index`` (0-based)."""
    return f"command {index + 1}: {command[:80]}"


def commands_play(commands: list[str], *, become: bool = False, progress: str | None = None) -> list[dict[str, Any]]:
    """The generated play for a ``commands`` task: its command lines, one step each.

    They run in one ``tm_commands`` task per host (plugins/action/tm_commands.py), which
    executes each line exactly as ``ansible.builtin.raw`` does (no Python needed on the
    target) without paying Ansible's per-task cost per line. Command lines are fixed when
    the task is saved; the runner passes them as ``!unsafe`` data so Jinja never evaluates
    them. ``progress`` is the prefix of the per-command progress lines the runner reads.
    """
    args: dict[str, Any] = {"commands": list(commands)}
    if progress:
        args["progress"] = progress
    return [
        {
            "name": "commands",
            "hosts": "all",
            "gather_facts": False,
            "become": bool(become),
            "tasks": [{"name": "commands", "tm_commands": args}],
        }
    ]


def commands_hash(commands: list[str]) -> str:
    return hashlib.sha256("\n".join(commands).encode()).hexdigest()


class _KeepTags(yaml.SafeLoader):
    """YAML loader that keeps Ansible's own tags (``!unsafe``, ``!vault``...) as they are."""


class _Tagged:
    def __init__(self, tag: str, node: yaml.Node) -> None:
        self.tag, self.node = tag, node


_KeepTags.add_multi_constructor("!", lambda loader, suffix, node: _Tagged("!" + suffix, node))


class _TagsDumper(yaml.SafeDumper):
    pass


_TagsDumper.add_representer(_Tagged, lambda dumper, data: data.node)


def for_run(text: str, serial: Any, max_fail_percentage: int | None, first: list[dict[str, Any]] | None = None) -> str:
    """A playbook's text as a run sees it: ``serial``/``max_fail_percentage`` set on each of its
    plays (a play's own setting is replaced: the task's rolling settings are what its runs
    promise), after the ``first`` plays (the one that asks for secret launch values)."""
    plays = yaml.load(text, Loader=_KeepTags)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(plays, list):
        raise ValidationError("the playbook is not a list of plays", field="playbook")
    for play in plays:
        if isinstance(play, dict) and "hosts" in play:
            if serial:
                play["serial"] = serial
            if max_fail_percentage is not None:
                play["max_fail_percentage"] = max_fail_percentage
    return yaml.dump((first or []) + plays, Dumper=_TagsDumper, sort_keys=False, allow_unicode=True)
