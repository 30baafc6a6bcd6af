"""Bearer JWTs: with a secret (HS256) or a public key (RS256, ES256) every
request but OPTIONS needs a valid token; a refused one gets 401 with an RFC
6750 challenge and the JSON error body. Neither the token nor the secret
ever shows in the server's log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.helpers import assert_tus_error
from tests.jwt_tokens import AUDIENCE, ISSUER, JWT_FIELDS, SECRET, bearer, token
from tests.process_fixtures import ServeProcess
from tests.server_fixtures import OCTETS, TUS, RunningServer
from tusserver.cli import main
from tusserver.config import Config, ConfigError

StartServer = Callable[..., RunningServer]
StartProcess = Callable[..., ServeProcess]
CHALLENGE = 'Bearer realm="tus"'
INVALID = CHALLENGE + ', error="invalid_token"'


def create(client: httpx.Client, endpoint: str, headers: dict[str, str]) -> httpx.Response:
    return client.post(endpoint, headers={**TUS, "Upload-Length": "5", **headers})


def assert_refused(response: httpx.Response, code: str, challenge: str) -> None:
    assert_tus_error(response, 401, code)
    assert response.headers["WWW-Authenticate"] == challenge


def test_a_valid_token_creates_writes_and_reads_an_upload(
    tus_server: StartServer, state: object
) -> None:
    server = tus_server(**JWT_FIELDS)
    auth = bearer("alice")

    created = create(server.client, server.endpoint, auth)
    assert created.status_code == 201, created.text
    url = server.url + created.headers["Location"]
    patched = server.client.patch(
        url,
        headers={**TUS, **auth, "Content-Type": OCTETS, "Upload-Offset": "0"},
        content=b"hello",
    )
    head = server.client.head(url, headers={**TUS, **auth})
    got = server.client.get(url, headers=auth)

    assert patched.status_code == 204
    assert head.headers["Upload-Offset"] == "5"
    assert got.content == b"hello"
    assert (server.storage / url.rsplit("/", 1)[1]).read_bytes() == b"hello"


OTHER_SECRET = "another-secret-of-more-than-32-bytes!!"


@pytest.mark.parametrize(
    ("authorization", "code", "challenge"),
    [
        (None, "token_missing", CHALLENGE),
        ("Basic YWxpY2U6cGFzcw==", "token_missing", CHALLENGE),
        ("Bearer", "token_invalid", INVALID),
        ("Bearer not-a-jwt", "token_invalid", INVALID),
        ("Bearer a.b.c", "token_invalid", INVALID),
        (f"Bearer {token(expires_in=-3600)}", "token_expired", INVALID),
        (f"Bearer {token(key=OTHER_SECRET)}", "token_invalid", INVALID),
        (f"Bearer {token(aud='someone-else')}", "token_invalid", INVALID),
        (f"Bearer {token(aud=None)}", "token_invalid", INVALID),
        (f"Bearer {token(iss='https://evil.example')}", "token_invalid", INVALID),
        (f"Bearer {token(algorithm='none', key=None)}", "token_invalid", INVALID),
        (f"Bearer {token(sub=None)}", "token_invalid", INVALID),
        (f"Bearer {token(sub='')}", "token_invalid", INVALID),
        (f"Bearer {token(exp=None)}", "token_invalid", INVALID),
        (f"Bearer {token(nbf=2**40)}", "token_invalid", INVALID),
    ],
    ids=[
        "missing",
        "other-scheme",
        "bearer-without-token",
        "malformed",
        "garbage-segments",
        "expired",
        "wrong-key",
        "wrong-audience",
        "no-audience",
        "wrong-issuer",
        "alg-none",
        "no-subject",
        "empty-subject",
        "no-expiry",
        "not-yet-valid",
    ],
)
def test_a_refused_token_gets_401_with_a_bearer_challenge_and_the_json_body(
    tus_server: StartServer, authorization: str | None, code: str, challenge: str
) -> None:
    server = tus_server(**JWT_FIELDS)
    headers = {} if authorization is None else {"Authorization": authorization}

    refused = create(server.client, server.endpoint, headers)

    assert_refused(refused, code, challenge)
    assert list(server.storage.glob(".partial/*")) == []


def test_every_method_but_options_needs_a_token(tus_server: StartServer) -> None:
    server = tus_server(**JWT_FIELDS)
    created = create(server.client, server.endpoint, bearer())
    url = server.url + created.headers["Location"]
    patch_headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}

    answers = {
        "HEAD": server.client.head(url, headers=TUS),
        "PATCH": server.client.patch(url, headers=patch_headers, content=b"hello"),
        "GET": server.client.get(url),
        "DELETE": server.client.delete(url, headers=TUS),
        "PUT": server.client.put(url, headers=TUS),
    }
    options = server.client.options(server.endpoint)

    for method, response in answers.items():
        assert response.status_code == 401, method
        assert response.headers["WWW-Authenticate"] == CHALLENGE, method
        assert response.headers["Tus-Resumable"] == "1.0.0", method
    assert options.status_code == 200
    assert "creation" in options.headers["Tus-Extension"]
    head = server.client.head(url, headers={**TUS, **bearer()})
    assert head.headers["Upload-Offset"] == "0"  # the refused PATCH wrote nothing


def test_a_token_within_the_leeway_of_its_expiry_is_accepted(tus_server: StartServer) -> None:
    server = tus_server(**JWT_FIELDS)

    created = create(server.client, server.endpoint, bearer(expires_in=-5))

    assert created.status_code == 201


def test_a_preflight_needs_no_token_and_a_401_exposes_its_challenge(
    tus_server: StartServer,
) -> None:
    origin = "https://app.example"
    server = tus_server(cors_origins=(origin,), **JWT_FIELDS)

    preflight = server.client.options(
        server.endpoint,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,tus-resumable,upload-length",
        },
    )
    refused = create(server.client, server.endpoint, {"Origin": origin})

    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == origin
    exposed = refused.headers["Access-Control-Expose-Headers"].lower()
    assert "www-authenticate" in exposed


# --- public keys: RS256 and ES256, through the command ------------------------


def write_public_key(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def hs256_signed_with(secret: bytes) -> str:
    """An HS256 token whose HMAC key is ``secret`` (the algorithm-confusion attack
    on servers that take the algorithm from the token); PyJWT refuses to make one."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = json.loads(
        base64.urlsafe_b64decode(token().split(".")[1] + "==")
    )  # valid claims, as any token of the issuer has
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def private_key(kind: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_a_public_key_given_to_the_command_verifies_tokens_of_its_algorithm_only(
    serve_process: StartProcess, tmp_path: Path, kind: str
) -> None:
    private = private_key(kind)
    public = write_public_key(private, tmp_path / "jwt.pem")
    server = serve_process(
        "--storage", tmp_path / "files",
        "--data-dir", tmp_path / "data",
        "--jwt-public-key", public,
        "--jwt-audience", AUDIENCE,
        "--jwt-issuer", ISSUER,
    )  # fmt: skip
    with httpx.Client(timeout=10) as client:
        accepted = create(client, server.endpoint, bearer(key=private, algorithm=kind))
        confused = create(
            client,
            server.endpoint,
            {"Authorization": f"Bearer {hs256_signed_with(public.read_bytes())}"},
        )
        hs256 = create(client, server.endpoint, bearer())
        other_kind = "ES256" if kind == "RS256" else "RS256"
        wrong_algorithm = create(
            client, server.endpoint, bearer(key=private_key(other_kind), algorithm=other_kind)
        )

    assert accepted.status_code == 201, accepted.text
    for refused in (confused, hs256, wrong_algorithm):
        assert_refused(refused, "token_invalid", INVALID)


# --- secrets: never a flag, never printed, never logged -----------------------


def test_neither_the_token_nor_the_secret_reaches_the_log(
    serve_process: StartProcess, tmp_path: Path
) -> None:
    server = serve_process(
        "--storage", tmp_path / "files",
        "--data-dir", tmp_path / "data",
        "--log-level", "debug",
        "--jwt-audience", AUDIENCE,
        "--jwt-issuer", ISSUER,
        env={"TUSSERVER_JWT_SECRET": SECRET},
    )  # fmt: skip
    good = token("alice")
    expired = token("alice", expires_in=-3600)
    forged = token("mallory", key=OTHER_SECRET)
    with httpx.Client(timeout=10) as client:
        created = create(client, server.endpoint, {"Authorization": f"Bearer {good}"})
        url = server.url + created.headers["Location"]
        client.head(url, headers={**TUS, "Authorization": f"Bearer {good}"})
        for bad in (expired, forged, "not-a-jwt"):
            refused = client.head(url, headers={**TUS, "Authorization": f"Bearer {bad}"})
            assert refused.status_code == 401
        foreign = client.delete(url, headers={**TUS, **bearer("bob")})
        assert foreign.status_code == 403
        # Its owner terminates it (logged), then finds it gone.
        client.delete(url, headers={**TUS, "Authorization": f"Bearer {good}"})
        client.head(url, headers={**TUS, "Authorization": f"Bearer {good}"})
    server.stop()

    log = server.log_text()
    assert "request refused" in log  # the refusals were logged, by kind
    for secret in (SECRET, good, expired, forged, *good.split(".")[1:], *forged.split(".")[1:]):
        assert secret not in log


def test_the_secret_is_no_flag_and_no_config_repr_shows_it() -> None:
    help_text = CliRunner().invoke(main, ["serve", "--help"], terminal_width=1000).output

    assert "--jwt-public-key" in help_text and "--jwt-audience" in help_text
    assert "--jwt-secret" not in help_text
    assert SECRET not in repr(Config(jwt_secret=SECRET))
    assert SECRET not in str(Config(jwt_secret=SECRET))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"jwt_secret": "short"}, "at least 32 bytes"),
        ({"jwt_secret": SECRET, "jwt_public_key": Path("key.pem")}, "not both"),
        ({"jwt_audience": AUDIENCE}, "needs TUSSERVER_JWT_SECRET"),
    ],
)
def test_unusable_jwt_settings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        Config(**fields)  # type: ignore[arg-type]
    assert SECRET not in str(refused.value)


def test_a_public_key_file_that_is_not_a_key_stops_the_command(tmp_path: Path) -> None:
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n")

    result = CliRunner().invoke(
        main,
        ["serve", "--storage", str(tmp_path / "files"), "--jwt-public-key", str(not_a_key)],
    )

    assert result.exit_code == 1
    assert "is not a PEM public key" in result.output
    assert "nonsense" not in result.output


def test_the_secret_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Config] = []
    monkeypatch.setattr("tusserver.serving.serve", lambda config: seen.append(config) or True)
    monkeypatch.setattr("tusserver.cli._check", lambda config: None)

    result = CliRunner().invoke(
        main,
        ["serve", "--storage", str(tmp_path)],
        env={"TUSSERVER_JWT_SECRET": SECRET},
    )

    assert result.exit_code == 0, result.output
    assert seen[0].jwt_secret == SECRET
