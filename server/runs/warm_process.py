"""The warm process: ansible-playbook imported ahead of its run, inside the run's sandbox.

Started by the worker (warm.py) with ``python -I warm_process.py SOCKET STUBS``, in the same
bubblewrap sandbox, uid and scrubbed environment as a cold run. It imports Ansible's
playbook CLI, executor and common plugins, then serves exactly one run on ``SOCKET``:
the attach client (warm_attach.py) passes the run's terminal (stdin, stdout, stderr), its
argv, environment, directory and ssh key fifo. This process takes the terminal as its own,
applies the environment, re-reads Ansible's configuration from it (Ansible keeps settings
in module constants read at import, and plugin search paths in its loaders), runs
ansible-playbook in-process and sends back its exit status. Then it exits: it never serves
a second run. If the client goes away first (cancel, timeout), it exits at once, and the
sandbox's PID namespace takes every process of the run with it.

Only the standard library is imported before Ansible; nothing here reads the database.
"""
from __future__ import annotations

import ast
import fcntl
import importlib
import json
import os
import socket
import subprocess
import sys
import termios
import threading
import time

MARK_ENV = "TM_EXECUTION_RUN"  # as procs.MARK_ENV
AGENT_SOCKET = "/tmp/ssh-warm/agent.sock"  # in the sandbox's own /tmp, named as ssh-agent names its own
# Plugins nearly every run loads: imported while waiting (their module code, not their state).
PRELOAD = (
    "ansible.executor.playbook_executor", "ansible.executor.task_queue_manager", "ansible.executor.task_executor",
    "ansible.executor.process.worker", "ansible.plugins.strategy.linear", "ansible.plugins.strategy.free",
    "ansible.plugins.connection.ssh", "ansible.plugins.connection.local", "ansible.plugins.action.normal",
    "ansible.plugins.action.command", "ansible.plugins.action.shell", "ansible.plugins.action.gather_facts",
    "ansible.plugins.action.set_fact", "ansible.plugins.callback.default", "ansible.plugins.inventory.yaml",
    "ansible.plugins.shell.sh", "ansible.plugins.become.sudo", "ansible.plugins.cache.jsonfile",
    "ansible.plugins.vars.host_group_vars", "ansible.plugins.filter.core", "ansible.plugins.test.core",
    "ansible.inventory.manager", "ansible.vars.manager", "ansible.parsing.dataloader",
    "ansible.template",
)


def loader_settings() -> dict[str, str]:
    """Module-level plugin loader -> the constant its search path was read from (at import)."""
    import ansible.plugins.loader as loader

    with open(loader.__file__, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    found = {}
    for node in tree.body:
        call = getattr(node, "value", None)
        if (isinstance(node, ast.Assign) and isinstance(call, ast.Call) and getattr(call.func, "id", "") == "PluginLoader"
                and len(call.args) > 2 and isinstance(call.args[2], ast.Attribute)
                and getattr(call.args[2].value, "id", "") == "C" and isinstance(node.targets[0], ast.Name)):
            found[node.targets[0].id] = call.args[2].attr
    return found


def cache_builtin_routing() -> None:
    """ansible.builtin's routing table (Ansible's own ansible_builtin_runtime.yml, ~0.1 s of YAML),
    parsed ahead. The collection loader passes its parser the content and a content id so that
    a cache can stand in; this one answers for exactly those bytes, once."""
    import ansible
    from ansible.utils.collection_loader import _collection_finder as finder

    parse = finder._meta_yml_to_dict
    with open(os.path.join(os.path.dirname(ansible.__file__), "config", "ansible_builtin_runtime.yml"), "rb") as fh:
        raw = fh.read()
    parsed = {raw: parse(raw, ("ansible.builtin", "runtime.yml"))}

    def cached(data: bytes | str, content_id: tuple[str, str]) -> object:
        found = parsed.pop(data, None) if isinstance(data, bytes) else None
        return found if found is not None else parse(data, content_id)

    finder._meta_yml_to_dict = cached


# Plugin types whose builtin plugins' documented options the main process reads (some by
# listing them all): parsed ahead, ~0.1-0.3 s of YAML a run.
DOC_TYPES = ("become", "cache", "callback", "connection", "inventory", "shell", "vars")


def cache_plugin_docs() -> None:
    """Parse the documented options of Ansible's builtin plugins of ``DOC_TYPES`` ahead.

    A run uses them only when it loads the same plugin name from the same file and nothing
    defined its options yet; anything else is parsed as usual."""
    import ansible.constants as C
    import ansible.plugins.loader as loader

    original = loader.PluginLoader._load_config_defs
    parsed: dict[tuple[str, str, str], dict] = {}
    base = os.path.dirname(loader.__file__)
    for type_name in DOC_TYPES:
        plugin_loader = getattr(loader, f"{type_name}_loader")
        for file_name in sorted(os.listdir(os.path.join(base, type_name))):
            name = file_name.removesuffix(".py")
            if name == file_name or name.startswith("__") or name == "base":  # base: a deprecated alias
                continue
            try:
                module = importlib.import_module(f"ansible.plugins.{type_name}.{name}")
                original(plugin_loader, name, module, module.__file__)
            except Exception:  # noqa: BLE001 - left to the run, which reports it as a cold start would
                continue
            if C.config.has_configuration_definition(type_name, name):
                parsed[(type_name, name, str(module.__file__))] = C.config.get_configuration_definitions(type_name, name)

    def load_config_defs(self: loader.PluginLoader, name: str, module: object, path: str) -> None:
        type_name = loader.get_plugin_class(self.class_name)
        options = parsed.pop((type_name, name, path), None)
        if options is not None and not C.config.has_configuration_definition(type_name, name):
            C.config.initialize_plugin_configuration_definitions(type_name, name, options)
            return
        original(self, name, module, path)

    loader.PluginLoader._load_config_defs = load_config_defs  # type: ignore[method-assign]


def prime() -> dict[str, str]:
    from ansible.cli.playbook import PlaybookCLI  # noqa: F401 - the bulk of the start-up

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    cache_builtin_routing()
    cache_plugin_docs()
    return loader_settings()


def configure(env: dict[str, str], cwd: str, loaders: dict[str, str]) -> None:
    """The run's environment and directory, and Ansible's settings read again from them."""
    import ansible.constants as C
    import ansible.plugins.loader as loader

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    vars(C.config).clear()  # its per-instance caches (ini values) go with it
    C.config.__init__()  # ANSIBLE_CONFIG and ANSIBLE_* of this run
    for setting in C.config.get_configuration_definitions():
        C.set_constant(setting, C.config.get_config_value(setting, variables=vars(C)))
    for name, constant in loaders.items():
        value = getattr(C, constant, None)
        plugin_loader = getattr(loader, name)
        plugin_loader.config = value if isinstance(value, list) else [value] if value else []
        plugin_loader._clear_caches()


def take_terminal(fds: list[int]) -> None:
    """The client's pty as stdin/stdout/stderr and, when it can be, as the controlling terminal
    (Ansible's prompts check it), line-buffered as on a terminal."""
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    try:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    except OSError:
        pass
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    from ansible.utils.display import Display

    Display()._set_column_width()  # the terminal's width, as a cold start reads it


def relabel(mark: str) -> None:
    """Write the run's marker over the placeholder in this process's initial environment block,
    where /proc/PID/environ (and procs.py, which finds a run's processes) reads it; forked
    workers inherit it."""
    with open("/proc/self/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[47]), int(fields[48])
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        block = mem.read(end - start)
        at = block.find(MARK_ENV.encode() + b"=")
        if at < 0:
            return
        at += len(MARK_ENV) + 1
        old = block[at:block.index(b"\0", at)]
        new = mark.encode()[:len(old)]
        mem.seek(start + at)
        mem.write(new + b"\0" * (len(old) - len(new)))


def add_key(fifo: str) -> None:
    """The run's ssh key, from its fifo into an ssh-agent of this sandbox (as ansible-runner's
    ``ssh-agent sh -c 'ssh-add FIFO && rm -f FIFO && ...'`` does for a cold run)."""
    os.mkdir(os.path.dirname(AGENT_SOCKET), 0o700)
    subprocess.Popen(["ssh-agent", "-D", "-a", AGENT_SOCKET], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    for _ in range(1000):
        if os.path.exists(AGENT_SOCKET):
            break
        time.sleep(0.005)
    os.environ["SSH_AUTH_SOCK"] = AGENT_SOCKET
    subprocess.run(["ssh-add", "-q", fifo], check=True, stdin=subprocess.DEVNULL)
    os.unlink(fifo)


def serve(path: str) -> int:
    loaders = prime()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(1)
    os.rename(path + ".new", path)  # the client connects only to a primed process
    conn, _ = listener.accept()
    listener.close()
    os.unlink(path)
    _, fds, _, _ = socket.recv_fds(conn, 1, 3)
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return 1
        data += chunk
    request = json.loads(data)
    take_terminal(fds)

    def watch() -> None:  # the client is gone (cancelled, timed out): so is the run
        while conn.recv(1):
            pass
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    relabel(request["env"].get(MARK_ENV, ""))
    configure(request["env"], request["cwd"], loaders)
    from ansible.cli.playbook import PlaybookCLI

    sys.argv = list(request["argv"])
    code = 1
    try:
        if request.get("key"):
            add_key(request["key"])
        PlaybookCLI.cli_executor(sys.argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # noqa: BLE001 - reported on the run's stderr, like a crash
        print(f"ERROR! {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall(f"{code}\n".encode())
    return code


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[2])  # the stand-in pywinrm, as a cold run without WinRM hosts has it
    os._exit(serve(sys.argv[1]))
