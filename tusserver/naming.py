"""Final file names from the operator's template and untrusted metadata.

Template fields: ``{id}`` (the upload id) and ``{filename}`` (the client's
``filename`` or ``name`` metadata, sanitized; the id when absent or empty
after sanitizing). Values never contribute a path separator, so a name
cannot leave the folder the template puts it in.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

# Characters that are unsafe in a name on Linux, Windows/SMB or in a shell
# one-liner an operator may write: separators, Windows-reserved, controls.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com[1-9]|lpt[1-9])(\..*)?", re.IGNORECASE)
# Most filesystems cap a name at 255 bytes; leave room for " (123)".
_MAX_NAME_BYTES = 240


def sanitize_filename(raw: str) -> str:
    """A safe single-segment file name, or "" if nothing usable is left."""
    # Uppy sends names with folder segments (relativePath): keep the last one.
    name = re.split(r"[/\\]", raw)[-1]
    name = unicodedata.normalize("NFC", name)
    name = _UNSAFE.sub("_", name)
    # No hidden files, no "." or "..", no names Windows trims or refuses.
    name = name.strip(" .")
    if _WINDOWS_RESERVED.fullmatch(name):
        name = "_" + name
    return _truncate_utf8(name, _MAX_NAME_BYTES)


def _truncate_utf8(name: str, limit: int) -> str:
    encoded = name.encode("utf-8")
    if len(encoded) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode("utf-8")) > 16:
        stem, ext = name, ""
    room = limit - len(ext.encode("utf-8")) - len(dot)
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(" .")
    return stem + dot + ext if ext else stem


def client_filename(metadata: Mapping[str, bytes]) -> str:
    raw = metadata.get("filename") or metadata.get("name") or b""
    return sanitize_filename(raw.decode("utf-8", "replace"))


def final_name(template: str, upload_id: str, metadata: Mapping[str, bytes]) -> str:
    """Render the template; plain replacement, no format-string evaluation."""
    filename = client_filename(metadata) if "{filename}" in template else ""
    return template.replace("{id}", upload_id).replace("{filename}", filename or upload_id)
