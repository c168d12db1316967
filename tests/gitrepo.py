"""A real upstream git repository for project tests: a bare repo and a work tree that pushes to it."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.test", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@example.test", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
           "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


class Upstream:
    """``bare`` is what Task Manager clones; ``commit(files)`` adds a commit and pushes it.

    Made world-readable under a fresh /tmp directory so an sshd test user can serve it too.
    """

    def __init__(self, default_branch: str = "main") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tm-upstream-"))
        os.chmod(self.root, 0o755)
        self.bare = self.root / "repo.git"
        self.work = self.root / "work"
        self.git(None, "init", "--bare", "-q", "-b", default_branch, str(self.bare))
        self.git(None, "init", "-q", "-b", default_branch, str(self.work))
        self.branch = self.current = default_branch

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def git(self, cwd: Path | None, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True,
                              check=True).stdout.strip()

    def commit(self, files: dict[str, str | bytes | None], message: str = "change", branch: str | None = None,
               force: bool = False) -> str:
        branch = branch or self.branch
        if branch != self.current:
            self.git(self.work, "checkout", "-q", "-B", branch)
            self.current = branch
        for name, content in files.items():
            path = self.work / name
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        self.git(self.work, "add", "-A")
        self.git(self.work, "commit", "-q", "-m", message)
        self.git(self.work, "push", "-q", *(["--force"] if force else []), str(self.bare), f"HEAD:refs/heads/{branch}")
        return self.git(self.work, "rev-parse", "HEAD")

    def rewind(self, commit: str) -> None:
        """Move the work tree back to ``commit`` (the next ``commit(force=True)`` is a forced push)."""
        self.git(self.work, "reset", "-q", "--hard", commit)

    def serve_as(self, user: str) -> None:
        """Let ``user`` (an sshd lab account) serve the repository: git refuses others' repositories."""
        subprocess.run(["chmod", "-R", "a+rX", str(self.root)], check=True)
        subprocess.run(["chown", "-R", user, str(self.bare)], check=True)

    def remove(self) -> None:
        subprocess.run(["rm", "-rf", str(self.root)], check=False)


PLAY = ("- name: {name}\n  hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: say\n      ansible.builtin.debug:\n        msg: \"{msg}\"\n")


def role_tarball(name: str, tasks: str) -> bytes:
    """A role as ansible-galaxy installs it from a local path (``src: ./vendor/<name>.tar.gz``)."""
    import io
    import tarfile

    files = {f"{name}/tasks/main.yml": tasks,
             f"{name}/meta/main.yml": "galaxy_info:\n  author: t\n  description: t\n  license: MIT\n"
                                      "  min_ansible_version: '2.9'\n  platforms: []\ndependencies: []\n"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
