"""tus-js-client and Uppy, unchanged, in a real headless Chromium, on a page
served from another origin than tusserver (docs/clients.md, "Browsers, proxies
and CORS"). The page makes its file from a seeded generator; the expected
bytes are computed here independently and compared with the file on disk.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tests.e2e_clients import CHROMIUM, StaticSite, pseudo_random_bytes
from tests.jwt_tokens import JWT_FIELDS, bearer
from tests.server_fixtures import TUS, RunningServer

StartServer = Callable[..., RunningServer]
KiB = 1024
MiB = 1024 * KiB


def run_browser(
    harness: Path, page: str, steps: list[dict[str, Any]], profile: Path, **options: Any
) -> dict[str, Any]:
    """Run ``steps`` on ``page`` in Chromium: {"results": [...], "console": [...]}.

    ``options`` go to drive.mjs as they are (``ready``: the global a page other
    than the test page sets when it is ready).
    """
    spec = {
        "page": page,
        "steps": steps,
        "userDataDir": str(profile),
        "executablePath": str(CHROMIUM),
        **options,
    }
    done = subprocess.run(
        ["node", "drive.mjs", json.dumps(spec)],
        cwd=harness,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"browser run failed:\n{done.stdout}\n{done.stderr}"
    output: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return output


def drive(harness: Path, page: str, steps: list[dict[str, Any]], profile: Path) -> list[Any]:
    """Run ``steps`` on the test page ``page`` in Chromium; each step's result, in order."""
    results: list[Any] = run_browser(harness, page, steps, profile)["results"]
    return results


def uppy_upload(site: StaticSite, harness: Path, profile: Path, **file: Any) -> str:
    """Add one generated file to Uppy's Dashboard on the test page, press its
    upload button as a person would, and return the upload URL Uppy got
    (``file``: endpoint, size, seed, name, and optionally chunkSize, headers)."""
    added, _, result = drive(
        harness,
        site.page,
        [
            {"call": "uppyAdd", "args": file},
            {"click": ".uppy-StatusBar-actionBtn--upload"},
            {"call": "uppyResult"},
        ],
        profile,
    )
    assert added == {"files": 1}
    assert result["failed"] == []
    [uploaded] = result["successful"]
    return str(uploaded["url"])


def upload_file(server: RunningServer, url: str) -> Path:
    assert url.startswith(server.endpoint), url
    return server.storage / url.rsplit("/", 1)[1]


def test_uppy_dashboard_on_another_origin_uploads_a_file_byte_identically(
    tus_server: StartServer, static_site: StaticSite, browser_harness: Path, tmp_path: Path
) -> None:
    server = tus_server(cors_origins=(static_site.origin,))
    size, seed = 3 * MiB + 333, 11

    url = uppy_upload(
        static_site,
        browser_harness,
        tmp_path / "profile",
        endpoint=server.endpoint,
        size=size,
        seed=seed,
        name="a.bin",
    )

    assert upload_file(server, url).read_bytes() == pseudo_random_bytes(size, seed)


def test_uppy_with_a_bearer_token_uploads_to_a_server_that_checks_tokens(
    tus_server: StartServer, static_site: StaticSite, browser_harness: Path, tmp_path: Path
) -> None:
    # Cross-origin: the preflight passes without a token, every request with it.
    server = tus_server(cors_origins=(static_site.origin,), **JWT_FIELDS)
    size, seed = 2 * MiB + 17, 23
    file = {"endpoint": server.endpoint, "size": size, "seed": seed, "name": "token.bin"}

    url = uppy_upload(
        static_site,
        browser_harness,
        tmp_path / "profile",
        **file,
        chunkSize=MiB,
        headers=bearer("carol"),
    )

    assert upload_file(server, url).read_bytes() == pseudo_random_bytes(size, seed)
    head = server.client.head(url, headers={**TUS, **bearer("dave")})
    assert head.status_code == 403  # bound to carol


def test_the_dashboard_example_uploads_a_chosen_file_from_another_origin_byte_identically(
    tus_server: StartServer,
    dashboard_example: StaticSite,
    browser_harness: Path,
    tmp_path: Path,
) -> None:
    # examples/js/dashboard as shipped and bundled, pointed at this server.
    server = tus_server(cors_origins=(dashboard_example.origin,))
    source = tmp_path / "holiday.mov"
    # Past the example's 8 MiB chunk size: two PATCHes.
    source.write_bytes(pseudo_random_bytes(9 * MiB + 21, 13))
    page = f"{dashboard_example.origin}/?{urlencode({'endpoint': server.endpoint})}"

    output = run_browser(
        browser_harness,
        page,
        [
            # "browse files", then the file in the chooser it opens.
            {"choose": ".uppy-Dashboard-browse", "files": [str(source)]},
            {"click": ".uppy-StatusBar-actionBtn--upload"},
            {"waitFor": ".uppy-StatusBar.is-complete"},
        ],
        tmp_path / "profile",
        ready="uppy",
    )

    assert output["results"][0] == {"chosen": 1}
    # What the example prints when Uppy reports the upload complete.
    [line] = [line for line in output["console"] if line.startswith("log: holiday.mov: ")]
    url = line.removeprefix("log: holiday.mov: ")
    assert upload_file(server, url).read_bytes() == source.read_bytes()


def test_tus_js_client_in_the_browser_resumes_a_chunked_upload_after_a_reload(
    tus_server: StartServer, static_site: StaticSite, browser_harness: Path, tmp_path: Path
) -> None:
    server = tus_server(cors_origins=(static_site.origin,))
    file = {
        "endpoint": server.endpoint,
        "size": 3 * MiB + 5,
        "seed": 7,
        "name": "resume.bin",
        "chunkSize": 512 * KiB,
    }

    aborted, _, resumed = drive(
        browser_harness,
        static_site.page,
        [
            {"call": "tusStartAndAbort", "args": {**file, "abortAfter": MiB}},
            {"reload": True},
            {"call": "tusResume", "args": file},
        ],
        tmp_path / "profile",
    )

    assert "error" not in aborted, aborted
    assert "error" not in resumed, resumed
    # Found under the file's fingerprint in localStorage, after the reload.
    assert resumed["previous"] == 1
    assert resumed["url"] == aborted["url"]
    methods = [request["method"] for request in resumed["requests"]]
    assert methods[0] == "HEAD"
    assert "POST" not in methods
    patch_offsets = [int(r["offset"]) for r in resumed["requests"] if r["method"] == "PATCH"]
    # It went on from where the server had it, not from byte 0.
    assert patch_offsets[0] == aborted["accepted"] >= MiB
    assert patch_offsets == list(range(patch_offsets[0], file["size"], 512 * KiB))
    stored = upload_file(server, resumed["url"]).read_bytes()
    assert stored == pseudo_random_bytes(file["size"], file["seed"])


def test_a_page_on_an_origin_that_is_not_allowed_cannot_upload(
    tus_server: StartServer, static_site: StaticSite, browser_harness: Path, tmp_path: Path
) -> None:
    server = tus_server(cors_origins=("http://127.0.0.1:1",))

    [result] = drive(
        browser_harness,
        static_site.page,
        [
            {
                "call": "tusUpload",
                "args": {"endpoint": server.endpoint, "size": 1000, "seed": 3, "retryDelays": []},
            }
        ],
        tmp_path / "profile",
    )

    assert "error" in result
    # The preflight was refused, so the browser never sent the POST.
    assert [r["method"] for r in result["requests"]] == ["POST"]
    assert not server.storage.exists() or not any(
        path.is_file() for path in server.storage.rglob("*")
    )


def test_tus_js_client_in_the_browser_uploads_in_parallel_parts_and_concatenates(
    tus_server: StartServer, static_site: StaticSite, browser_harness: Path, tmp_path: Path
) -> None:
    # Needs the concatenation extension (Upload-Concat partial/final).
    server = tus_server(cors_origins=(static_site.origin,))
    size, seed = 2 * MiB + 77, 5

    [result] = drive(
        browser_harness,
        static_site.page,
        [
            {
                "call": "tusUpload",
                "args": {
                    "endpoint": server.endpoint,
                    "size": size,
                    "seed": seed,
                    "parallelUploads": 3,
                    "retryDelays": [],
                },
            }
        ],
        tmp_path / "profile",
    )

    assert "error" not in result, result
    assert upload_file(server, result["url"]).read_bytes() == pseudo_random_bytes(size, seed)
