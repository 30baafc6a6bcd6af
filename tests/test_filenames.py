"""Hostile ``filename`` metadata with ``--final-name {filename}``: every
upload completes, and its file lands directly in the storage root under a
name that is one safe segment on Linux, Windows and SMB."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import b64, upload_id_of
from tests.server_fixtures import TUS, RunningServer

StartServer = Callable[..., RunningServer]

# Windows device names, whatever follows a dot or spaces, superscript digits
# included; checked here independently of the server's own rule.
RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{device}{digit}" for device in ("COM", "LPT") for digit in "0123456789\u00b9\u00b2\u00b3"
}

NAMES = {
    "traversal": b"../../etc/passwd",
    "deep-traversal": b"../" * 50 + b"escape.txt",
    "absolute": b"/etc/passwd",
    "backslashes": b"..\\..\\Windows\\System32\\drivers\\etc\\hosts",
    "drive": b"C:\\autoexec.bat",
    "unc": b"\\\\server\\share\\x.txt",
    "nul-byte": b"photo.png\x00.exe",
    "only-nul": b"\x00",
    "controls": b"a\r\nb\tc\x1b[31m.txt",
    "dot-dot": b"..",
    "dots-and-spaces": b" . .. . ",
    "CON": b"CON",
    "NUL": b"NUL",
    "COM1": b"COM1",
    "lpt-superscript": "LPT\u00b9".encode(),
    "aux.txt": b"aux.txt",
    "nul-with-spaces": b"NUL  .tar.gz",
    "conin": b"CONIN$",
    "bidi-override": "invoice\u202efdp.exe".encode(),
    "unicode-4k": ("\u00e9" * 2048).encode(),
    "emoji-4k": ("\U0001f600" * 1024).encode(),
    "decomposed-4k-with-extension": ("e\u0301" * 1364 + ".png").encode(),
    "invalid-utf8": b"\xff\xfe\xc3(.txt",
}


def assert_safe(name: str) -> None:
    assert name and name == name.strip(" .")
    assert not re.search(r'[\x00-\x1f\x7f<>:"/\\|?*\u202a-\u202e\u2066-\u2069]', name)
    assert re.split(r"[ .]", name, maxsplit=1)[0].upper() not in RESERVED
    assert len(name.encode("utf-8")) <= 255
    assert unicodedata.is_normalized("NFC", name)


@pytest.mark.parametrize("raw", NAMES.values(), ids=NAMES.keys())
def test_a_hostile_filename_publishes_a_safe_name_inside_the_storage_root(
    tus_server: StartServer, tmp_path: Path, raw: bytes
) -> None:
    server = tus_server(final_name="{filename}")
    around = sorted(os.listdir(tmp_path))
    data = os.urandom(1000)
    headers = {**TUS, "Upload-Length": "1000", "Upload-Metadata": f"filename {b64(raw)}"}
    created = server.client.post(server.endpoint, headers=headers)
    assert created.status_code == 201, created.text
    url = server.url + created.headers["Location"]

    assert server.patch(url, 0, data).status_code == 204

    published = [path for path in server.storage.iterdir() if path.name != ".partial"]
    assert len(published) == 1
    final = published[0]
    assert final.is_file()
    assert final.resolve().parent == server.storage.resolve()
    assert final.read_bytes() == data
    assert_safe(final.name)
    assert list((server.partials).iterdir()) == []
    # Nothing appeared beside the storage root either.
    assert sorted(os.listdir(tmp_path)) == around
    # A name with nothing usable left falls back to the upload id.
    if not raw.strip(b" ."):
        assert final.name == upload_id_of(url)


def test_traversal_keeps_only_the_last_segment(tus_server: StartServer) -> None:
    server = tus_server(final_name="{filename}")
    for raw, expected in ((b"../../etc/passwd", "passwd"), (b"a\\b\\..\\hosts", "hosts")):
        headers = {**TUS, "Upload-Length": "1", "Upload-Metadata": f"filename {b64(raw)}"}
        url = server.url + server.client.post(server.endpoint, headers=headers).headers["Location"]
        assert server.patch(url, 0, b"x").status_code == 204
        assert (server.storage / expected).read_bytes() == b"x"
