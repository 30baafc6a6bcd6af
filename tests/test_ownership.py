"""Uploads belong to their owner: the token's ``sub``, or what a mounted
app's ``authenticate`` returns. Another user's HEAD, PATCH, GET and DELETE
get 403, from curl, tuspy and tus-js-client alike, and leave the owner's
bytes, offset and lock as they were, even while the owner's PATCH runs;
a final upload naming another user's part is refused.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError

from tests.helpers import assert_tus_error
from tests.js_fixtures import JS_DIR, TusJs
from tests.jwt_tokens import JWT_FIELDS, bearer, token
from tests.server_fixtures import OCTETS, TUS, RunningServer, ThreadedUvicorn, free_port
from tusserver import Config, auth, create_app, errors
from tusserver.state import info_key, lock_key

StartServer = Callable[..., RunningServer]
ALICE, BOB = bearer("alice"), bearer("bob")
DATA = b"0123456789abcdef"
WRITTEN = 6  # what alice has sent before bob tries


@pytest.fixture
def guarded(tus_server: StartServer) -> RunningServer:
    return tus_server(**JWT_FIELDS)


def started_upload(guarded: RunningServer) -> str:
    """Alice's upload of DATA with its first WRITTEN bytes sent; its URL."""
    url = guarded.create(len(DATA), **ALICE)
    patched = guarded.patch(url, 0, DATA[:WRITTEN], **ALICE)
    assert patched.status_code == 204
    return url


def alice_finishes(guarded: RunningServer, url: str) -> None:
    """Alice's upload is as she left it, and she can finish it."""
    head = guarded.client.head(url, headers={**TUS, **ALICE})
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(WRITTEN)
    assert guarded.patch(url, WRITTEN, DATA[WRITTEN:], **ALICE).status_code == 204
    assert (guarded.storage / url.rsplit("/", 1)[1]).read_bytes() == DATA


def test_uploads_record_their_owner(guarded: RunningServer, state: redis.Redis) -> None:
    url = guarded.create(3, **ALICE)

    assert state.hget(info_key(url.rsplit("/", 1)[1]), "owner") == "alice"


def test_another_users_curl_gets_403_for_every_method(guarded: RunningServer) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed (apt-get install curl)"
    url = started_upload(guarded)
    other = f"Authorization: {BOB['Authorization']}"

    def run(*arguments: str) -> tuple[int, str]:
        done = subprocess.run(
            [curl, "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", "Tus-Resumable: 1.0.0",
             "-H", other, *arguments, url],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        body, _, status = done.stdout.rpartition("\n")
        return int(status), body

    patch_headers = ["-H", f"Content-Type: {OCTETS}", "-H", f"Upload-Offset: {WRITTEN}"]
    answers = {
        "HEAD": run("--head"),
        "PATCH": run("-X", "PATCH", *patch_headers, "--data-binary", "intruder"),
        "GET": run(),
        "DELETE": run("-X", "DELETE"),
    }

    for method, (status, body) in answers.items():
        assert status == 403, method
        if method != "HEAD":
            error = json.loads(body)["error"]
            assert error["code"] == "upload_forbidden"
            # Nothing of the upload: neither its size, its offset, nor its owner.
            for detail in (str(len(DATA)), str(WRITTEN), "alice"):
                assert detail not in body
    alice_finishes(guarded, url)


def test_another_users_tuspy_gets_403_on_resume_and_on_patch(guarded: RunningServer) -> None:
    url = started_upload(guarded)
    intruder = TusClient(guarded.endpoint, headers=dict(BOB))
    owner = TusClient(guarded.endpoint, headers=dict(ALICE))  # set_headers updates it

    with pytest.raises(TusCommunicationError) as on_resume:
        intruder.uploader(file_stream=io.BytesIO(DATA), url=url, retries=0)
    # Alice's uploader resumes (its HEAD passes); its PATCH carries Bob's token.
    uploader = owner.uploader(file_stream=io.BytesIO(DATA), url=url, chunk_size=4, retries=0)
    assert uploader.offset == WRITTEN
    owner.set_headers(BOB)
    with pytest.raises(TusCommunicationError) as on_patch:
        uploader.upload_chunk()

    assert on_resume.value.status_code == 403
    assert on_patch.value.status_code == 403
    alice_finishes(guarded, url)


def test_another_users_tus_js_client_gets_403_for_every_method(
    guarded: RunningServer, tus_js: TusJs, tmp_path: Path
) -> None:
    url = started_upload(guarded)
    owner_token = ALICE["Authorization"].split()[1]
    other_token = BOB["Authorization"].split()[1]

    done = subprocess.run(
        ["node", str(JS_DIR / "foreign.mjs"), url, str(len(DATA)), owner_token, other_token],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"head": 403, "patch": 403, "delete": 403, "get": 403}
    head = guarded.client.head(url, headers={**TUS, **ALICE})
    assert head.headers["Upload-Offset"] == str(WRITTEN)
    # Alice's own tus-js-client resumes it to the end.
    source = tmp_path / "data.bin"
    source.write_bytes(DATA)
    assert tus_js(guarded.endpoint, source, uploadUrl=url, headers=ALICE) == url
    assert (guarded.storage / url.rsplit("/", 1)[1]).read_bytes() == DATA


def test_another_user_neither_interrupts_a_running_patch_nor_touches_its_lock(
    guarded: RunningServer, state: redis.Redis
) -> None:
    url = guarded.create(len(DATA), **ALICE)
    upload_id = url.rsplit("/", 1)[1]
    first_sent, go_on = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        yield DATA[:WRITTEN]
        first_sent.set()
        go_on.wait(30)
        yield DATA[WRITTEN:]

    answer: list[httpx.Response] = []
    headers = {**TUS, **ALICE, "Content-Type": OCTETS, "Upload-Offset": "0"}
    with httpx.Client(timeout=60) as alice:
        patch = threading.Thread(
            target=lambda: answer.append(alice.patch(url, headers=headers, content=body()))
        )
        patch.start()
        assert first_sent.wait(30)
        deadline = time.monotonic() + 10
        while state.get(lock_key(upload_id)) is None:
            assert time.monotonic() < deadline, "alice's PATCH never took the lock"
            time.sleep(0.01)
        lock = state.get(lock_key(upload_id))

        started = time.monotonic()
        refused = [
            guarded.client.head(url, headers={**TUS, **BOB}),
            guarded.client.patch(
                url,
                headers={**TUS, **BOB, "Content-Type": OCTETS, "Upload-Offset": "0"},
                content=b"intruder",
            ),
            guarded.client.get(url, headers=BOB),
            guarded.client.delete(url, headers={**TUS, **BOB}),
        ]
        elapsed = time.monotonic() - started
        still_locked = state.get(lock_key(upload_id))

        go_on.set()
        patch.join(30)

    assert [response.status_code for response in refused] == [403] * 4
    # At once: no wait for the lock (lock_wait is 3 s), no release request.
    assert elapsed < guarded.config.lock_wait
    assert still_locked == lock
    assert answer[0].status_code == 204
    assert answer[0].headers["Upload-Offset"] == str(len(DATA))
    assert (guarded.storage / upload_id).read_bytes() == DATA


def test_a_missing_upload_is_404_and_a_foreign_unfinished_one_403_not_its_state(
    guarded: RunningServer,
) -> None:
    url = started_upload(guarded)
    missing = url[: -len("0" * 32)] + "0" * 32

    assert guarded.client.head(missing, headers={**TUS, **BOB}).status_code == 404
    assert_tus_error(guarded.client.delete(missing, headers={**TUS, **BOB}), 404)
    # Alice would get 404 "not finished" from GET; Bob learns nothing of it.
    assert_tus_error(guarded.client.get(url, headers=BOB), 403, "upload_forbidden")
    assert_tus_error(guarded.client.get(url, headers=ALICE), 404)


def partial(guarded: RunningServer, data: bytes, auth: dict[str, str]) -> str:
    url = guarded.create(len(data), Upload_Concat="partial", **auth)
    assert guarded.patch(url, 0, data, **auth).status_code == 204
    return url


def post_final(guarded: RunningServer, auth: dict[str, str], *parts: str) -> httpx.Response:
    return guarded.client.post(
        guarded.endpoint, headers={**TUS, **auth, "Upload-Concat": "final;" + " ".join(parts)}
    )


def test_a_final_upload_naming_another_users_part_is_refused(guarded: RunningServer) -> None:
    alices = partial(guarded, b"alice's ", ALICE)
    bobs = partial(guarded, b"bob's", BOB)

    foreign = post_final(guarded, BOB, bobs, alices)
    own = post_final(guarded, ALICE, alices)

    assert_tus_error(foreign, 403, "concat_part_forbidden")
    assert "Part 2" in foreign.json()["error"]["message"]
    assert own.status_code == 201, own.text
    final = guarded.url + own.headers["Location"]
    assert (guarded.storage / final.rsplit("/", 1)[1]).read_bytes() == b"alice's "
    head = guarded.client.head(final, headers={**TUS, **ALICE})
    assert head.headers["Upload-Offset"] == "8"
    assert guarded.client.head(final, headers={**TUS, **BOB}).status_code == 403


def test_without_authentication_uploads_have_no_owner(
    tus_server: StartServer, state: redis.Redis
) -> None:
    guarded = tus_server()
    url = guarded.create(3)

    assert state.hget(info_key(url.rsplit("/", 1)[1]), "owner") is None
    assert guarded.head(url).status_code == 200


# --- an application's own sessions: create_app(config, authenticate=...) -----

SESSIONS = {"s-alice": "alice", "s-bob": "bob"}


@pytest.fixture
def session_app(redis_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    """tusserver mounted at /api by an app with cookie sessions, which also
    accepts the bearer tokens the config sets up."""
    config = Config(storage=str(tmp_path / "storage"), redis_url=redis_url, **JWT_FIELDS)
    bearer_tokens = auth.jwt_authenticator(config)
    assert bearer_tokens is not None

    async def authenticate(request: Request) -> str | None:
        session = request.cookies.get("session")
        if session == "s-banned":
            raise errors.forbidden("account_suspended", "This account may not upload.")
        if session is not None:
            if session not in SESSIONS:
                raise errors.unauthorized("session_expired", "Your session has ended.", "Log in.")
            return SESSIONS[session]
        if "Authorization" in request.headers:
            return await bearer_tokens(request)
        return None  # anonymous

    inner = create_app(config, authenticate=authenticate)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner.router.lifespan_context(inner):
            yield

    outer = Starlette(routes=[Mount("/api", app=inner)], lifespan=lifespan)
    port = free_port()
    uvicorn = ThreadedUvicorn(outer, port)
    uvicorn.start()
    client = httpx.Client(timeout=30)
    url = f"http://127.0.0.1:{port}"
    try:
        yield RunningServer(url, url + "/api/files/", tmp_path / "storage", config, client)
    finally:
        client.close()
        uvicorn.stop()


def as_session(session: str | None) -> dict[str, str]:
    return {} if session is None else {"Cookie": f"session={session}"}


def test_an_authenticate_callable_binds_uploads_to_the_apps_users(
    session_app: RunningServer, state: redis.Redis
) -> None:
    guarded = session_app
    alices = guarded.create(4, **as_session("s-alice"))
    anonymous = guarded.create(4)

    def head(url: str, headers: dict[str, str]) -> int:
        return guarded.client.head(url, headers={**TUS, **headers}).status_code

    assert state.hget(info_key(alices.rsplit("/", 1)[1]), "owner") == "alice"
    assert head(alices, as_session("s-alice")) == 200
    assert head(alices, ALICE) == 200  # her bearer token is her too
    assert head(alices, as_session("s-bob")) == 403
    assert head(alices, {}) == 403  # anonymous
    # An anonymous upload has no owner: anyone holding its URL may use it.
    assert state.hget(info_key(anonymous.rsplit("/", 1)[1]), "owner") is None
    assert head(anonymous, as_session("s-bob")) == 200
    assert head(anonymous, {}) == 200


def test_an_authenticate_callable_refuses_with_its_own_401_and_403(
    session_app: RunningServer,
) -> None:
    guarded = session_app

    def post(headers: dict[str, str]) -> httpx.Response:
        return guarded.client.post(
            guarded.endpoint, headers={**TUS, "Upload-Length": "1", **headers}
        )

    expired = post(as_session("s-unknown"))
    banned = post(as_session("s-banned"))
    bad_token = post({"Authorization": f"Bearer {token('alice', expires_in=-3600)}"})

    assert_tus_error(expired, 401, "session_expired")
    assert expired.headers["WWW-Authenticate"].startswith("Bearer")
    assert_tus_error(banned, 403, "account_suspended")
    assert_tus_error(bad_token, 401, "token_expired")
    assert guarded.client.options(guarded.endpoint).status_code == 200
