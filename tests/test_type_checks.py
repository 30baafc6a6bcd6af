"""--allow-types: the declared type is checked at creation (415), the first
bytes when they arrive (415, the upload failed and its bytes removed).

Files are made here: a real PNG and JPEG header, an ELF and a PE
executable, plain text. Each is larger than the sniffed head unless a spec
says otherwise, so the head is judged while the body still streams.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError

from tests.helpers import assert_tus_error, b64, upload_id_of
from tests.server_fixtures import OCTETS, TUS, RunningServer
from tusserver import content_types
from tusserver.content_types import HEAD_SIZE

StartServer = Callable[..., RunningServer]
SIZE = 200 * 1024  # past the head, so it is judged mid-body
IMAGES = ("image/*", "application/pdf")


def png(size: int = SIZE) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    end = chunk(b"IEND", b"")
    filler = os.urandom(max(0, size - len(header) - len(end) - 12))
    return header + chunk(b"IDAT", filler) + end


def jpeg(size: int = SIZE) -> bytes:
    start = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return start + os.urandom(size - len(start))


def elf(size: int = SIZE) -> bytes:
    # An x86-64 executable's ELF header, then code-like noise.
    start = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00\x01\x00\x00\x00"
    return start + os.urandom(size - len(start))


def pe(size: int = SIZE) -> bytes:
    # A DOS stub pointing at a PE header, as every Windows .exe starts.
    stub = bytearray(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(112))
    stub[0x3C:0x40] = struct.pack("<I", 0x80)
    start = bytes(stub) + b"PE\x00\x00\x64\x86"
    return start + os.urandom(size - len(start))


def metadata(**values: str) -> str:
    return ",".join(f"{key} {b64(value.encode())}" for key, value in values.items())


def create(server: RunningServer, length: int | None, **values: str) -> Any:
    headers = {**TUS, "Upload-Metadata": metadata(**values)}
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    return server.client.post(server.endpoint, headers=headers)


def url_of(server: RunningServer, response: Any) -> str:
    assert response.status_code == 201, response.text
    return server.url + str(response.headers["Location"])


def assert_failed_and_gone(
    server: RunningServer, state: redis.Redis, url: str, code: str = "upload_content_refused"
) -> None:
    """Its bytes are removed, nothing is published, the record says failed
    and HEAD answers the refusal (so a client does not think it finished)."""
    upload_id = upload_id_of(url)
    assert not (server.partials / upload_id).exists()
    assert sorted(path.name for path in server.storage.iterdir()) == [".partial"]
    record = state.hgetall(f"tus:{{{upload_id}}}:info")
    assert record["state"] == "failed"
    assert record["failcode"] == code
    head = server.head(url)
    assert head.status_code == (415 if code == "upload_content_refused" else 400)
    assert "Upload-Offset" not in head.headers


def test_tuspy_uploads_a_png_declared_as_png(tus_server: StartServer, tmp_path: Path) -> None:
    server = tus_server(allow_types=IMAGES)
    source = tmp_path / "photo.png"
    png_bytes = png()
    source.write_bytes(png_bytes)

    uploader = TusClient(server.endpoint).uploader(
        file_path=str(source), metadata={"filename": "photo.png", "filetype": "image/png"}
    )
    uploader.upload()

    final = server.storage / upload_id_of(str(uploader.url))
    assert (
        hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    )


def test_tuspy_sending_an_executable_renamed_photo_png_is_refused_at_its_first_patch(
    tus_server: StartServer, state: redis.Redis, tmp_path: Path
) -> None:
    server = tus_server(allow_types=IMAGES)
    source = tmp_path / "photo.png"
    source.write_bytes(elf())
    uploader = TusClient(server.endpoint).uploader(
        file_path=str(source), metadata={"filename": "photo.png", "filetype": "image/png"}
    )

    with pytest.raises(TusCommunicationError) as refused:
        uploader.upload()

    assert refused.value.status_code == 415
    assert_failed_and_gone(server, state, str(uploader.url))


@pytest.mark.parametrize("executable", [elf, pe], ids=["elf", "pe"])
def test_an_executable_declared_as_png_is_refused_with_415_and_its_bytes_removed(
    tus_server: StartServer, state: redis.Redis, executable: Callable[[int], bytes]
) -> None:
    server = tus_server(allow_types=IMAGES)
    url = url_of(server, create(server, SIZE, filename="photo.png", filetype="image/png"))

    response = server.patch(url, 0, executable(SIZE))

    assert_tus_error(response, 415, "upload_content_refused")
    assert response.json()["error"]["retryable"] is False
    assert_failed_and_gone(server, state, url)
    # A retried PATCH gets the same answer, never a 409 or a fresh start.
    assert_tus_error(server.patch(url, 0, png()), 415, "upload_content_refused")


def test_a_jpeg_declared_as_png_is_refused_though_both_are_allowed(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(allow_types=IMAGES)
    url = url_of(server, create(server, SIZE, filename="photo.png", filetype="image/png"))

    response = server.patch(url, 0, jpeg())

    assert_tus_error(response, 415, "upload_content_refused")
    assert_failed_and_gone(server, state, url)


def test_a_jpeg_with_its_uppy_type_passes(tus_server: StartServer) -> None:
    server = tus_server(allow_types=IMAGES)
    # Uppy sends `type` (and `name`), not `filetype`.
    url = url_of(server, create(server, SIZE, name="cat.jpg", type="image/jpeg"))

    assert server.patch(url, 0, jpeg()).status_code == 204
    assert (server.storage / upload_id_of(url)).stat().st_size == SIZE


@pytest.mark.parametrize(
    "declared",
    [
        {"filename": "report.pdf", "filetype": "application/x-msdownload"},
        {"filename": "tool.exe"},
        {"name": "cat.jpg", "type": "video/mp4"},
        {"filename": "photo.png", "filetype": "image/png", "type": "text/html"},
    ],
    ids=["filetype", "extension", "uppy-type", "any-one-of-them"],
)
def test_a_declared_type_not_allowed_is_refused_at_creation(
    tus_server: StartServer, state: redis.Redis, declared: dict[str, str]
) -> None:
    server = tus_server(allow_types=IMAGES)

    response = create(server, SIZE, **declared)

    assert_tus_error(response, 415, "upload_type_not_allowed")
    assert state.keys("tus:*") == []
    assert list(server.partials.iterdir()) == []


def test_creation_with_upload_of_an_executable_leaves_nothing(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(allow_types=IMAGES)
    headers = {
        **TUS,
        "Upload-Length": str(SIZE),
        "Upload-Metadata": metadata(filename="photo.png"),
        "Content-Type": OCTETS,
    }

    response = server.client.post(server.endpoint, headers=headers, content=elf())

    # No Location was given: the upload is removed whole, as any failed
    # creation is.
    assert_tus_error(response, 415, "upload_content_refused")
    assert "Location" not in response.headers
    assert list(server.partials.iterdir()) == []
    assert [key for key in state.keys("tus:*") if ":info" in key] == []


def test_a_first_chunk_shorter_than_the_head_is_judged_with_the_next_one(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(allow_types=IMAGES)
    good = png()
    bad = elf()
    good_url = url_of(server, create(server, SIZE, filename="a.png"))
    bad_url = url_of(server, create(server, SIZE, filename="b.png"))

    # 100 bytes cannot be judged yet: they are stored as any chunk is.
    assert server.patch(good_url, 0, good[:100]).status_code == 204
    assert server.patch(bad_url, 0, bad[:100]).status_code == 204
    # The next chunk's request reads those back and judges the whole head.
    assert server.patch(good_url, 100, good[100:]).status_code == 204
    assert_tus_error(server.patch(bad_url, 100, bad[100:]), 415, "upload_content_refused")

    assert (server.storage / upload_id_of(good_url)).read_bytes() == good
    assert not (server.partials / upload_id_of(bad_url)).exists()
    assert state.hget(f"tus:{{{upload_id_of(bad_url)}}}:info", "state") == "failed"


def test_files_smaller_than_the_head_are_judged_whole(tus_server: StartServer) -> None:
    server = tus_server(allow_types=IMAGES)
    small_png, small_elf = png(200), elf(200)
    assert len(small_png) < HEAD_SIZE
    good = url_of(server, create(server, len(small_png), filename="a.png"))
    bad = url_of(server, create(server, len(small_elf), filename="b.png"))

    assert server.patch(good, 0, small_png).status_code == 204
    assert_tus_error(server.patch(bad, 0, small_elf), 415, "upload_content_refused")


def test_a_deferred_length_declared_on_an_empty_patch_is_judged_then(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(allow_types=IMAGES)
    url = url_of(server, create(server, None, filename="photo.png"))
    assert server.patch(url, 0, elf(300)).status_code == 204

    response = server.patch(url, 300, b"", **{"Upload-Length": "300"})

    assert_tus_error(response, 415, "upload_content_refused")
    assert_failed_and_gone(server, state, url)


def test_plain_text_passes_only_declared_as_an_allowed_text_type(
    tus_server: StartServer,
) -> None:
    server = tus_server(allow_types=("text/plain", "text/csv"))
    text = b"name,size\n" + b"a line of plain text, nothing a sniffer knows\n" * 5000

    declared = url_of(server, create(server, len(text), filename="notes.csv"))
    undeclared = url_of(server, create(server, len(text)))
    binary = url_of(server, create(server, len(text), filetype="text/plain"))

    assert server.patch(declared, 0, text).status_code == 204
    # Unknown bytes claiming no type, or "text" holding NUL bytes: refused.
    assert_tus_error(server.patch(undeclared, 0, text), 415, "upload_content_refused")
    blob = b"\x00\x01\x02\x03" + os.urandom(len(text) - 4)
    assert_tus_error(server.patch(binary, 0, blob), 415, "upload_content_refused")


def test_concatenation_parts_are_not_sniffed_but_the_assembled_file_is(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(allow_types=IMAGES)

    def final_of(data: bytes) -> Any:
        urls = []
        for piece in (data[: SIZE // 2], data[SIZE // 2 :]):
            headers = {**TUS, "Upload-Length": str(len(piece)), "Upload-Concat": "partial"}
            part = url_of(server, server.client.post(server.endpoint, headers=headers))
            # The second part starts mid-file: random bytes, still accepted.
            assert server.patch(part, 0, piece).status_code == 204
            urls.append(part)
        headers = {
            **TUS,
            "Upload-Concat": "final;" + " ".join(urls),
            "Upload-Metadata": metadata(filename="photo.png", filetype="image/png"),
        }
        return server.client.post(server.endpoint, headers=headers)

    image = png()
    made = final_of(image)
    assert made.status_code == 201, made.text
    assert (server.storage / upload_id_of(made.headers["Location"])).read_bytes() == image

    refused = final_of(elf())
    assert_tus_error(refused, 415, "upload_content_refused")
    assert "Location" not in refused.headers


def test_without_allowed_types_nothing_is_checked(tus_server: StartServer) -> None:
    server = tus_server()
    executable = elf()
    url = url_of(server, create(server, SIZE, filename="photo.png", filetype="image/png"))

    assert server.patch(url, 0, executable).status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == executable


@pytest.mark.parametrize(
    ("values", "declared"),
    [
        ({"filetype": b"Image/JPG; charset=x"}, {"image/jpeg"}),
        ({"type": b"application/octet-stream"}, set()),
        ({"filename": b"folder.v2/archive"}, set()),
        ({"name": b"photos/cat.PNG", "type": b""}, {"image/png"}),
        ({"filename": b"setup.exe"}, {"application/octet-stream"}),
        ({"filetype": b"image/png\nforged log line"}, {"(unreadable)"}),
    ],
)
def test_declared_types_come_from_filetype_type_and_the_extension(
    values: dict[str, bytes], declared: set[str]
) -> None:
    assert content_types.declared_types(values) == declared


def test_patterns_match_a_whole_type_a_family_or_anything() -> None:
    assert content_types.is_allowed("image/png", ("image/*",))
    assert content_types.is_allowed("video/mp4", ("image/*", "video/mp4"))
    assert not content_types.is_allowed("video/webm", ("image/*", "video/mp4"))
    assert not content_types.is_allowed("imagex/png", ("image/*",))
    assert content_types.is_allowed("application/x-anything", ("*/*",))


def test_footer_signatures_count_only_when_the_head_is_the_whole_file() -> None:
    # An executable whose head happens to end like some format's footer is
    # still an executable: only the start of a partial head is matched.
    head = elf(HEAD_SIZE)
    assert content_types.sniff(head, whole=False) == {"application/octet-stream"}
