"""Advertised extensions follow from what the storage backend can do
(tusserver/extensions.py), and an app can be given its backend ready-made.

The backend here is the local one without its concatenation capability:
a backend that only keeps the storage contract of storage_backends/base.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from storage_backends.base import Block, Concatenator, FileStat
from storage_backends.local import LocalStorage
from tests.helpers import assert_tus_error, upload_id_of
from tests.server_fixtures import TUS, RunningServer, ServedApps
from tusserver import Config

UNCONDITIONAL = [
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
]


class WithoutConcat:
    """Local storage that keeps the contract and offers no optional capability."""

    def __init__(self, root: Path) -> None:
        self._local = LocalStorage(root)

    async def check(self) -> None:
        await self._local.check()

    async def create(self, upload_id: str) -> None:
        await self._local.create(upload_id)

    async def write(self, upload_id: str, offset: int, blocks: AsyncIterator[Block]) -> int:
        return await self._local.write(upload_id, offset, blocks)

    async def finalize(self, upload_id: str, final_name: str, length: int) -> str:
        return await self._local.finalize(upload_id, final_name, length)

    async def delete(self, upload_id: str, location: str | None = None) -> None:
        await self._local.delete(upload_id, location)

    async def aclose(self) -> None:
        await self._local.aclose()

    async def stat(self, upload_id: str, location: str | None) -> FileStat:
        return await self._local.stat(upload_id, location)

    def read(
        self, upload_id: str, location: str | None, start: int, end: int
    ) -> AsyncIterator[bytes]:
        return self._local.read(upload_id, location, start, end)

    async def stale_partials(self, older_than: float) -> list[str]:
        return await self._local.stale_partials(older_than)


@pytest.fixture
def server_without_concat(redis_url: str, tmp_path: Path, served_apps: ServedApps) -> RunningServer:
    root = tmp_path / "files"
    # A scheme nobody registered: the app must not even look at it.
    config = Config(storage="unregistered://nowhere", redis_url=redis_url)
    return served_apps.start(config, root, backend=WithoutConcat(root))


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def test_a_backend_without_concat_is_no_concatenator() -> None:
    assert not isinstance(WithoutConcat(Path("unused")), Concatenator)
    assert isinstance(LocalStorage(Path("unused")), Concatenator)


def test_options_does_not_advertise_concatenation_when_the_backend_cannot_concat(
    server_without_concat: RunningServer,
) -> None:
    server = server_without_concat

    response = server.client.options(server.endpoint)

    assert response.status_code == 200
    assert split_list(response.headers["Tus-Extension"]) == UNCONDITIONAL


def test_options_advertises_concatenation_when_the_backend_can_concat(
    tus_server: Callable[..., RunningServer],
) -> None:
    server = tus_server()

    response = server.client.options(server.endpoint)

    extensions = split_list(response.headers["Tus-Extension"])
    assert extensions == [*UNCONDITIONAL[:5], "concatenation", UNCONDITIONAL[5]]


@pytest.mark.parametrize("concat", ["partial", "final;/files/{id} /files/{id}"])
def test_upload_concat_is_refused_with_400_and_nothing_is_created(
    server_without_concat: RunningServer, concat: str
) -> None:
    server = server_without_concat
    part = "0123456789abcdef0123456789abcdef"
    headers = {**TUS, "Upload-Concat": concat.format(id=part)}
    if concat == "partial":
        headers["Upload-Length"] = "5"

    response = server.client.post(server.endpoint, headers=headers)

    assert_tus_error(response, 400, "concatenation_unsupported")
    assert "Location" not in response.headers
    assert list(server.partials.iterdir()) == []


def test_the_given_backend_stores_uploads_whatever_the_configured_url(
    server_without_concat: RunningServer,
) -> None:
    server = server_without_concat
    url = server.create(11)

    response = server.patch(url, 0, b"hello world")

    assert response.status_code == 204, response.text
    assert (server.storage / upload_id_of(url)).read_bytes() == b"hello world"
    assert server.client.get(url).content == b"hello world"
