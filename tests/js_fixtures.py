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

from tests.e2e_clients import npm_install_and_build

JS_DIR = Path(__file__).parent / "js"
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
        npm_install_and_build(JS_DIR, build=False)

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
