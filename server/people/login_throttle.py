"""Sign-in throttling: a progressive delay per (account, client address), never a hard lock.

A hard lock let anyone lock the admin out by failing five times with his name. Here the
first ``FREE_FAILURES`` failures for an account from one address cost nothing; after that,
each further attempt from *that address* must wait 2, 4, 8 … seconds (capped at
``MAX_DELAY_S``), and is refused with 429 and ``Retry-After`` *before* the password is
checked. The real user, signing in from another address, is not slowed at all.

A second, coarser throttle stops one address from spraying many names: after
``MAX_FAILURES_PER_ADDRESS`` failures in ``ADDRESS_WINDOW_S`` it is refused until the
window ends.

The client address is the TCP peer; ``X-Forwarded-For`` counts only when the peer is a
proxy listed in ``TASKMANAGER_TRUSTED_PROXIES``. Counters live in Redis with expiries, so
they clean themselves up; if Redis is unreachable, sign-in still works (unthrottled, and
logged), since Argon2 hashing already bounds the guessing rate.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from dataclasses import dataclass

from server.core.errors import ApiError

log = logging.getLogger(__name__)

FREE_FAILURES = 3
MAX_DELAY_S = 15 * 60
MEMORY_S = 60 * 60  # failures are forgotten after this long without another one
MAX_FAILURES_PER_ADDRESS = 30
ADDRESS_WINDOW_S = 15 * 60
_PREFIX = "taskmanager:login:"

# Atomically: refuse while the account+address waits; otherwise count this attempt as a
# failure *before* the password is checked (a success deletes the key), so parallel
# attempts cannot all slip through the same open moment.
_CLAIM = """
local now = tonumber(ARGV[1])
local free = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local memory = tonumber(ARGV[4])
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
local next_at = tonumber(redis.call('HGET', KEYS[1], 'next_at') or '0')
if next_at > now then
  local first = redis.call('HSETNX', KEYS[1], 'refused', 1)
  return {0, tostring(next_at - now), first}
end
failures = failures + 1
local delay = 0
if failures >= free then delay = math.min(2 ^ (failures - free + 1), cap) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'failures', failures, 'next_at', tostring(now + delay))
redis.call('EXPIRE', KEYS[1], math.ceil(delay + memory))
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[2], math.ceil(cap + memory))
return {1, tostring(delay), failures}
"""


class LoginThrottled(ApiError):
    """429: wait ``retry_after`` seconds (sent as the ``Retry-After`` header)."""

    status = 429
    code = "throttled"

    def __init__(self, message: str, retry_after: int, reason: str, *, first: bool = True) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.reason = reason
        # Only the first refusal of a waiting period is audited, so hammering a closed
        # door cannot flood the audit trail.
        self.first = first


@dataclass
class Delay:
    address: str
    failures: int
    retry_at: float | None  # epoch seconds; None when the next attempt may go at once


def _redis():
    from server.core.redis_conn import redis

    return redis()


def _account(username: str) -> str:
    return hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _account_key(username: str, address: str) -> str:
    return f"{_PREFIX}acct:{_account(username)}:{address}"


def _addresses_key(username: str) -> str:
    return f"{_PREFIX}addrs:{_account(username)}"


def _address_key(address: str) -> str:
    return f"{_PREFIX}addr:{address}"


# ------------------------------------------------------------------ client address


def _trusted(address: str, proxies: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address() -> str | None:
    """The address to throttle: the peer, or what a trusted proxy says the client was.

    ``X-Forwarded-For`` is read right to left, skipping our own trusted proxies; the first
    other entry is the client. A malformed entry ends the walk at the last address known good.
    """
    from flask import current_app, has_request_context, request

    if not has_request_context():
        return None
    peer = request.remote_addr
    proxies = current_app.config["TM"].trusted_proxies
    if not peer or not proxies or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("X-Forwarded-For")).split(",") if h.strip()]
    address = peer
    for hop in reversed(hops):
        try:
            hop = str(ipaddress.ip_address(hop))
        except ValueError:
            break
        address = hop
        if not _trusted(hop, proxies):
            break
    return address


# ------------------------------------------------------------------ checks

_script_cache: list = [None, None]  # [client, script]: the script is bound to its client


def _claim_script():
    """The claim script, registered once per Redis client (re-registered if it changes)."""
    client = _redis()
    if _script_cache[0] is not client:
        _script_cache[:] = [client, client.register_script(_CLAIM)]
    return _script_cache[1]



def _unavailable(exc: Exception) -> None:
    log.warning("login throttle unavailable (Redis: %s); sign-in is not rate limited", exc)


def check_address(address: str | None) -> None:
    """Refuse an address that failed too often with any names (password spraying)."""
    if not address:
        return
    try:
        r = _redis()
        count = int(r.get(_address_key(address)) or 0)
        if count < MAX_FAILURES_PER_ADDRESS:
            return
        ttl = r.ttl(_address_key(address))
        wait = ttl if ttl and ttl > 0 else ADDRESS_WINDOW_S
        first = bool(r.set(_address_key(address) + ":audited", 1, nx=True, ex=wait))
    except Exception as exc:  # noqa: BLE001 - Redis down: do not block sign-in
        _unavailable(exc)
        return
    raise LoginThrottled("too many failed sign-ins from your address; try again later",
                         wait, "address throttled", first=first)


def claim_attempt(username: str, address: str | None) -> None:
    """Let one attempt for this account from this address through, or raise ``LoginThrottled``.

    The attempt is counted as a failure until ``succeeded`` clears it.
    """
    if not address:
        return
    try:
        allowed, wait, extra = _claim_script()(
            keys=[_account_key(username, address), _addresses_key(username)],
            args=[f"{time.time():.3f}", FREE_FAILURES, MAX_DELAY_S, MEMORY_S, address])
    except Exception as exc:  # noqa: BLE001
        _unavailable(exc)
        return
    if not int(allowed):
        raise LoginThrottled("too many failed sign-ins for this account from your address; "
                             f"wait {math.ceil(float(wait))} s before trying again",
                             math.ceil(float(wait)), "delayed", first=bool(int(extra)))


def failed(address: str | None) -> None:
    """Count a failed sign-in against the address (the account+address count is already taken)."""
    if not address:
        return
    try:
        pipe = _redis().pipeline()
        pipe.incr(_address_key(address))
        pipe.expire(_address_key(address), ADDRESS_WINDOW_S, nx=True)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001
        _unavailable(exc)


def succeeded(username: str, address: str | None) -> None:
    """A correct password clears this account's delay from this address only."""
    if not address:
        return
    try:
        pipe = _redis().pipeline()
        pipe.delete(_account_key(username, address))
        pipe.srem(_addresses_key(username), address)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001
        _unavailable(exc)


def delays_for(username: str) -> list[Delay]:
    """The account's failure counts per address (for the admin's user page and API)."""
    try:
        r = _redis()
        out = []
        for raw in sorted(r.smembers(_addresses_key(username))):
            address = raw.decode() if isinstance(raw, bytes) else raw
            values = r.hmget(_account_key(username, address), "failures", "next_at")
            if values[0] is None:
                continue
            next_at = float(values[1] or 0)
            out.append(Delay(address, int(values[0]), next_at if next_at > time.time() else None))
        return out
    except Exception as exc:  # noqa: BLE001
        _unavailable(exc)
        return []


def clear_account(username: str) -> int:
    """Forget the account's failures from every address (an admin's "clear delays")."""
    try:
        r = _redis()
        addresses = [a.decode() if isinstance(a, bytes) else a for a in r.smembers(_addresses_key(username))]
        keys = [_account_key(username, a) for a in addresses] + [_addresses_key(username)]
        return int(r.delete(*keys)) and len(addresses)
    except Exception as exc:  # noqa: BLE001
        _unavailable(exc)
        return 0
