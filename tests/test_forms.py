"""Plain form uploads: POST multipart/form-data to the endpoint, for clients
that are not tus clients (an HTML form, ``curl -F``).

Each file part becomes an upload, streamed to storage and finished as tus
uploads are; the form succeeds or fails whole. Real uvicorn on loopback,
real Redis, forms written by hand on raw sockets where a test must decide
which bytes arrive, and the real curl binary for the large one.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from storage_backends.local import LocalStorage
from tests.process_fixtures import ServeProcess
from tests.raw_http import RawRequest
from tests.redis_fixtures import short_temp_dir
from tests.server_fixtures import TUS, RunningServer, ServedApps
from tusserver import Config

KiB = 1024
MiB = 1024 * KiB
BOUNDARY = "----tusserverFormBoundary7MA4YWxkTrZu0gW"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def field(name: str, value: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
    return head.encode() + value + b"\r\n"


def file_part(name: str, filename: str, data: bytes, content_type: str | None = None) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"'
    if content_type is not None:
        head += f"\r\nContent-Type: {content_type}"
    return head.encode() + b"\r\n\r\n" + data + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_form(server: RunningServer, body: bytes, content_type: str = FORM_TYPE) -> httpx.Response:
    return server.client.post(server.endpoint, content=body, headers={"Content-Type": content_type})


def published(storage: Path) -> list[Path]:
    return [path for path in storage.iterdir() if not path.name.startswith(".")]


def stored_nothing(storage: Path, state: redis.Redis) -> bool:
    """No file published, no partial, no upload record."""
    partials = storage / ".partial"
    return (
        not published(storage)
        and not (partials.exists() and any(partials.iterdir()))
        and not state.keys("tus:{*}:info")
    )


def wait_until(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def assert_form_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.json()["error"]["code"] == code


# --- what a form stores ---------------------------------------------------------


def test_a_form_stores_each_file_as_an_upload_that_head_and_get_serve(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    photo, notes = random.Random(1).randbytes(300 * KiB), b"first line\nsecond line\n"
    body = form(
        field("title", b"holiday"),
        file_part("photo", "beach.jpg", photo, "image/jpeg"),
        file_part("notes", "notes.txt", notes),
        field("comment", b"dropped"),
    )
    response = post_form(server, body)

    assert response.status_code == 201, response.text
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Cache-Control"] == "no-store"
    files = response.json()["files"]
    assert [(f["name"], f["filename"], f["size"]) for f in files] == [
        ("photo", "beach.jpg", len(photo)),
        ("notes", "notes.txt", len(notes)),
    ]
    for entry, data in zip(files, (photo, notes), strict=True):
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["url"] == f"/files/{entry['id']}"
        url = server.url + entry["url"]
        head = server.head(url)
        assert head.status_code == 200
        assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
        got = server.client.get(url)
        assert got.status_code == 200 and got.content == data
        assert (server.storage / entry["id"]).read_bytes() == data
        record = state.hgetall(f"tus:{{{entry['id']}}}:info")
        assert record["state"] == "complete" and record["sha256"] == entry["sha256"]
        assert "expires" not in record  # published: no longer expiring
    # filename and filetype are the upload's metadata, as a tus client's would be.
    metadata = server.head(server.url + files[0]["url"]).headers["Upload-Metadata"]
    pairs = dict(pair.split(" ") for pair in metadata.split(","))
    assert base64.b64decode(pairs["filename"]) == b"beach.jpg"
    assert base64.b64decode(pairs["filetype"]) == b"image/jpeg"
    # The fields are not kept anywhere.
    assert b"holiday" not in json.dumps(state.hgetall(f"tus:{{{files[0]['id']}}}:info")).encode()
    assert len(state.keys("tus:{*}:info")) == 2


def test_an_empty_file_input_is_skipped_and_an_empty_file_is_stored(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()
    # A browser sends a file input left empty as a part with filename="".
    body = form(file_part("nothing", "", b"", "application/octet-stream"), file_part("e", "e", b""))
    response = post_form(server, body)
    assert response.status_code == 201, response.text
    [entry] = response.json()["files"]
    assert entry["size"] == 0 and entry["sha256"] == hashlib.sha256(b"").hexdigest()
    assert (server.storage / entry["id"]).read_bytes() == b""


def test_a_filename_is_sanitized_as_tus_metadata_is(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server(final_name="{filename}")
    name = "../../etc/pässwd"
    response = post_form(server, form(file_part("f", name, b"x")))
    assert response.status_code == 201, response.text
    [entry] = response.json()["files"]
    assert entry["filename"] == name
    assert [path.name for path in published(server.storage)] == ["pässwd"]


def test_a_tus_creation_is_unchanged_beside_forms(tus_server: Callable[..., RunningServer]) -> None:
    server = tus_server()
    url = server.create(5)
    assert server.patch(url, 0, b"hello").status_code == 204
    # A multipart Content-Type is what makes a form, Tus-Resumable or not.
    response = server.client.post(
        server.endpoint,
        content=form(file_part("f", "f", b"abc")),
        headers={**TUS, "Content-Type": FORM_TYPE},
    )
    assert response.status_code == 201 and response.json()["files"][0]["size"] == 3


def test_with_forms_off_a_form_gets_what_tus_creation_answers(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(forms=False)
    body = form(file_part("f", "f", b"abc"))
    # curl -F, a browser: no Tus-Resumable.
    assert_form_error(post_form(server, body), 412, "tus_resumable_missing")
    response = server.client.post(
        server.endpoint,
        content=body,
        headers={**TUS, "Content-Type": FORM_TYPE, "Upload-Length": str(len(body))},
    )
    assert_form_error(response, 415, "unsupported_content_type")
    assert stored_nothing(server.storage, state)


# --- refused forms: 400 / 413, nothing stored -----------------------------------


def raw_part(*lines: str) -> bytes:
    """A part written line by line, as no well-behaved client would."""
    return f"--{BOUNDARY}\r\n".encode() + "\r\n".join(lines).encode() + b"\r\n"


ONE_FILE = file_part("f", "f", b"x")
MANY_FIELDS = [field(f"a{n}", b"x") for n in range(1000)]


@pytest.mark.parametrize(
    ("content_type", "body", "code"),
    [
        ("multipart/form-data", form(ONE_FILE), "form_malformed"),
        (f"multipart/form-data; boundary={'b' * 71}", b"", "form_malformed"),
        # Not a boundary where one must be.
        (FORM_TYPE, b"preamble\r\n" + form(ONE_FILE), "form_malformed"),
        (FORM_TYPE, form(raw_part("no colon here", "", "x")), "form_malformed"),
        (FORM_TYPE, form(raw_part("Content-Disposition: attachment", "", "x")), "form_malformed"),
        (FORM_TYPE, form(raw_part("Content-Disposition: form-data", "", "x")), "form_malformed"),
        # Headers beyond the bound.
        (FORM_TYPE, form(file_part("f", "f" * 20_000, b"x")), "form_malformed"),
        # The body ends before the closing boundary.
        (FORM_TYPE, form(file_part("f", "f", b"abc"))[:-30], "form_incomplete"),
        (FORM_TYPE, form(field("a", b"x" * (64 * KiB + 1)), ONE_FILE), "form_field_too_large"),
        (FORM_TYPE, form(*MANY_FIELDS, ONE_FILE), "form_too_many_parts"),
    ],
)
def test_a_malformed_or_refused_form_answers_400_and_stores_nothing(
    tus_server: Callable[..., RunningServer],
    state: redis.Redis,
    content_type: str,
    body: bytes,
    code: str,
) -> None:
    server = tus_server()
    # A good file first (where it keeps the fault a fault): refused with the rest.
    if body.startswith(b"--"):
        body = file_part("good", "good.bin", b"g" * 200 * KiB) + body
    assert_form_error(post_form(server, body, content_type), 400, code)
    wait_until(lambda: stored_nothing(server.storage, state))


def test_a_form_without_a_file_answers_400(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    body = form(field("a", b"x"), file_part("empty", "", b""))
    assert_form_error(post_form(server, body), 400, "form_without_files")
    assert stored_nothing(server.storage, state)


def test_a_file_over_max_size_is_refused_with_413_while_it_arrives(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(max_size=1 * MiB)
    # The first file fits; the second does not: the form fails whole.
    head = (
        file_part("small", "small", b"s" * 100 * KiB)
        + (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="big"; filename="big"\r\n\r\n'
        ).encode()
    )
    big = 64 * MiB
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    request = RawRequest(
        server.endpoint,
        "POST",
        {"Content-Type": FORM_TYPE, "Content-Length": str(len(head) + big + len(tail))},
    )
    try:
        request.send(head)
        sent = 0
        chunk = b"b" * 64 * KiB
        while sent < big and not request.answered() and request.send(chunk):
            sent += len(chunk)
        response = request.response()
    finally:
        request.close()
    assert response.status == 413
    assert json.loads(response.body)["error"]["code"] == "upload_too_large"
    assert response.headers["tus-max-size"] == str(1 * MiB)
    # Refused while arriving: far from all of the 64 MiB was sent.
    assert sent < 16 * MiB
    wait_until(lambda: stored_nothing(server.storage, state))


class FailsSecondFinalize(LocalStorage):
    """Publishes the first file of a form, then fails as a full disk would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.finalized = 0

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        self.finalized += 1
        if self.finalized == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return await super().finalize(upload_id, final_name, length)


def test_a_form_whose_publishing_fails_removes_the_files_published_before(
    redis_url: str, state: redis.Redis, tmp_path: Path
) -> None:
    root = tmp_path / "files"
    backend = FailsSecondFinalize(root)
    served = ServedApps()
    try:
        config = Config(storage=str(root), redis_url=redis_url)
        server = served.start(config, root, backend=backend)
        body = form(file_part("a", "a", b"a" * 1000), file_part("b", "b", b"b" * 1000))
        assert_form_error(post_form(server, body), 507, "storage_full")
        assert backend.finalized == 2
        wait_until(lambda: stored_nothing(root, state))
    finally:
        served.stop()


# --- a form cut, or stalled --------------------------------------------------------


def test_a_form_cut_mid_body_publishes_nothing_not_even_its_finished_files(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server()
    first = random.Random(2).randbytes(512 * KiB)
    second = random.Random(3).randbytes(2 * MiB)
    body = form(file_part("a", "a.bin", first), file_part("b", "b.bin", second))
    request = RawRequest(
        server.endpoint, "POST", {"Content-Type": FORM_TYPE, "Content-Length": str(len(body))}
    )
    try:
        cut = len(body) - MiB
        request.send(body[:cut])
        # The first file is in and the second begun: both uploads exist.
        wait_until(lambda: len(state.keys("tus:{*}:info")) == 2)
        wait_until(lambda: any((server.partials).iterdir()))
    finally:
        request.close()
    wait_until(lambda: stored_nothing(server.storage, state))


def test_a_form_that_stalls_ends_after_the_idle_timeout_storing_nothing(
    tus_server: Callable[..., RunningServer], state: redis.Redis
) -> None:
    server = tus_server(idle_timeout=1.0)
    body = form(file_part("a", "a.bin", b"a" * 300 * KiB), field("late", b"x"))
    for cut in (len(body) - 10, 200 * KiB):  # in a field, then in a file
        request = RawRequest(
            server.endpoint, "POST", {"Content-Type": FORM_TYPE, "Content-Length": str(len(body))}
        )
        try:
            request.send(body[:cut])
            response = request.response(timeout=10)
        finally:
            request.close()
        assert response.status == 400
        assert json.loads(response.body)["error"]["code"] == "form_incomplete"
        wait_until(lambda: stored_nothing(server.storage, state))


# --- curl -F with 1 GiB: byte-exact, memory flat -------------------------------------


def _random_file(path: Path, size: int, seed: int) -> str:
    """A file of ``size`` pseudo-random bytes, written a MiB at a time; its sha256."""
    generator, digest = random.Random(seed), hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // MiB):
            block = generator.randbytes(MiB)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.timeout(600)
def test_curl_form_with_1_gib_of_files_is_byte_exact_and_keeps_server_memory_flat(
    redis_url: str, serve_process: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    folder = short_temp_dir()
    storage = folder / "files"
    server = serve_process(
        "--storage", storage, "--data-dir", folder / "data", "--redis-url", redis_url,
        "--log-level", "warning",
    )  # fmt: skip
    sources = {
        "first": (tmp_path / "first.bin", 600 * MiB),
        "second": (tmp_path / "second.bin", 424 * MiB),
    }
    digests = {
        name: _random_file(path, size, seed)
        for seed, (name, (path, size)) in enumerate(sources.items())
    }

    def curl(*parts: str) -> dict[str, list[dict[str, object]]]:
        command = ["curl", "--silent", "--show-error", "--fail-with-body"]
        command += [arg for part in parts for arg in ("-F", part)]
        done = subprocess.run(
            [*command, server.endpoint], capture_output=True, timeout=500, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        answer: dict[str, list[dict[str, object]]] = json.loads(done.stdout)
        return answer

    warm_up = tmp_path / "warm.bin"
    warm_up.write_bytes(random.Random(9).randbytes(32 * MiB))
    curl(f"w=@{warm_up}")  # the allocator, the thread pools and the imports settle
    before, read_before = server.rss_mib(), server.bytes_read()
    samples: list[float] = []
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            samples.append(server.rss_mib())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        answer = curl(
            *(
                f"{name}=@{path};type=application/octet-stream"
                for name, (path, _) in sources.items()
            )
        )
    finally:
        running.clear()
        sampler.join()
    after, read = server.rss_mib(), server.bytes_read() - read_before
    peak = max([*samples, after])
    print(
        f"server RSS: before {before:.1f} MiB, peak {peak:.1f} MiB, after {after:.1f} MiB",
        f"({len(samples)} samples)",
    )

    files = answer["files"]
    assert [entry["name"] for entry in files] == list(sources)
    for entry in files:
        name = str(entry["name"])
        path, size = sources[name]
        assert entry["size"] == size
        assert entry["filename"] == path.name
        assert entry["sha256"] == digests[name]
        assert _sha256_of(storage / str(entry["id"])) == digests[name]
        head = httpx.head(server.url + str(entry["url"]), headers=TUS)
        assert head.headers["Upload-Offset"] == str(size)
    assert peak - before < 64, f"RSS {before:.0f} -> peak {peak:.0f} MiB"
    # The files were hashed as they arrived, not read back to publish them:
    # the server read the form from its socket and little else.
    total = sum(size for _, size in sources.values())
    assert read < total + 64 * MiB, f"read {read / MiB:.0f} MiB for {total / MiB:.0f} MiB"


def test_the_no_forms_flag_turns_forms_off(
    redis_url: str, serve_process: Callable[..., ServeProcess]
) -> None:
    folder = short_temp_dir()
    server = serve_process(
        "--storage", folder / "files", "--data-dir", folder / "data", "--redis-url", redis_url,
        "--no-forms",
    )  # fmt: skip
    response = httpx.post(server.endpoint, files={"f": ("f.txt", b"abc")})
    assert_form_error(response, 412, "tus_resumable_missing")
