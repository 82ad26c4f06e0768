"""Who is calling: the bearer key -> principal, and the checks a key adds to the gate's.

The principal comes from the key, never from the request: a `user_id` in a request is only
which memory the call is about, and the facade's gate (run as the key's principal) decides
whether that principal may reach it. A key limited to some vaults reaches no other vault.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.security.utils import get_authorization_scheme_param

from ..cube import MemCube, Scope, check_name
from ..errors import InvalidInput, MemOSError
from ..governance import SYSTEM, Action, PermissionDenied
from ..keys import ApiKey, KeyStore

if TYPE_CHECKING:
    from ..mos import MemOS

ANY_KEY_TTL = 2.0  # seconds between checks whether any key exists (open mode only)


class Unauthenticated(MemOSError):
    """No valid API key was presented (HTTP 401)."""


@dataclass(frozen=True)
class Caller:
    """The principal behind one request and the MemOS view that runs as it."""

    principal: str
    key: ApiKey | None
    mem: MemOS

    def user_id(self, requested: str | None) -> str:
        """The user whose memory the call is about: the one asked for (the gate decides whether
        this principal may reach it), else the key's own user."""
        if requested:
            return requested
        if self.principal.startswith("user:"):
            return self.principal.removeprefix("user:")
        raise InvalidInput(f"user_id is required: {self.principal} is not a user")

    def vault(self, requested: str | None) -> str:
        """The vault the call is about; PermissionDenied (audited) when the key may not reach it."""
        vault = requested or self.mem.config.vault
        if self.key is not None and self.key.vaults is not None and vault not in self.key.vaults:
            self.mem.governance.audit(self.principal, "key", vault=vault, outcome="denied",
                                      detail=f"key {self.key.id} is limited to other vaults")
            raise PermissionDenied(f"this API key may not reach vault {vault!r}")
        return vault

    def scope_user(self, requested: str | None, vault: str, op: str) -> str:
        """`user_id`, and another user's memory refused (PermissionDenied, audited by the gate)
        unless the principal has a role in the vault: a body's `user_id` is checked, not trusted."""
        user = check_name(self.user_id(requested), "user_id")
        if self.principal not in (SYSTEM, f"user:{user}"):
            scope = Scope(vault=check_name(vault, "vault"), user_id=user)
            self.mem.gate(op, Action.read, scope=scope, check_only=True)
        return user

    def own_user(self, requested: str | None, vault: str, op: str) -> str | None:
        """`scope_user`, but None (every user) for a caller that is no user and names none."""
        if requested is None and not self.principal.startswith("user:"):
            return None
        return self.scope_user(requested, vault, op)

    def reach(self, cube_id: str) -> None:
        """PermissionDenied (audited) when the key is limited to vaults the cube is not in;
        checked before the facade is called, so a refused write writes nothing."""
        if self.key is not None and self.key.vaults is not None:
            self.vault(self.mem.vault.get(cube_id, expired=True).scope.vault)

    def reaches(self, cube: MemCube) -> bool:
        """Whether the key reaches the vault of `cube`."""
        return self.key is None or self.key.vaults is None or cube.scope.vault in self.key.vaults


class Authenticator:
    """Resolves bearer tokens. `required=None`: a key is required as soon as any key exists
    (until then every request is `system`: open mode, loopback only); True: always."""

    def __init__(self, mem: MemOS, keys: KeyStore, required: bool | None = None) -> None:
        self.mem = mem
        self.keys = keys
        self.required = required
        self._any: tuple[float, bool] = (0.0, False)

    def _keys_exist(self) -> bool:
        at, exist = self._any
        if time.monotonic() - at > ANY_KEY_TTL:
            exist = self.keys.any_active()
            self._any = (time.monotonic(), exist)
        return exist

    def token(self, token: str | None) -> Caller:
        """The caller a bearer token (or none) stands for; Unauthenticated (audited) if none."""
        key = self.keys.resolve(token) if token else None
        if key is not None:
            return Caller(key.principal, key, self.mem.as_principal(key.principal))
        if token or self.required or (self.required is None and self._keys_exist()):
            self.mem.governance.audit(SYSTEM, "authenticate", outcome="denied",
                                      detail="a bad API key" if token else "no API key")
            raise Unauthenticated("a valid API key is required (Authorization: Bearer <key>)")
        return Caller(SYSTEM, None, self.mem)

    def header(self, authorization: str | None) -> Caller:
        scheme, token = get_authorization_scheme_param(authorization)
        return self.token(token if scheme.lower() == "bearer" and token else None)


def caller(request: Request) -> Caller:
    """FastAPI dependency: the caller of this request."""
    auth: Authenticator = request.app.state.auth
    return auth.header(request.headers.get("authorization"))
