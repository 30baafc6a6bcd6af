"""Whole-file integrity: the SHA-256 recorded with every finished upload
(unless the file digest is ``none``), and
the digest a client may declare for the whole file when creating it
(metadata ``checksum``: ``sha256 <base64>``, or sha1, md5, ... likewise).

A declared digest that does not match means the upload is not finalized:
nothing appears under a final name, and the record says why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from storage_backends.base import Storage
from tusserver import errors
from tusserver.digests import NO_FILE_DIGEST, RunningDigests, digest_stored_bytes
from tusserver.protocol import CHECKSUM_METADATA_KEY, Checksum, parse_checksum
from tusserver.record import Upload

logger = logging.getLogger(__name__)


def declared_checksum(metadata: Mapping[str, bytes]) -> Checksum | None:
    """The whole-file digest a client declared in its metadata, if any (400 if malformed)."""
    value = metadata.get(CHECKSUM_METADATA_KEY)
    if value is None:
        return None
    try:
        return parse_checksum(value.decode("ascii"), "Upload-Metadata checksum")
    except (UnicodeDecodeError, errors.TusError):
        raise errors.invalid_metadata(
            "the checksum value must be '<algorithm> <base64 digest>', "
            "with algorithm sha256, sha1, md5, sha512 or crc32"
        ) from None


def file_algorithms(declared: Checksum | None, file_digest: str) -> tuple[str, ...]:
    """What to hash the whole file with: the server's file digest (``sha256``,
    or ``none``), plus the algorithm the client declared; possibly nothing."""
    wanted = () if file_digest == NO_FILE_DIGEST else (file_digest,)
    if declared is None or declared.algorithm in wanted:
        return wanted
    return (*wanted, declared.algorithm)


async def file_digests(
    storage: Storage, running: RunningDigests, upload: Upload, algorithms: tuple[str, ...]
) -> dict[str, bytes]:
    """Digests of the upload's ``length`` stored bytes.

    From the state hashed while the bytes streamed through this process, or,
    when they streamed (partly) through another process, by reading the
    partial back once.
    """
    assert upload.length is not None
    if not algorithms:
        return {}
    hashers = running.resume(upload.id, upload.length, algorithms)
    if hashers is not None:
        return {algorithm: hasher.digest() for algorithm, hasher in hashers.items()}
    logger.info("upload %s: digest not known in this process; reading the file back", upload.id)
    return await digest_stored_bytes(storage.read(upload.id, None, 0, upload.length), algorithms)


async def published_digests(
    storage: Storage, upload: Upload, location: str, algorithms: tuple[str, ...]
) -> dict[str, bytes]:
    """Digests of the file an earlier finalize of ``upload`` published at
    ``location``, read back (its partial is gone)."""
    assert upload.length is not None
    if not algorithms:
        return {}
    return await digest_stored_bytes(
        storage.read(upload.id, location, 0, upload.length), algorithms
    )


def mismatch(declared: Checksum | None, digests: Mapping[str, bytes]) -> str | None:
    """Why the file does not match its declared digest, or None if it does."""
    if declared is None or digests[declared.algorithm] == declared.digest:
        return None
    return (
        f"declared {declared.algorithm} differs from the {declared.algorithm} of the bytes received"
    )
