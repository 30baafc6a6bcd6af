"""Storage URLs choose their backend through the registry
(storage_backends/registry.py): built-in schemes, schemes other packages
register, backend options from the URL, optional dependencies loaded only
when their scheme is used, and one sentence for whatever cannot work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path

import anyio
import httpx
import pytest
from packaging.requirements import Requirement

from storage_backends.local import LocalStorage
from storage_backends.registry import StorageSettingError, StorageSettings, open_storage
from storage_backends.smb import SMBStorage
from storage_backends.smb_location import SMBOptions
from tests.server_fixtures import TUS, free_port
from tests.test_cli import REPO_ROOT, cli_env, serve, tusserver, upload

SMB_URL = "smb://tus@files.example:4450/share/incoming"
PASSWORD = "s3cret-value"


def one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message and "\n" not in message


def test_a_folder_path_and_a_file_url_open_local_storage(tmp_path: Path) -> None:
    settings = StorageSettings(file_mode=0o600)

    by_path = open_storage(str(tmp_path / "a"), settings)
    by_url = open_storage(f"file://{tmp_path / 'b'}", settings)

    assert isinstance(by_path, LocalStorage) and isinstance(by_url, LocalStorage)
    assert (by_path.root, by_url.root) == (tmp_path / "a", tmp_path / "b")
    assert by_path.file_mode == by_url.file_mode == 0o600


def test_default_settings_publish_files_readable_by_everyone(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "a"), StorageSettings())

    assert isinstance(storage, LocalStorage)
    assert storage.file_mode == 0o644


def test_a_registered_backend_whose_module_is_missing_is_a_broken_installation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a setting the person starting the server can fix (no package to
    # install names it): the import error goes up as it is.
    site = tmp_path / "site"
    info = site / "ghost_store-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ghost-store\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[tusserver.storage]\nghost = ghost_store_gone:open_storage\n"
    )
    monkeypatch.syspath_prepend(str(site))

    with pytest.raises(ModuleNotFoundError) as missing:
        open_storage("ghost://anywhere", StorageSettings())

    assert missing.value.name == "ghost_store_gone"


def test_smb_options_come_from_the_url_query_and_the_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUSSERVER_SMB_PASSWORD", PASSWORD)

    tuned = open_storage(SMB_URL + "?timeout=2.5s&connections=3", StorageSettings())
    plain = open_storage(SMB_URL, StorageSettings())

    assert isinstance(tuned, SMBStorage) and isinstance(plain, SMBStorage)
    assert tuned.location.options == SMBOptions(timeout=2.5, connections=3)
    assert plain.location.options == SMBOptions(timeout=30.0, connections=8)
    assert (tuned.location.host, tuned.location.port, tuned.location.share) == (
        "files.example",
        4450,
        "share",
    )
    for storage in (tuned, plain):
        anyio.run(storage.aclose)


def test_the_smb_password_is_in_no_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUSSERVER_SMB_PASSWORD", PASSWORD)

    storage = open_storage(SMB_URL, StorageSettings())

    assert isinstance(storage, SMBStorage)
    server = storage._calls.server
    for shown in (repr(storage), repr(storage.location), repr(server), str(server)):
        assert PASSWORD not in shown
    assert server.password == PASSWORD
    anyio.run(storage.aclose)


@pytest.mark.parametrize(
    ("url", "mentions"),
    [
        (SMB_URL + "?timeout=soon", "timeout must be a duration"),
        (SMB_URL + "?timeout=0s", "timeout must be greater than zero"),
        (SMB_URL + "?connections=0", "connections must be a number from 1 to 64"),
        (SMB_URL + "?connections=65", "connections must be a number from 1 to 64"),
        (SMB_URL + "?connections=many", "connections must be a number from 1 to 64"),
        (SMB_URL + "?retries=3", "option 'retries' is unknown"),
        (SMB_URL + "?timeout=1s&timeout=2s", "option 'timeout' more than once"),
        (SMB_URL + "?timeout", "options must read like"),
        (SMB_URL + f"?password={PASSWORD}", "must not carry a password"),
        (f"smb://tus:{PASSWORD}@files.example/share", "must not carry a password"),
        ("smb://files.example/share", "needs a user"),
        ("smb://tus@files.example", "needs a share"),
    ],
)
def test_an_unusable_smb_url_is_refused_with_one_sentence_and_no_password(
    monkeypatch: pytest.MonkeyPatch, url: str, mentions: str
) -> None:
    monkeypatch.setenv("TUSSERVER_SMB_PASSWORD", PASSWORD)

    with pytest.raises(StorageSettingError) as refused:
        open_storage(url, StorageSettings())

    message = str(refused.value)
    assert mentions in message
    assert one_sentence(message), message
    assert PASSWORD not in message


def test_smb_without_the_password_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUSSERVER_SMB_PASSWORD", raising=False)

    with pytest.raises(StorageSettingError) as refused:
        open_storage(SMB_URL, StorageSettings())

    assert str(refused.value) == "SMB storage needs the password in TUSSERVER_SMB_PASSWORD."


def test_an_unknown_scheme_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(StorageSettingError) as refused:
        open_storage("s3://bucket/uploads", StorageSettings())

    message = str(refused.value)
    assert message.startswith("storage scheme s3:// is not supported")
    assert "file://" in message and "smb://" in message
    assert one_sentence(message), message


# --- optional dependencies --------------------------------------------------------

# Runs in a fresh interpreter: serves an upload on local storage through the
# app's lifespan, then lists the SMB modules that got imported. Of
# cryptography only what the SMB write path signs with counts: redis-py
# imports the bare package to learn whether it is installed.
_LOCAL_ONLY = """
import json, sys
from starlette.testclient import TestClient
import tusserver.app, tusserver.cli
from tusserver import Config, create_app

app = create_app(Config(storage=sys.argv[1], redis_url=sys.argv[2]))
tus = {"Tus-Resumable": "1.0.0"}
with TestClient(app) as client:
    assert client.options("/files/").status_code == 200
    created = client.post("/files/", headers={**tus, "Upload-Length": "5"})
    assert created.status_code == 201, created.text
    patched = client.patch(
        created.headers["Location"],
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        content=b"local",
    )
    assert patched.status_code == 204, patched.text
    assert client.get(created.headers["Location"]).content == b"local"
smb = ("smbprotocol", "smbclient", "spnego", "cryptography.hazmat")
print(json.dumps(sorted(name for name in sys.modules if name.startswith(smb))))
"""


def test_serving_local_storage_never_imports_the_smb_dependencies(
    tmp_path: Path, redis_url: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOCAL_ONLY, str(tmp_path / "files"), redis_url],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
    assert len(list((tmp_path / "files").iterdir())) == 2  # .partial and the upload


# Runs ``tusserver`` as if smbprotocol were not installed.
_WITHOUT_SMBPROTOCOL = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("smbprotocol", "smbclient"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from tusserver.cli import main
main()
"""


def test_smb_storage_without_the_smb_extra_stops_the_start_with_one_sentence(
    tmp_path: Path,
) -> None:
    argv = [sys.executable, "-c", _WITHOUT_SMBPROTOCOL, "serve", "--port", str(free_port())]
    argv += ["--storage", "smb://tus@127.0.0.1:1/share", "--data-dir", str(tmp_path / "d")]

    result = subprocess.run(
        argv,
        env=cli_env(TUSSERVER_SMB_PASSWORD=PASSWORD),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert "install tusserver[smb]" in lines[0]
    assert not (tmp_path / "d").exists(), "nothing starts for a refused storage"


# --- backends of other packages -----------------------------------------------------


def install_acme_backend(site: Path) -> None:
    """A package with one module and an entry point registering ``acme://``, as
    ``pip install`` would leave it in site-packages."""
    site.mkdir()
    (site / "acme_store.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            from urllib.parse import urlsplit

            from storage_backends.local import LocalStorage

            def open_storage(url, settings):
                return LocalStorage(Path(urlsplit(url).path), file_mode=settings.file_mode)
            """
        )
    )
    info = site / "acme_store-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-store\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tusserver.storage]\nacme = acme_store:open_storage\n")


def test_a_scheme_registered_by_another_package_serves_uploads_in_every_worker(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    install_acme_backend(site)
    files = tmp_path / "acme-files"
    pythonpath = os.pathsep.join([str(site), cli_env()["PYTHONPATH"]])

    with serve(
        tmp_path, "--storage", f"acme://{files}", "--workers", "2", env={"PYTHONPATH": pythonpath}
    ) as server:
        ids = [upload(server.endpoint, bytes([n]) * 1000, 400) for n in range(4)]
        extensions = httpx.options(server.endpoint, headers=TUS).headers["Tus-Extension"]

    assert "concatenation" in extensions
    for n, upload_id in enumerate(ids):
        assert (files / upload_id).read_bytes() == bytes([n]) * 1000


def test_serve_has_no_smb_flags_and_its_storage_help_points_to_the_backend_docs() -> None:
    result = subprocess.run(
        tusserver("serve", "--help"), env=cli_env(), capture_output=True, text=True, timeout=30
    )

    assert "docs/storage.md" in result.stdout
    assert "--smb-" not in result.stdout


def test_the_base_install_leaves_the_smb_packages_to_the_smb_extra() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = {Requirement(text).name for text in project["dependencies"]}
    smb = {
        Requirement(text).name: Requirement(text)
        for text in project["optional-dependencies"]["smb"]
    }

    assert not names & {"smbprotocol", "cryptography", "pyspnego"}
    assert set(smb) == {"smbprotocol", "cryptography"}
    # The tests (and .ci/run, which installs .[test]) run the SMB backend too.
    assert "tusserver[smb]" in project["optional-dependencies"]["test"]
    # The lean write path's guard specs run on a release inside the cap.
    assert smb["smbprotocol"].specifier.contains(version("smbprotocol"))
    assert not smb["smbprotocol"].specifier.contains("99")


def test_the_walk_through_quotes_the_example_backend_as_it_is() -> None:
    """docs/storage.md shows examples/memory_storage.py in excerpts: each line it
    quotes must still be in the example, which the contract suite runs."""
    doc = (REPO_ROOT / "docs" / "storage.md").read_text()
    example = (REPO_ROOT / "examples" / "memory_storage.py").read_text().splitlines()
    excerpt = doc.split("```python\n", 1)[1].split("```", 1)[0]

    quoted = [line for line in excerpt.splitlines() if line.strip() not in ("", "...")]

    assert len(quoted) > 10
    assert [line for line in quoted if line not in example] == []
