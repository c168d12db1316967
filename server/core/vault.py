"""Encryption of stored secrets with keys kept outside the database.

``MultiFernet`` gives rotation: the first key encrypts, every listed key decrypts, and
``rotate`` re-encrypts a token under the first key.
"""
from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class VaultError(Exception):
    pass


class Vault:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise VaultError("no vault key configured")
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except ValueError as exc:
            raise VaultError("TASKMANAGER_VAULT_KEY is not a valid Fernet key") from exc

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes | None) -> str | None:
        if token is None:
            return None
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            raise VaultError("secret cannot be decrypted with the configured vault keys") from exc

    def rotate(self, token: bytes) -> bytes:
        return self._fernet.rotate(bytes(token))


_vault: Vault | None = None


def init_vault(keys: list[str]) -> Vault:
    global _vault
    _vault = Vault(keys)
    return _vault


def vault() -> Vault:
    if _vault is None:
        raise VaultError("vault not initialised")
    return _vault
