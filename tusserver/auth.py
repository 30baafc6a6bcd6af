"""Who sends a request: a bearer token (JWT), or the application's own callable.

With ``Config.jwt_secret`` (HS256) or ``Config.jwt_public_key`` (RS256 for
an RSA key, ES256/ES384/ES512 for an EC key on P-256/P-384/P-521) every
request but OPTIONS must carry ``Authorization: Bearer <JWT>``. The token
must be signed with that key by the one algorithm the key pins (the token's
own ``alg`` header never chooses it, so ``none`` and HS256-signed-with-the-
public-key tokens are refused), carry ``exp`` and a non-empty string
``sub``, and, when configured, the audience (``aud``) and issuer (``iss``).
``exp``, ``nbf`` and ``iat`` are checked with a leeway of ``LEEWAY_SECONDS``
for clocks that differ a little. The token's ``sub`` owns the uploads it
creates (tusserver.ownership).

An application that mounts tusserver may pass ``create_app(config,
authenticate=...)``: an async callable ``authenticate(request) -> str |
None`` returning the owner (None: anonymous), or raising
``errors.unauthorized(...)`` / ``errors.forbidden(...)`` to refuse. It
replaces the built-in JWT check; to accept tokens as well as its own
sessions it calls ``jwt_authenticator(config)`` itself.

Neither the token nor the secret is ever logged or put in an answer: a
refused token is logged by the kind of check it failed, nothing else.

PyJWT and cryptography are imported only when tokens are checked: a server
without them never loads them (as local storage never loads the SMB stack).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request

from tusserver import errors, ownership
from tusserver.config import Config, ConfigError
from tusserver.headers import AUTHORIZATION
from tusserver.log_safety import describe

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

logger = logging.getLogger(__name__)

# The HS256 secret is read from here only, never from a flag.
JWT_SECRET_ENV = "TUSSERVER_JWT_SECRET"
# Clock skew tolerated on exp, nbf and iat: small, since a token that expired
# half a minute ago is still expired; clients get a fresh one and retry.
LEEWAY_SECONDS = 30
# Claims every token must carry: an owner, and an end to its validity.
REQUIRED_CLAIMS = ("exp", "sub")

Authenticate = Callable[[Request], Awaitable[str | None]]

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# Below this an RSA key is breakable (NIST SP 800-131A).
_MIN_RSA_BITS = 2048


def secret_from_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    """``TUSSERVER_JWT_SECRET``, or None when unset or empty."""
    return environ.get(JWT_SECRET_ENV) or None


class JWTAuthenticator:
    """``authenticate`` for bearer JWTs: the token's ``sub``, or a 401."""

    def __init__(
        self,
        key: str | rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        algorithm: str,
        *,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        importlib.import_module("jwt")  # loaded with the app, not on its first request
        self._key = key
        self.algorithm = algorithm
        self._audience = audience
        self._issuer = issuer

    def __repr__(self) -> str:  # never the key
        return f"JWTAuthenticator({self.algorithm})"

    async def __call__(self, request: Request) -> str:
        return self.owner(request.headers.get(AUTHORIZATION))

    def owner(self, authorization: str | None) -> str:
        """The ``sub`` of the token in an Authorization header's value; 401 otherwise."""
        import jwt  # here, not at the top: see the module docstring

        token = bearer_token(authorization)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            logger.info("request refused: bearer token expired")
            raise errors.token_expired() from None
        except jwt.PyJWTError as exc:
            logger.info("request refused: bearer token not accepted (%s)", describe(exc))
            raise errors.token_invalid() from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            logger.info("request refused: bearer token names no subject")
            raise errors.token_invalid()
        return subject


def bearer_token(authorization: str | None) -> str:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 2.1).

    No header, or another scheme: no bearer token was presented (401 without
    an error code). ``Bearer`` with nothing usable after it: an invalid token.
    """
    if authorization is None:
        raise errors.token_missing()
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise errors.token_missing()
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise errors.token_invalid()
    return token


def jwt_authenticator(config: Config) -> JWTAuthenticator | None:
    """The JWT check ``config`` asks for; None when it sets no key.
    Raises ConfigError for an unusable public key file."""
    if config.jwt_secret is not None:
        return JWTAuthenticator(
            config.jwt_secret, "HS256", audience=config.jwt_audience, issuer=config.jwt_issuer
        )
    if config.jwt_public_key is not None:
        key, algorithm = load_public_key(config.jwt_public_key)
        return JWTAuthenticator(
            key, algorithm, audience=config.jwt_audience, issuer=config.jwt_issuer
        )
    return None


def load_public_key(path: Path) -> tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, str]:
    """A PEM public key and the one algorithm it verifies; ConfigError otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"JWT public key {path} cannot be read: {exc.strerror}.") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"JWT public key {path} is not a PEM public key.") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ConfigError(f"JWT public key {path}: RSA keys need at least 2048 bits.")
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        return key, _EC_ALGORITHMS[key.curve.name]
    raise ConfigError(
        f"JWT public key {path} must be an RSA key or an EC key on P-256, P-384 or P-521."
    )


def resolve(config: Config, authenticate: Authenticate | None) -> Authenticate | None:
    """Who authenticates requests: the application's callable if it gave one,
    else the JWT check the config sets up, else nobody (an open server)."""
    return authenticate if authenticate is not None else jwt_authenticator(config)


async def identify(request: Request, authenticate: Authenticate) -> None:
    """Run ``authenticate`` and remember the owner it returned for the request.
    Its TusErrors (401, 403) refuse the request."""
    owner = await authenticate(request)
    if owner is not None and (not isinstance(owner, str) or not owner):
        raise TypeError("authenticate must return a non-empty str or None")
    ownership.remember(request, owner)
