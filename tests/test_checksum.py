"""checksum extension (Upload-Checksum per chunk) and whole-file integrity
(the SHA-256 recorded with every finished upload, the ``checksum`` metadata)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from tusclient.client import TusClient

from tests.helpers import assert_tus_error, b64, upload_id_of
from tests.raw_http import raw_patch, send_in_pieces, wait_until
from tests.server_fixtures import OCTETS, TUS, RunningServer
from tusserver.hook_events import HookEvent
from tusserver.hooks import Hooks

KiB = 1024
MiB = 1024 * KiB

StartServer = Callable[..., RunningServer]


def checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        digest = zlib.crc32(data).to_bytes(4, "big")
    else:
        digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode('ascii')}"


def record(state: redis.Redis, upload_url: str) -> dict[str, str]:
    fields: dict[str, str] = state.hgetall(f"tus:{{{upload_id_of(upload_url)}}}:info")
    return fields


def head_offset(server: RunningServer, upload_url: str) -> int:
    response = server.head(upload_url)
    assert response.status_code == 200, response.text
    return int(response.headers["Upload-Offset"])


def test_options_advertises_checksum_and_its_algorithms(tus_server: StartServer) -> None:
    server = tus_server()
    response = server.client.options(server.endpoint)
    assert "checksum" in response.headers["Tus-Extension"].split(",")
    algorithms = response.headers["Tus-Checksum-Algorithm"].split(",")
    assert set(algorithms) == {"sha1", "md5", "sha256", "sha512", "crc32"}


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
def test_patch_with_matching_checksum_is_accepted(tus_server: StartServer, algorithm: str) -> None:
    server = tus_server()
    data = os.urandom(300 * KiB)
    upload_url = server.create(len(data))
    response = server.patch(upload_url, 0, data, Upload_Checksum=checksum(algorithm, data))
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    assert (server.storage / upload_id_of(upload_url)).read_bytes() == data


def test_patch_with_mismatching_checksum_returns_460_and_next_correct_patch_completes(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(block_size=256 * KiB)
    data = os.urandom(3 * MiB)
    upload_url = server.create(len(data))
    first = data[: 1 * MiB]
    assert server.patch(upload_url, 0, first, Upload_Checksum=checksum("sha1", first)).is_success
    committed = (server.partials / upload_id_of(upload_url)).read_bytes()[: len(first)]

    wrong = checksum("sha1", b"not these bytes")
    response = server.patch(upload_url, len(first), data[len(first) :], Upload_Checksum=wrong)

    assert_tus_error(response, 460, "checksum_mismatch")
    assert head_offset(server, upload_url) == len(first)
    assert record(state, upload_url)["offset"] == str(len(first))
    # The committed bytes are untouched; the discarded chunk lies past the offset.
    assert (server.partials / upload_id_of(upload_url)).read_bytes()[: len(first)] == committed
    rest = data[len(first) :]
    response = server.patch(upload_url, len(first), rest, Upload_Checksum=checksum("sha1", rest))
    assert response.status_code == 204, response.text
    final = (server.storage / upload_id_of(upload_url)).read_bytes()
    assert hashlib.sha256(final).digest() == hashlib.sha256(data).digest()
    # The file digest survived the discarded chunk: it is the digest of the file.
    assert record(state, upload_url)["sha256"] == hashlib.sha256(data).hexdigest()


def test_an_empty_patch_is_held_to_its_upload_checksum_too(
    tus_server: StartServer, state: redis.Redis
) -> None:
    # The checksum is of the request's body, however short: an empty body
    # matches only the checksum of nothing.
    server = tus_server()
    upload_url = server.create(5)

    wrong = server.patch(upload_url, 0, b"", Upload_Checksum=checksum("sha1", b"hello"))
    right = server.patch(upload_url, 0, b"", Upload_Checksum=checksum("sha1", b""))

    assert_tus_error(wrong, 460, "checksum_mismatch")
    assert right.status_code == 204, right.text
    assert right.headers["Upload-Offset"] == "0"
    assert record(state, upload_url)["offset"] == "0"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("whirlpool AAAA", "unsupported_checksum_algorithm"),
        ("sha1 not-base64!", "invalid_header"),
        ("sha1 " + b64(b"too short"), "invalid_header"),
        ("sha1", "invalid_header"),
    ],
)
def test_bad_upload_checksum_is_400_before_any_byte_is_read(
    tus_server: StartServer, value: str, code: str
) -> None:
    server = tus_server()
    data = os.urandom(100 * KiB)
    upload_url = server.create(len(data))
    response = server.patch(upload_url, 0, data, Upload_Checksum=value)
    assert_tus_error(response, 400, code)
    assert head_offset(server, upload_url) == 0
    assert (server.partials / upload_id_of(upload_url)).stat().st_size == 0


def test_checksummed_chunk_cut_short_by_a_disconnect_is_discarded(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(block_size=256 * KiB, lock_ttl=30)
    data = os.urandom(4 * MiB)
    upload_url = server.create(len(data))
    lock_key = f"tus:{{{upload_id_of(upload_url)}}}:lock"
    with raw_patch(
        upload_url,
        0,
        content_length=len(data),
        **{"Upload-Checksum": checksum("sha256", data)},
    ) as request:
        send_in_pieces(request, data[: 2 * MiB])
    wait_until(lambda: not state.exists(lock_key), "the PATCH ended after the disconnect")
    assert head_offset(server, upload_url) == 0
    assert record(state, upload_url)["offset"] == "0"
    response = server.patch(upload_url, 0, data, Upload_Checksum=checksum("sha256", data))
    assert response.status_code == 204, response.text
    assert (server.storage / upload_id_of(upload_url)).read_bytes() == data


def test_checksummed_chunk_ended_by_the_idle_timeout_answers_460_body_incomplete(
    tus_server: StartServer, state: redis.Redis
) -> None:
    # The client is still there to read the answer: it must say the chunk
    # was cut, not that its bytes failed the checksum, and keep none of them.
    server = tus_server(block_size=64 * KiB, idle_timeout=1.0, lock_ttl=30)
    data = os.urandom(1 * MiB)
    upload_url = server.create(len(data))
    with raw_patch(
        upload_url,
        0,
        content_length=len(data),
        **{"Upload-Checksum": checksum("sha256", data)},
    ) as request:
        send_in_pieces(request, data[: 300 * KiB])
        answer = request.response(timeout=15)

    assert answer.status == 460
    assert answer.headers["tus-resumable"] == "1.0.0"
    error = json.loads(answer.body)["error"]
    assert error["code"] == "checksum_body_incomplete"
    assert error["retryable"] is True
    assert head_offset(server, upload_url) == 0
    assert record(state, upload_url)["offset"] == "0"


def test_creation_with_upload_verifies_upload_checksum(tus_server: StartServer) -> None:
    server = tus_server()
    data = os.urandom(64 * KiB)
    headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS}
    good = server.client.post(
        server.endpoint, headers={**headers, "Upload-Checksum": checksum("md5", data)}, content=data
    )
    assert good.status_code == 201, good.text
    assert good.headers["Upload-Offset"] == str(len(data))

    bad = server.client.post(
        server.endpoint,
        headers={**headers, "Upload-Checksum": checksum("md5", b"other")},
        content=data,
    )
    assert_tus_error(bad, 460, "checksum_mismatch")
    # The client never learned a URL for the refused upload: nothing is left of it.
    assert sorted(p.name for p in server.partials.iterdir()) == []
    assert sorted(p.name for p in server.storage.iterdir() if p.is_file()) == [
        upload_id_of(good.headers["Location"])
    ]


@pytest.mark.parametrize("chunks", [1, 5])
def test_every_finished_upload_records_the_sha256_of_its_bytes(
    tus_server: StartServer, state: redis.Redis, chunks: int
) -> None:
    server = tus_server(block_size=256 * KiB)
    data = os.urandom(5 * MiB + 123)
    upload_url = server.create(len(data))
    step = -(-len(data) // chunks)
    for start in range(0, len(data), step):
        assert server.patch(upload_url, start, data[start : start + step]).is_success
    assert record(state, upload_url)["sha256"] == hashlib.sha256(data).hexdigest()


def test_empty_upload_records_the_sha256_of_nothing(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server()
    upload_url = server.create(0)
    assert record(state, upload_url)["sha256"] == hashlib.sha256(b"").hexdigest()


def test_upload_spread_over_two_servers_reads_the_file_back_for_its_sha256(
    tus_server: StartServer, state: redis.Redis, tmp_path: Path
) -> None:
    # Two instances on one Redis and one storage, as two workers would be:
    # the second one never saw the first half stream through it.
    storage = tmp_path / "shared"
    first_server = tus_server(storage=str(storage))
    second_server = tus_server(storage=str(storage))
    data = os.urandom(3 * MiB)
    declared = checksum("sha1", data)
    upload_url = first_server.create(
        len(data), Upload_Metadata=f"checksum {b64(declared.encode())}"
    )
    assert first_server.patch(upload_url, 0, data[: 1 * MiB]).is_success
    other_url = upload_url.replace(first_server.url, second_server.url)
    response = second_server.patch(other_url, 1 * MiB, data[1 * MiB :])
    assert response.status_code == 204, response.text
    assert record(state, upload_url)["sha256"] == hashlib.sha256(data).hexdigest()
    assert (storage / upload_id_of(upload_url)).read_bytes() == data


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_declared_file_checksum_that_matches_finalizes_the_upload(
    tus_server: StartServer, state: redis.Redis, algorithm: str
) -> None:
    server = tus_server()
    data = os.urandom(2 * MiB)
    metadata = f"filename {b64(b'a.bin')},checksum {b64(checksum(algorithm, data).encode())}"
    upload_url = server.create(len(data), Upload_Metadata=metadata)
    assert server.patch(upload_url, 0, data[:MiB]).is_success
    assert server.patch(upload_url, MiB, data[MiB:]).status_code == 204
    assert record(state, upload_url)["state"] == "complete"
    assert (server.storage / upload_id_of(upload_url)).read_bytes() == data


def test_declared_file_checksum_that_differs_is_460_and_nothing_is_published(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(final_name="{filename}")
    data = os.urandom(MiB)
    declared = checksum("sha256", b"a different file")
    metadata = f"filename {b64(b'report.pdf')},checksum {b64(declared.encode())}"
    upload_url = server.create(len(data), Upload_Metadata=metadata)

    response = server.patch(upload_url, 0, data)

    assert_tus_error(response, 460, "upload_checksum_mismatch")
    assert not (server.storage / "report.pdf").exists()
    assert [p.name for p in server.storage.iterdir() if p.is_file()] == []
    fields = record(state, upload_url)
    assert fields["state"] == "failed"
    assert "sha256" in fields["failure"]
    # A client must not take it for finished, nor append to it.
    head = server.head(upload_url)
    assert head.status_code == 460
    again = server.patch(upload_url, len(data), b"")
    assert_tus_error(again, 460, "upload_checksum_mismatch")
    assert fields["failure"] in again.json()["error"]["message"], "not the recorded reason"
    # A HEAD has no body to say why; sent as a POST with X-HTTP-Method-Override
    # (clients behind proxies that pass only GET and POST), it has one.
    overridden = server.client.post(
        upload_url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"}, content=b""
    )
    assert_tus_error(overridden, 460, "upload_checksum_mismatch")
    assert fields["failure"] in overridden.json()["error"]["message"], "not the recorded reason"
    # It can still be deleted, bytes and all.
    assert server.client.delete(upload_url, headers=TUS).status_code == 204
    assert not (server.partials / upload_id_of(upload_url)).exists()


@pytest.mark.parametrize("value", [b"sha256", b"whirlpool AAAA", b"sha256 " + b"A" * 10])
def test_malformed_checksum_metadata_is_refused_at_creation(
    tus_server: StartServer, value: bytes
) -> None:
    server = tus_server()
    response = server.client.post(
        server.endpoint,
        headers={**TUS, "Upload-Length": "10", "Upload-Metadata": f"checksum {b64(value)}"},
    )
    assert_tus_error(response, 400, "invalid_upload_metadata")


def test_tuspy_with_upload_checksum_completes(
    tus_server: StartServer, state: redis.Redis, tmp_path: Path
) -> None:
    server = tus_server()
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * MiB + 17))
    uploader = TusClient(server.endpoint).uploader(
        str(source), chunk_size=MiB, upload_checksum=True, metadata={"filename": "x.bin"}
    )
    uploader.upload()
    assert uploader.url is not None
    final = server.storage / upload_id_of(str(uploader.url))
    assert final.read_bytes() == source.read_bytes()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert record(state, str(uploader.url))["sha256"] == digest


def test_tuspy_checksum_header_is_what_the_server_verifies(tus_server: StartServer) -> None:
    # tuspy sends "sha1 <base64>"; a corrupted body with its header must be refused.
    server = tus_server()
    data = os.urandom(10 * KiB)
    upload_url = server.create(len(data))
    corrupted = bytes([data[0] ^ 1]) + data[1:]
    response = httpx.patch(
        upload_url,
        headers={
            **TUS,
            "Content-Type": OCTETS,
            "Upload-Offset": "0",
            "Upload-Checksum": checksum("sha1", data),
        },
        content=corrupted,
    )
    assert_tus_error(response, 460, "checksum_mismatch")
    assert head_offset(server, upload_url) == 0


# --- --file-digest none ---------------------------------------------------------


def test_with_the_file_digest_off_a_finished_upload_and_its_hook_event_carry_no_sha256(
    tus_server: StartServer, state: redis.Redis
) -> None:
    finished: list[HookEvent] = []

    async def on_finish(event: HookEvent) -> None:
        finished.append(event)

    server = tus_server(file_digest="none", hooks=Hooks(post_finish=on_finish))
    data = os.urandom(MiB + 7)
    upload_url = server.create(len(data))

    assert server.patch(upload_url, 0, data).status_code == 204

    fields = record(state, upload_url)
    assert fields["state"] == "complete"
    assert "sha256" not in fields, "no digest was computed, so none is recorded"
    assert (server.storage / upload_id_of(upload_url)).read_bytes() == data
    wait_until(lambda: bool(finished), "the post-finish hook was called")
    storage = finished[0].upload.storage
    assert storage == {"Type": "tusserver", "Location": upload_id_of(upload_url)}


def test_with_the_file_digest_off_a_form_answer_names_no_sha256(tus_server: StartServer) -> None:
    server = tus_server(file_digest="none")
    response = server.client.post(server.endpoint, files={"file": ("a.txt", b"form bytes")})
    assert response.status_code == 201, response.text
    [stored] = response.json()["files"]
    assert stored["size"] == len(b"form bytes")
    assert "sha256" not in stored


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_with_the_file_digest_off_a_declared_checksum_is_still_verified(
    tus_server: StartServer, state: redis.Redis, algorithm: str
) -> None:
    server = tus_server(file_digest="none")
    data = os.urandom(2 * MiB)
    right = server.create(
        len(data), Upload_Metadata=f"checksum {b64(checksum(algorithm, data).encode())}"
    )
    wrong = server.create(
        len(data), Upload_Metadata=f"checksum {b64(checksum(algorithm, b'other').encode())}"
    )

    assert server.patch(right, 0, data[:MiB]).is_success
    assert server.patch(right, MiB, data[MiB:]).status_code == 204
    assert_tus_error(server.patch(wrong, 0, data), 460, "upload_checksum_mismatch")

    assert record(state, right)["state"] == "complete"
    assert (server.storage / upload_id_of(right)).read_bytes() == data
    assert record(state, wrong)["state"] == "failed"
    assert not (server.storage / upload_id_of(wrong)).exists()


def test_with_the_file_digest_off_a_declared_checksum_spread_over_two_servers_is_verified(
    tus_server: StartServer, state: redis.Redis, tmp_path: Path
) -> None:
    # The second instance never saw the first half: it reads the file back
    # for the declared algorithm alone.
    storage = tmp_path / "shared"
    first = tus_server(storage=str(storage), file_digest="none")
    second = tus_server(storage=str(storage), file_digest="none")
    data = os.urandom(3 * MiB)
    declared = checksum("sha1", data)
    upload_url = first.create(len(data), Upload_Metadata=f"checksum {b64(declared.encode())}")
    assert first.patch(upload_url, 0, data[:MiB]).is_success
    other_url = upload_url.replace(first.url, second.url)
    assert second.patch(other_url, MiB, data[MiB:]).status_code == 204
    fields = record(state, upload_url)
    assert fields["state"] == "complete"
    assert "sha256" not in fields
