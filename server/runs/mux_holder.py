"""The connection holder's loop, run inside its own sandbox (``python -I``, stdlib only).

It reads one JSON request a line on stdin, ``{"path": ..., "argv": [...]}``, starts that ssh
ControlMaster (``ssh -M -N -f``: it forks into the background once authenticated) and
answers ``{"path": ..., "ok": bool, "error": ...}`` on stdout. The masters are children of
this sandbox, not of any run, so they outlive the runs that use them. When stdin closes (the
worker closed the holder or died) the loop ends; the sandbox's PID namespace ends with its
first process, and every master with it.
"""
import json
import subprocess
import sys
import tempfile
import threading

_out = threading.Lock()


def _answer(reply: dict) -> None:
    with _out:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def _start(request: dict) -> None:
    try:
        # a file, not a pipe: the backgrounded master keeps its stderr open for as long as it lives
        with tempfile.TemporaryFile() as err:
            proc = subprocess.run(request["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, timeout=60, check=False)
            err.seek(0)
            error = err.read().decode(errors="replace").strip()[-300:]
        _answer({"path": request["path"], "ok": proc.returncode == 0, "error": error})
    except Exception as exc:  # a reply for every request: the worker waits on it
        _answer({"path": request.get("path"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main() -> None:
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        threading.Thread(target=_start, args=(request,), daemon=True).start()


if __name__ == "__main__":
    main()
