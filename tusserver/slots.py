"""Redis Cluster slots, and a hash tag for each, so that a per-slot key can
sit beside any upload's keys.

A Redis Cluster keeps each key on the slot ``CRC16(tag) mod 16384``, where
the tag is the part between the first ``{`` and the next ``}`` (the whole
key without one). An upload's keys share the tag ``{<id>}``; a Lua script
may touch them together, and nothing else. So that creation, completion and
termination can keep the expiry and retention indexes in the same script,
those indexes exist once per slot, under a tag chosen to hash to that slot
(``slot_tag``). The same holds on one server, where slots mean nothing but
cost nothing either: the layout is the same for every topology.
"""

from __future__ import annotations

import binascii
import functools

SLOTS = 16384


def key_slot(key: str) -> int:
    """The Redis Cluster slot of ``key`` (the same rule as Redis's own)."""
    data = key.encode()
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # binascii.crc_hqx is CRC16-CCITT (XMODEM), the one Redis uses.
    return binascii.crc_hqx(data, 0) % SLOTS


def upload_slot(upload_id: str) -> int:
    """The slot of the keys ``tus:{<upload_id>}:...``."""
    return key_slot("{" + upload_id + "}")


@functools.cache
def _tags() -> tuple[str, ...]:
    # Short tags tried in order until every slot has one: about 170,000
    # CRCs, some 150 ms, once per process (UploadStore builds it at start-up).
    found: dict[int, str] = {}
    number = 0
    while len(found) < SLOTS:
        tag = format(number, "x")
        found.setdefault(binascii.crc_hqx(tag.encode(), 0) % SLOTS, tag)
        number += 1
    return tuple(found[slot] for slot in range(SLOTS))


def slot_tag(slot: int) -> str:
    """A hash tag whose keys land on ``slot``."""
    return _tags()[slot]
