"""Where a host's or a directory server's ``ca_bundle`` may lie on the Task Manager server.

Host variables and directory settings name CA files by path; the path is checked here, before
anything reads it, so that no form or API call can probe or read other files of the server.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CA_DIRS = ("/etc/ssl/certs", "/usr/local/share/ca-certificates", "/usr/share/ca-certificates")
CA_DIRS_ENV = "TASKMANAGER_CA_DIRS"


def ca_dirs() -> list[Path]:
    """Directories a ``ca_bundle`` may lie in: the system CA directories and the
    colon-separated absolute paths of ``TASKMANAGER_CA_DIRS``."""
    extra = os.environ.get(CA_DIRS_ENV, "").split(":")
    return [Path(os.path.normpath(d)) for d in (*DEFAULT_CA_DIRS, *extra) if d and os.path.isabs(d)]


def _under(path: Path, dirs: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in dirs)


def ca_bundle_problem(value: str) -> str | None:
    """Why ``value`` cannot be a CA bundle path (None when it can).

    A path outside the allowed directories gets the same answer whether or not it exists
    (no probing the server's files through host variables): the path is first judged as
    written (no ``..``), and only inside an allowed directory are symlinks resolved and the
    file looked at."""
    dirs = ca_dirs()
    outside = (f"must be a file under {', '.join(str(d) for d in dirs)} "
               f"(the administrator can allow more directories with {CA_DIRS_ENV})")
    if not os.path.isabs(value):
        return "must be an absolute path"
    if ".." in Path(value).parts or not _under(Path(os.path.normpath(value)), dirs):
        return outside
    resolved = Path(os.path.realpath(value))
    if not _under(resolved, dirs + [Path(os.path.realpath(d)) for d in dirs]):
        return outside
    if not resolved.is_file():
        return f"{value} does not exist on the Task Manager server (or is not a file)"
    return None
