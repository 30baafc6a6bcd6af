"""tus-js-client on Node.js, for specs that need the real browser client's protocol use.

``tus_js(endpoint, path, **options)`` uploads the file at ``path`` with
``tests/js/upload.mjs`` (tus-js-client, options passed through, retries off)
and returns the upload URL the client ended with. The first use in a session
runs ``npm ci`` in ``tests/js`` when its ``node_modules`` is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).parent / "js"
NPM_CI_TIMEOUT = 300
UPLOAD_TIMEOUT = 120

TusJs = Callable[..., str]


@pytest.fixture(scope="session")
def tus_js() -> TusJs:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "Node.js and npm are needed for the tus-js-client specs: install them "
            "(apt-get install nodejs npm; .ci/run does it when they are missing)."
        )
    if not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        _npm_ci(npm)

    def upload(endpoint: str, path: Path, **options: Any) -> str:
        try:
            result = subprocess.run(
                [node, str(JS_DIR / "upload.mjs"), endpoint, str(path), json.dumps(options)],
                capture_output=True,
                text=True,
                timeout=UPLOAD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"tus-js-client did not finish within {UPLOAD_TIMEOUT} s")
        assert result.returncode == 0, f"tus-js-client failed:\n{result.stderr}"
        url: str = json.loads(result.stdout)["url"]
        return url

    return upload


def _npm_ci(npm: str) -> None:
    try:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"npm ci in tests/js took longer than {NPM_CI_TIMEOUT} s (registry reachable?)")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"npm ci in tests/js failed (exit {exc.returncode}):\n{exc.stderr[-3000:]}")
