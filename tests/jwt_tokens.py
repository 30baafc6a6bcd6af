"""Bearer tokens for the authorization specs, signed here with PyJWT."""

from __future__ import annotations

import time
from typing import Any

import jwt

# At least 32 bytes, as the server requires of an HS256 secret.
SECRET = "spec-secret-6f1d2c9a8b7e4d3c2b1a0f9e8d7c6b5a"
AUDIENCE = "tus-uploads"
ISSUER = "https://login.example"
# What a server checking tokens is configured with (Config fields).
JWT_FIELDS: dict[str, Any] = {"jwt_secret": SECRET, "jwt_audience": AUDIENCE, "jwt_issuer": ISSUER}


def token(
    sub: str | None = "alice",
    *,
    key: Any = SECRET,
    algorithm: str = "HS256",
    # Long enough for tokens made when the specs are collected.
    expires_in: float = 3 * 3600,
    **claims: Any,
) -> str:
    """A token for ``sub`` with the configured audience and issuer;
    ``claims`` add to or (as None) remove from them."""
    payload: dict[str, Any] = {
        "sub": sub,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": int(time.time() + expires_in),
        "iat": int(time.time()),
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm=algorithm)


def bearer(sub: str = "alice", **options: Any) -> dict[str, str]:
    """The Authorization header of a valid token for ``sub``."""
    return {"Authorization": f"Bearer {token(sub, **options)}"}
