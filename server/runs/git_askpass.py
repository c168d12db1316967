"""GIT_ASKPASS helper: answers git's username prompt with ``TM_ASKPASS_USER`` and its password
prompt with what it reads from the inherited pipe ``TM_ASKPASS_FD`` (gitsync.session).

The secret is never in this program's arguments or environment, only in the pipe, which
can be read once.
"""
import os
import sys


def main() -> int:
    prompt = sys.argv[1] if len(sys.argv) > 1 else ""
    if prompt.lower().startswith("username"):
        sys.stdout.write(os.environ.get("TM_ASKPASS_USER", "git") + "\n")
        return 0
    fd = int(os.environ.get("TM_ASKPASS_FD", "-1"))
    if fd < 0:
        return 1
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return 1
        if not chunk:
            break
        chunks.append(chunk)
    if not chunks:
        return 1
    sys.stdout.write(b"".join(chunks).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
