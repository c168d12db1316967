"""Settings read from the environment, with embedded defaults under ``instance/``.

Every process (web, worker, scheduler, CLI) builds the same ``Settings`` so that they
agree on the database, Redis and the vault key without passing secrets around.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _instance_dir() -> Path:
    path = Path(os.environ.get("TASKMANAGER_INSTANCE_DIR", REPO_ROOT / "instance"))
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _secret_file(path: Path, make) -> str:
    """Read a generated secret, creating it once with mode 0600 (never in the database)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    return path.read_text().strip()


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@dataclass
class Settings:
    instance_dir: Path
    database_url: str
    redis_url: str | None
    embedded_redis_socket: Path
    bind: str
    secret_key: str
    vault_keys: list[str]
    playbook_dir: Path
    public_url: str
    queue_name: str = "executions"
    max_forks: int = 50
    trusted_proxies: tuple = ()  # ip_network objects whose X-Forwarded-For is believed
    extra: dict = field(default_factory=dict)

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"unix://{self.embedded_redis_socket}"


def parse_trusted_proxies(value: str | None) -> tuple:
    """``TASKMANAGER_TRUSTED_PROXIES``: comma-separated IPs or CIDRs of reverse proxies.

    Only a request whose peer is one of them may name the client in ``X-Forwarded-For``;
    anyone else could otherwise pick the address the login throttle counts against.
    """
    import ipaddress

    networks = []
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"TASKMANAGER_TRUSTED_PROXIES: {item!r} is not an IP address or CIDR") from exc
    return tuple(networks)


def load_settings() -> Settings:
    inst = _instance_dir()
    db_url = os.environ.get("TASKMANAGER_DATABASE_URL") or f"sqlite:///{inst / 'taskmanager.db'}"
    secret_key = os.environ.get("TASKMANAGER_SECRET_KEY") or _secret_file(
        inst / "secret_key", lambda: secrets.token_urlsafe(48)
    )
    # Several comma-separated keys allow rotation: the first encrypts, all decrypt.
    vault_env = os.environ.get("TASKMANAGER_VAULT_KEY")
    vault_keys = (
        [k.strip() for k in vault_env.split(",") if k.strip()]
        if vault_env
        else [_secret_file(inst / "vault_key", _fernet_key)]
    )
    bind = os.environ.get("TASKMANAGER_BIND", "127.0.0.1:5000")
    return Settings(
        instance_dir=inst,
        database_url=db_url,
        redis_url=os.environ.get("TASKMANAGER_REDIS_URL") or None,
        embedded_redis_socket=inst / "redis.sock",
        bind=bind,
        secret_key=secret_key,
        vault_keys=vault_keys,
        playbook_dir=Path(os.environ.get("TASKMANAGER_PLAYBOOK_DIR", REPO_ROOT / "playbooks")).resolve(),
        public_url=os.environ.get("TASKMANAGER_PUBLIC_URL", f"http://{bind}"),
        queue_name=os.environ.get("TASKMANAGER_QUEUE", "executions"),
        max_forks=int(os.environ.get("TASKMANAGER_MAX_FORKS", "50")),
        trusted_proxies=parse_trusted_proxies(os.environ.get("TASKMANAGER_TRUSTED_PROXIES")),
    )
