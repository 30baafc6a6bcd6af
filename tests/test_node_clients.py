"""tus-js-client, unchanged, in Node.js: whole-file and chunked uploads, a
connection dropped mid-PATCH, a client killed mid-PATCH and started again,
a stream of unknown length (creation-defer-length) and parallel parts
(docs/clients.md). Every finished file is compared byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_clients import CuttingProxy
from tests.server_fixtures import RunningServer

# Every spec runs on each HTTP server `tusserver serve` offers.
pytestmark = pytest.mark.usefixtures("server")

StartServer = Callable[..., RunningServer]
StartProxy = Callable[..., CuttingProxy]
KiB = 1024
MiB = 1024 * KiB
RUN_TIMEOUT = 120.0


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def run_node(harness: Path, spec: dict[str, Any], stdin: bytes | None = None) -> dict[str, Any]:
    """One run of the harness to its end; its last event ("done" or "error")."""
    done = subprocess.run(
        ["node", "node_upload.mjs", json.dumps(spec)],
        cwd=harness,
        input=stdin,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = done.stdout.decode()
    last = events(output)[-1] if events(output) else {}
    assert last.get("event") == "done", f"{output}\n{done.stderr.decode()}"
    return last


@contextmanager
def node_process(harness: Path, spec: dict[str, Any]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        ["node", "node_upload.mjs", json.dumps(spec)],
        cwd=harness,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            assert stream is not None
            stream.close()


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def stored(server: RunningServer, url: str) -> bytes:
    return (server.storage / url.rsplit("/", 1)[1]).read_bytes()


def patch_offsets(result: dict[str, Any]) -> list[int]:
    return [int(r["offset"]) for r in result["requests"] if r["method"] == "PATCH"]


def test_tus_js_client_in_node_uploads_a_file_in_one_patch(
    tus_server: StartServer, browser_harness: Path, tmp_path: Path
) -> None:
    server = tus_server()
    source = random_file(tmp_path / "a.bin", 5 * MiB + 3)

    result = run_node(browser_harness, {"endpoint": server.endpoint, "file": str(source)})

    assert [r["method"] for r in result["requests"]] == ["POST", "PATCH"]
    assert stored(server, result["url"]) == source.read_bytes()


def test_tus_js_client_in_node_uploads_a_file_in_chunks(
    tus_server: StartServer, browser_harness: Path, tmp_path: Path
) -> None:
    server = tus_server()
    source = random_file(tmp_path / "a.bin", 4 * MiB + 100)

    result = run_node(
        browser_harness, {"endpoint": server.endpoint, "file": str(source), "chunkSize": MiB}
    )

    assert patch_offsets(result) == [0, MiB, 2 * MiB, 3 * MiB, 4 * MiB]
    assert stored(server, result["url"]) == source.read_bytes()


def test_tus_js_client_in_node_resumes_after_the_connection_drops_mid_patch(
    tus_server: StartServer, cutting_proxy: StartProxy, browser_harness: Path, tmp_path: Path
) -> None:
    server = tus_server()
    proxy = cutting_proxy(int(server.url.rsplit(":", 1)[1]), limit=3 * MiB)
    source = random_file(tmp_path / "a.bin", 6 * MiB + 1)

    result = run_node(
        browser_harness,
        {"endpoint": proxy.url("/files/"), "file": str(source), "retryDelays": [0, 200, 500]},
    )

    assert proxy.connections >= 2
    methods = [r["method"] for r in result["requests"]]
    # The retry asked where to go on, then sent only the rest. (A HEAD that
    # came before the cut PATCH had committed reads an older offset: the
    # PATCH from there gets 409, and the client asks again.)
    assert methods[:2] == ["POST", "PATCH"] and methods[2] == "HEAD"
    resumed_at = patch_offsets(result)[-1]
    assert 0 < resumed_at < source.stat().st_size
    assert stored(server, result["url"]) == source.read_bytes()


def test_tus_js_client_in_node_killed_mid_patch_resumes_from_its_stored_url(
    tus_server: StartServer, cutting_proxy: StartProxy, browser_harness: Path, tmp_path: Path
) -> None:
    server = tus_server()
    # The client freezes in its third chunk: two are committed, the third half sent.
    proxy = cutting_proxy(int(server.url.rsplit(":", 1)[1]), limit=2 * MiB + 600 * KiB, stall=True)
    source = random_file(tmp_path / "a.bin", 5 * MiB + 9)
    spec = {
        "endpoint": proxy.url("/files/"),
        "file": str(source),
        "chunkSize": MiB,
        "urlStorage": str(tmp_path / "tus-urls.json"),
    }

    with node_process(browser_harness, spec) as first:
        assert proxy.stalled.wait(RUN_TIMEOUT), "the client never got into its third chunk"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.stdout is not None
        first_url = next(e["url"] for e in events(first.stdout.read().decode()) if "url" in e)
    proxy.release()  # the server sees the dead client's connection end
    deadline = time.monotonic() + 10
    while int(server.head(first_url).headers["Upload-Offset"]) < 2 * MiB:
        assert time.monotonic() < deadline, "the first two chunks were not committed"
        time.sleep(0.05)

    result = run_node(browser_harness, spec)

    assert result["url"] == first_url
    methods = [r["method"] for r in result["requests"]]
    assert methods[0] == "HEAD" and "POST" not in methods
    # The server kept the part of the third chunk that arrived (tus: store as
    # much as possible); the client goes on from there.
    assert 2 * MiB <= patch_offsets(result)[0] <= 2 * MiB + 600 * KiB
    assert stored(server, result["url"]) == source.read_bytes()


@pytest.mark.parametrize("size", [2 * MiB, 2 * MiB + 123], ids=["chunk-boundary", "short-end"])
def test_tus_js_client_in_node_streams_data_of_unknown_length_with_a_deferred_length(
    tus_server: StartServer, browser_harness: Path, size: int
) -> None:
    server = tus_server()
    data = os.urandom(size)

    result = run_node(
        browser_harness, {"endpoint": server.endpoint, "file": None, "chunkSize": MiB}, stdin=data
    )

    assert stored(server, result["url"]) == data
    head = server.head(result["url"])
    assert head.headers["Upload-Length"] == head.headers["Upload-Offset"] == str(size)


def test_tus_js_client_in_node_uploads_in_parallel_parts_and_concatenates(
    tus_server: StartServer, browser_harness: Path, tmp_path: Path
) -> None:
    # Needs the concatenation extension (Upload-Concat partial/final).
    server = tus_server()
    source = random_file(tmp_path / "a.bin", 3 * MiB + 11)

    result = run_node(
        browser_harness,
        {"endpoint": server.endpoint, "file": str(source), "parallelUploads": 3, "retryDelays": []},
    )

    assert stored(server, result["url"]) == source.read_bytes()
