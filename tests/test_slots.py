"""Redis Cluster slots as tusserver computes them, against a real Cluster's
own answer (``CLUSTER KEYSLOT``): an upload's keys and the per-slot index it
is filed in must land on one slot, or every script fails with CROSSSLOT."""

from __future__ import annotations

import os

from tests.redis_topologies import RedisClusterSet
from tusserver import slots

# Keys with and without a hash tag, an empty one ("{}" counts as none), an
# unclosed one, a closing brace alone, two tags (the first counts) and
# non-ASCII text.
KEYS = [
    "upload",
    "tus:{0123abcd}:info",
    "{}tus",
    "a{}{b}",
    "{unclosed",
    "a}b{c",
    "x}y",
    "x{b}{c}",
    "{{a}}",
    "tus:{é}:lock",
    "",
]


def test_key_slot_agrees_with_the_cluster_for_every_kind_of_key(
    redis_cluster: RedisClusterSet,
) -> None:
    node = redis_cluster.nodes[0].client()
    try:
        upload_ids = [os.urandom(16).hex() for _ in range(200)]
        keys = [*KEYS, *(f"tus:{{{upload_id}}}:info" for upload_id in upload_ids)]
        pipe = node.pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("CLUSTER KEYSLOT", key)
        assert [slots.key_slot(key) for key in keys] == pipe.execute()
        assert [slots.upload_slot(upload_id) for upload_id in upload_ids] == [
            slots.key_slot(f"tus:{{{upload_id}}}:info") for upload_id in upload_ids
        ]
    finally:
        node.close()


def test_every_slot_has_a_tag_the_cluster_files_on_that_slot(
    redis_cluster: RedisClusterSet,
) -> None:
    node = redis_cluster.nodes[0].client()
    try:
        pipe = node.pipeline(transaction=False)
        for slot in range(slots.SLOTS):
            pipe.execute_command("CLUSTER KEYSLOT", f"tus:{{{slots.slot_tag(slot)}}}:expiry")
        assert pipe.execute() == list(range(slots.SLOTS))
    finally:
        node.close()


def test_the_tag_of_a_slot_is_the_first_hex_number_filed_there() -> None:
    # The tags name the index keys in Redis: another rule for choosing them
    # would leave the indexes an older version wrote unread.
    first: dict[int, str] = {}
    number = 0
    while len(first) < slots.SLOTS:
        tag = format(number, "x")
        first.setdefault(slots.key_slot("{" + tag + "}"), tag)
        number += 1
    assert [slots.slot_tag(slot) for slot in range(slots.SLOTS)] == [
        first[slot] for slot in range(slots.SLOTS)
    ]
