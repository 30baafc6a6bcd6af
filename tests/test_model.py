"""Model-based spec: random sequences of tus requests against two instances of
one deployment, every answer and every stored byte checked against a model.

Two ``create_app`` apps run on real uvicorn over loopback, on one real Redis
and one shared storage folder, as two instances behind a load balancer. A
hypothesis ``RuleBasedStateMachine`` sends them, each to an instance drawn
at random: creations (with and without ``Upload-Length``, deferred, with
metadata, with data, concatenation parts), PATCHes (the whole rest, a part,
one past the length, at a stale offset, declaring a deferred length), PATCHes
cut mid-body (a raw socket that sends the headers and part of the body, then
closes), HEADs, GETs, DELETEs, final uploads assembled from parts, and sweeps
(one at the present, which must remove nothing live, and one far in the
future, by which every unpublished upload has expired).

The model (``ModelUpload``) keeps each upload's length, the bytes committed
(its offset is their count) and its state: incomplete, complete, terminated
or expired. It predicts every answer: status, error ``code``,
``Upload-Offset``, ``Upload-Length``, ``Upload-Expires`` present or not. A
cut PATCH may keep any prefix of the bytes it sent (checkpoints commit while
the body streams, and the bytes stored when the connection drops count): the
model accepts any offset from the old one to the old one plus the bytes sent,
and learns the actual one from a HEAD. After each step the touched upload's
stored bytes are read back (GET; unfinished uploads are served up to their
offset), and the storage folder is compared with the model: a finished file
appears once, under its id, with exactly its bytes; nothing is left of a
terminated or expired upload or of a refused creation.

Bounded for CI (a fixed seed, no example database written to disk);
``TUSSERVER_MODEL_EXAMPLES`` and ``TUSSERVER_MODEL_STEPS`` raise the bounds
for a longer run on a developer's machine, ``TUSSERVER_MODEL_RANDOM=1`` draws
new sequences on each run (docs/architecture.md).
"""

from __future__ import annotations

import base64
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from storage_backends.local import LocalStorage
from storage_backends.names import NOTE_SUFFIX
from tests.helpers import assert_tus_error, upload_id_of
from tests.raw_http import RawRequest, raw_patch, wait_until
from tests.server_fixtures import OCTETS, TUS, RunningServer
from tusserver.state import UploadStore
from tusserver.sweeper import sweep_once

KIB = 1024
# Far enough ahead that every unpublished upload has expired by then.
LATER = 10 * 24 * 3600.0
# Creations stop while this many uploads are live, so that the steps go to
# working on them.
MAX_LIVE = 4
# The status of each error code the model expects.
REFUSALS = {
    "upload_not_found": 404,
    "upload_gone": 410,
    "final_upload_immutable": 403,
    "mismatched_offset": 409,
    "upload_length_immutable": 400,
    "upload_length_too_small": 400,
    "body_exceeds_upload_length": 413,
}
# A body the app does not drain when it answers before reading it.
UNDRAINED = 64 * KIB + 1

INCOMPLETE = "incomplete"
COMPLETE = "complete"
TERMINATED = "terminated"
EXPIRED = "expired"

SETTINGS = settings(
    max_examples=int(os.environ.get("TUSSERVER_MODEL_EXAMPLES", "150")),
    stateful_step_count=int(os.environ.get("TUSSERVER_MODEL_STEPS", "50")),
    deadline=None,
    # The same sequences on every run, so that a CI failure reproduces;
    # TUSSERVER_MODEL_RANDOM=1 draws new ones on each run (a failure prints
    # the blob that replays it).
    derandomize=not os.environ.get("TUSSERVER_MODEL_RANDOM"),
    print_blob=True,
    database=None,  # nothing written to disk
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@dataclass
class ModelUpload:
    """What the server must say about one upload."""

    url: str
    length: int | None  # None while deferred
    data: bytearray  # the committed bytes: the offset is their count
    metadata: str  # Upload-Metadata as sent ("" for none)
    concat: str = ""  # "", "partial" or "final"
    parts: str = ""  # a final's part URLs as sent
    state: str = INCOMPLETE

    @property
    def id(self) -> str:
        return upload_id_of(self.url)

    @property
    def offset(self) -> int:
        return len(self.data)

    @property
    def gone(self) -> bool:
        return self.state in (TERMINATED, EXPIRED)

    @property
    def published(self) -> bool:
        """Finished and under its final name (a complete part stays staged)."""
        return self.state == COMPLETE and self.concat != "partial"

    @property
    def expiring(self) -> bool:
        """Whether it still expires (Upload-Expires): until it is published."""
        return not self.gone and not self.published

    def settle(self) -> None:
        """All bytes in: complete (finalized by the request that brought the last one)."""
        if self.length is not None and self.offset == self.length:
            self.state = COMPLETE


@dataclass
class Deployment:
    """Two instances of one deployment, the Redis they share and its client."""

    instances: list[RunningServer]
    storage: Path
    redis_url: str
    state: redis.Redis
    # Every upload id any example created: whatever else the storage holds
    # was left behind by a request that should have left nothing.
    known_ids: set[str] = field(default_factory=set)
    # What the run went through (rules, states, answers), so that the spec
    # fails instead of passing vacuously if the strategies stop reaching one.
    seen: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def deployment(
    tus_server: Callable[..., RunningServer],
    tmp_path: Path,
    redis_url: str,
    state: redis.Redis,
) -> Iterator[Deployment]:
    storage = tmp_path / "shared"
    fields = {
        # The bytes received so far can be read back: GET serves [0, offset).
        "download_unfinished": True,
        # Small blocks and frequent checkpoints, so that a cut body keeps
        # prefixes of every size.
        "block_size": 64 * KIB,
        "checkpoint_bytes": 64 * KIB,
        "checkpoint_interval": 0.05,
        # Sweeps are the model's steps, never a background surprise.
        "sweep_interval": 3600.0,
    }
    instances = [tus_server(storage=storage, **fields) for _ in range(2)]
    yield Deployment(instances, storage, redis_url, state)


# --- strategies ----------------------------------------------------------------

instances = st.integers(0, 1)
# Mostly small, so that uploads finish often; sometimes over several blocks.
sizes = st.one_of(st.integers(0, 40), st.integers(0, 300 * KIB))
seeds = st.integers(0, 2**32 - 1)
metadata_values = st.dictionaries(
    st.sampled_from(["filename", "filetype", "name", "a", "x-y_z"]),
    st.binary(max_size=12),
    max_size=3,
)
# How much of its length a creation sends along ("over": more than it declared).
creation_data = st.sampled_from(["none", "none", "some", "all", "over"])


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def metadata_header(values: dict[str, bytes]) -> str:
    pairs = []
    for key, value in values.items():
        pairs.append(f"{key} {base64.b64encode(value).decode()}" if value else key)
    return ",".join(pairs)


# --- the state machine ---------------------------------------------------------


class TusModel(RuleBasedStateMachine):
    deployment: Deployment  # set by the test before the machine is built

    uploads = Bundle("uploads")

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, ModelUpload] = {}

    def live(self) -> int:
        return sum(not upload.gone for upload in self.model.values())

    def saw(self, event: str) -> None:
        self.deployment.seen[event] += 1

    # --- requests --------------------------------------------------------------

    def server(self, instance: int) -> RunningServer:
        return self.deployment.instances[instance]

    def url_for(self, upload: str, instance: int) -> str:
        """An upload's URL on the instance (also for an id no upload has)."""
        return self.server(instance).endpoint + upload

    def post(self, instance: int, headers: dict[str, str], body: bytes | None) -> httpx.Response:
        server = self.server(instance)
        sent = {**TUS, **headers}
        if body is not None:
            sent["Content-Type"] = OCTETS
        response = server.client.post(server.endpoint, headers=sent, content=body)
        assert response.status_code < 500, response.text
        return response

    def created(self, response: httpx.Response, upload: ModelUpload, instance: int) -> ModelUpload:
        """Check a 201 against the model and start tracking the upload."""
        assert response.status_code == 201, response.text
        location = response.headers["Location"]
        upload.url = location
        assert upload.id not in self.model, "an id was given out twice"
        self.deployment.known_ids.add(upload.id)
        assert response.headers["Upload-Offset"] == str(upload.offset)
        assert ("Upload-Expires" in response.headers) == upload.expiring
        self.model[upload.id] = upload
        self.saw(f"created:{upload.concat or 'plain'}:{upload.state}")
        self.check_stored(upload, 1 - instance)
        return upload

    # --- rules: creation -------------------------------------------------------

    @precondition(lambda self: self.live() < MAX_LIVE)
    @rule(
        target=uploads,
        instance=instances,
        length=st.one_of(st.none(), sizes),
        values=metadata_values,
        with_data=creation_data,
        size=sizes,
        seed=seeds,
        partial=st.booleans(),
    )
    def create(
        self,
        instance: int,
        length: int | None,
        values: dict[str, bytes],
        with_data: str,
        size: int,
        seed: int,
        partial: bool,
    ) -> str:
        self.saw("rule:create")
        headers: dict[str, str] = {}
        if length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(length)
            size = {"some": size % (length + 1), "all": length, "over": length + 1 + size % 9}.get(
                with_data, size
            )
        metadata = metadata_header(values)
        if metadata:
            headers["Upload-Metadata"] = metadata
        if partial:
            headers["Upload-Concat"] = "partial"
        body = None if with_data == "none" else payload(size, seed)
        response = self.post(instance, headers, body)
        if body is not None and length is not None and len(body) > length:
            # Nothing is created: the client never learned a URL.
            assert_tus_error(response, 413, "body_exceeds_upload_length")
            assert "Location" not in response.headers
            self.saw("answer:413")
            return multiple()  # nothing to add to the uploads
        upload = ModelUpload(
            "", length, bytearray(body or b""), metadata, concat="partial" if partial else ""
        )
        upload.settle()
        return self.created(response, upload, instance).id

    @rule(
        target=uploads,
        instance=instances,
        parts=st.lists(uploads, min_size=1, max_size=3),
        values=metadata_values,
    )
    def concatenate(self, instance: int, parts: list[str], values: dict[str, bytes]) -> str:
        self.saw("rule:concatenate")
        return self.assemble(instance, parts, values)

    def assemble(self, instance: int, parts: list[str], values: dict[str, bytes]) -> str:
        """POST a final upload of ``parts``: created complete, or refused for
        the first part that is not a complete partial upload."""
        # As a client lists them: the Locations it was given (relative), or
        # any URL for an id the server never gave out.
        urls = [
            self.model[part].url if part in self.model else self.url_for(part, 0) for part in parts
        ]
        headers = {"Upload-Concat": "final;" + " ".join(urls)}
        metadata = metadata_header(values)
        if metadata:
            headers["Upload-Metadata"] = metadata
        response = self.post(instance, headers, None)
        for number, part in enumerate(parts, start=1):
            known = self.model.get(part)
            if known is None or known.gone:
                code = "concat_part_not_found"
            elif known.concat != "partial":
                code = "concat_part_not_partial"
            elif known.state != COMPLETE:
                code = "concat_part_incomplete"
            else:
                continue
            assert_tus_error(response, 400, code)
            assert f"Part {number} " in response.json()["error"]["message"]
            self.saw(f"answer:{code}")
            return self.unknown_id()
        data = bytearray(b"".join(self.model[part].data for part in parts))
        final = ModelUpload(
            "", len(data), data, metadata, concat="final", parts=" ".join(urls), state=COMPLETE
        )
        return self.created(response, final, instance).id

    @precondition(lambda self: any(self.complete_parts()))
    @rule(target=uploads, instance=instances, data=st.data(), values=metadata_values)
    def concatenate_complete_parts(
        self, instance: int, data: st.DataObject, values: dict[str, bytes]
    ) -> str:
        """A final upload of parts that are all complete (the rule above
        rarely draws such a list from all the uploads)."""
        parts = data.draw(st.lists(st.sampled_from(self.complete_parts()), min_size=1, max_size=3))
        self.saw("rule:concatenate-complete-parts")
        return self.assemble(instance, parts, values)

    def complete_parts(self) -> list[str]:
        return [
            key
            for key, upload in self.model.items()
            if upload.concat == "partial" and upload.state == COMPLETE
        ]

    def unknown_id(self) -> str:
        """An id no upload has: requests about it must answer 404."""
        return f"{random.Random(len(self.model)).getrandbits(128):032x}"

    # --- rules: PATCH ----------------------------------------------------------

    @rule(
        upload=uploads,
        data=st.data(),
        instance=instances,
        kind=st.sampled_from(["whole", "part", "past-length", "stale", "empty"]),
        declare=st.sampled_from(["no", "no", "no", "at-end", "same", "short", "below"]),
        chunked=st.booleans(),
        size=sizes,
        seed=seeds,
        shift=st.integers(1, 50),
    )
    def patch(
        self,
        upload: str,
        data: st.DataObject,
        instance: int,
        kind: str,
        declare: str,
        chunked: bool,
        size: int,
        seed: int,
        shift: int,
    ) -> None:
        """A PATCH of the whole rest, a part, past the length, at a stale
        offset or empty; maybe declaring the length (to finish a deferred
        upload, or a wrong one)."""
        self.saw("rule:patch")
        upload = self.aim(upload, data)
        known = self.model.get(upload)
        offset = known.offset if known is not None else 0
        if kind == "stale":
            offset = offset + shift if offset < shift or shift % 2 else offset - shift
        length = known.length if known is not None else None
        if length is not None and kind != "stale":
            remaining = max(length - offset, 0)
            size = {
                "whole": remaining,
                "part": min(size, max(remaining - 1, 0)),
                "past-length": remaining + 1 + size % 100,
            }.get(kind, size)
        if kind == "empty":
            size = 0
        body = payload(size, seed)
        headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset)}
        declared = {
            "no": None,
            "at-end": offset + size,
            "same": offset + size if length is None else length,
            "short": offset + size // 2,
            "below": max(offset - 1, 0),
        }[declare]
        if declared is not None:
            headers["Upload-Length"] = str(declared)
        url = self.url_for(upload, instance)
        # Chunked: no Content-Length, so a body too long is found while it streams.
        content = iter([body]) if chunked else body
        response = self.server(instance).client.patch(url, headers=headers, content=content)
        self.expect_patch(response, known, offset, body, declared, chunked=chunked)
        self.check(upload, instance)

    def aim(self, upload: str, data: st.DataObject) -> str:
        """Mostly an upload still taking bytes, else ``upload`` from the bundle
        (which holds as many that are finished, gone or never existed)."""
        taking = [key for key, known in self.model.items() if known.expiring]
        if taking and data.draw(st.integers(0, 3), label="aim at an upload taking bytes"):
            upload: str = data.draw(st.sampled_from(taking), label="upload taking bytes")
        return upload

    def expect_patch(
        self,
        response: httpx.Response,
        known: ModelUpload | None,
        offset: int,
        body: bytes,
        declared: int | None,
        *,
        chunked: bool = False,
    ) -> None:
        """A PATCH's answer, in the order the handler checks, and the model updated."""
        assert response.status_code < 500, response.text
        code = self.expected_patch_refusal(known, offset, body, declared)
        if code is not None:
            status = REFUSALS[code]
            self.saw(f"patch:{status}:{code}")
            assert_tus_error(response, status, code)
            if chunked and declared is not None and known is not None and known.length is None:
                # A chunked body past the length it declared: the length
                # was withdrawn, which ``check``'s HEAD sees.
                self.saw(f"patch:{status}:chunked-declared:{code}")
            if status == 409:
                assert known is not None
                assert response.headers["Upload-Offset"] == str(known.offset)
            return
        assert known is not None
        assert response.status_code == 204, response.text
        if known.state == COMPLETE:
            self.saw("patch:204:finished-already")
        else:
            known.data += body
            known.settle()
            self.saw(f"patch:204:{known.state}")
        assert response.headers["Upload-Offset"] == str(known.offset)
        assert ("Upload-Expires" in response.headers) == known.expiring

    def expected_patch_refusal(
        self,
        known: ModelUpload | None,
        offset: int,
        body: bytes,
        declared: int | None,
    ) -> str | None:
        """The error code a PATCH must get, or None for a 204. A declared
        length is recorded once it passed its checks and the body fits in
        it, whether the body's size is announced (Content-Length) or shows
        as it streams (chunked): a body that runs past it leaves the upload
        deferred."""
        if known is None:
            return "upload_not_found"
        if known.gone:
            return "upload_gone"
        if known.concat == "final":
            return "final_upload_immutable"
        if known.state == COMPLETE and offset == known.offset:
            return None  # nothing left to send
        if offset != known.offset:
            return "mismatched_offset"
        if declared is not None:
            if known.length is not None and declared != known.length:
                return "upload_length_immutable"
            if declared < known.offset:
                return "upload_length_too_small"
            if len(body) > declared - known.offset:
                return "body_exceeds_upload_length"
            known.length = declared
        if known.length is not None and len(body) > known.length - known.offset:
            return "body_exceeds_upload_length"
        return None

    @rule(
        upload=uploads,
        data=st.data(),
        instance=instances,
        size=st.integers(1, 300 * KIB),
        sent=st.floats(0, 1, exclude_max=True),
        seed=seeds,
    )
    def patch_cut_mid_body(
        self, upload: str, data: st.DataObject, instance: int, size: int, sent: float, seed: int
    ) -> None:
        """A PATCH whose connection drops after part of its body."""
        self.saw("rule:patch-cut")
        upload = self.aim(upload, data)
        known = self.model.get(upload)
        offset = known.offset if known is not None else 0
        if known is not None and known.length is not None and known.length > known.offset:
            size = min(size, known.length - known.offset)
        if known is None or known.gone or known.concat == "final" or known.state == COMPLETE:
            # Answered before the body is read: a body over the size the app
            # drains (64 KiB, app._BodyWatch) makes the answer come at once,
            # with the connection closed, instead of after the drain's wait.
            size = max(size, UNDRAINED)
        body = payload(size, seed)
        count = int(len(body) * sent)
        lock = f"tus:{{{upload}}}:lock"
        state = self.deployment.state
        with raw_patch(self.url_for(upload, instance), offset, content_length=size) as request:
            request.send(body[:count])
            # The request is in the server's hands once it holds the lock (or
            # has answered): only then does closing race nothing.
            wait_until(
                lambda: state.exists(lock) == 1 or request.answered(),
                "the cut PATCH reached the server",
            )
            if state.exists(lock) != 1 and request.answered():
                self.expect_raw_answer(request, known, offset, body)
                self.check(upload, instance)
                return
        # Closed: the server commits what it stored and lets go of the lock.
        wait_until(lambda: state.exists(lock) == 0, "the cut PATCH let go of the upload")
        if known is None or known.gone or known.state == COMPLETE or offset != known.offset:
            self.check(upload, instance)  # nothing may have changed
            return
        head = self.head(known, 1 - instance)
        assert head.status_code == 200
        now = int(head.headers["Upload-Offset"])
        assert known.offset <= now <= known.offset + count, (known.offset, now, count)
        kept = now - known.offset
        self.saw(
            "cut:kept-none" if kept == 0 else "cut:kept-all" if kept == count else "cut:kept-part"
        )
        known.data += body[:kept]
        known.settle()
        self.check(upload, instance)

    def expect_raw_answer(
        self, request: RawRequest, known: ModelUpload | None, offset: int, body: bytes
    ) -> None:
        """A cut PATCH the server answered before reading its body."""
        answer = request.response()
        response = httpx.Response(answer.status, headers=answer.headers, content=answer.body)
        self.expect_patch(response, known, offset, body, None)

    # --- rules: HEAD, GET, DELETE ----------------------------------------------

    @rule(upload=uploads, instance=instances)
    def head_and_get(self, upload: str, instance: int) -> None:
        self.saw("rule:head-and-get")
        self.check(upload, instance)

    @rule(upload=uploads, data=st.data(), instance=instances)
    def delete(self, upload: str, data: st.DataObject, instance: int) -> None:
        self.saw("rule:delete")
        live = [key for key, known in self.model.items() if not known.gone]
        if live and data.draw(st.booleans(), label="aim at a live upload"):
            upload = data.draw(st.sampled_from(live), label="live upload")
        known = self.model.get(upload)
        response = self.server(instance).client.delete(self.url_for(upload, instance), headers=TUS)
        if known is None:
            assert_tus_error(response, 404, "upload_not_found")
        elif known.gone:
            assert_tus_error(response, 410, "upload_gone")
        else:
            assert response.status_code == 204, response.text
            self.saw(f"terminated:{known.concat or 'plain'}:{known.state}")
            known.state = TERMINATED
        self.check(upload, instance)

    # --- rules: expiry ---------------------------------------------------------

    @precondition(lambda self: self.live() > 0)
    @rule(later=st.sampled_from([False, False, True]))
    def sweep(self, later: bool) -> None:
        """A sweep now removes nothing live; one far ahead removes every
        unpublished upload (incomplete ones, and parts, complete or not)."""
        self.saw(f"rule:sweep:{'later' if later else 'now'}")
        now = time.time() + (LATER if later else 0.0)

        async def run() -> list[str]:
            client = aioredis.Redis.from_url(self.deployment.redis_url, decode_responses=True)
            try:
                store = UploadStore(client)
                storage = LocalStorage(self.deployment.storage)
                config = self.deployment.instances[0].config
                report = await sweep_once(store, storage, config, now=now)
                assert report.ran
                assert not set(report.skipped) & set(self.model)
                return report.expired
            finally:
                await client.aclose()

        expired = set(anyio.run(run)) & set(self.model)
        due = {key for key, upload in self.model.items() if upload.expiring} if later else set()
        assert expired == due
        for key in due:
            self.saw(f"expired:{self.model[key].concat or 'plain'}:{self.model[key].state}")
            self.model[key].state = EXPIRED

    # --- checks ----------------------------------------------------------------

    def head(self, upload: ModelUpload, instance: int) -> httpx.Response:
        response = self.server(instance).client.head(self.url_for(upload.id, instance), headers=TUS)
        assert response.status_code < 500
        return response

    def check(self, upload: str, instance: int) -> None:
        """HEAD and GET the upload on the other instance than the request's."""
        known = self.model.get(upload)
        other = 1 - instance
        url = self.url_for(upload, other)
        head = self.server(other).client.head(url, headers=TUS)
        if known is None:
            assert head.status_code == 404
            return
        if known.gone:
            assert head.status_code == 410
            assert_tus_error(self.server(other).client.get(url), 410, "upload_gone")
            return
        assert head.status_code == 200, head.headers
        assert head.headers["Upload-Offset"] == str(known.offset)
        if known.length is None:
            assert head.headers["Upload-Defer-Length"] == "1"
            assert "Upload-Length" not in head.headers
        else:
            assert head.headers["Upload-Length"] == str(known.length)
        assert head.headers.get("Upload-Metadata", "") == known.metadata
        assert ("Upload-Expires" in head.headers) == known.expiring
        concat = {"": None, "partial": "partial", "final": f"final;{known.parts}"}[known.concat]
        assert head.headers.get("Upload-Concat") == concat
        self.check_stored(known, other)

    def check_stored(self, upload: ModelUpload, instance: int) -> None:
        """The bytes the server serves: exactly the committed ones."""
        response = self.server(instance).client.get(self.url_for(upload.id, instance))
        assert response.status_code == 200, response.text
        assert response.content == bytes(upload.data)

    @invariant()
    def storage_matches_the_model(self) -> None:
        """A finished file appears once, under its id, with exactly its bytes;
        nothing stays of a terminated or expired upload, nor of a refused
        creation; no stray file at all."""
        root = self.deployment.storage
        if not root.exists():
            return
        staged = root / ".partial"
        finals = {path.name for path in root.iterdir() if path.is_file()}
        partials = {path.name for path in staged.iterdir()} if staged.exists() else set()
        for key, upload in self.model.items():
            if upload.published:
                assert (root / key).read_bytes() == bytes(upload.data)
            else:
                assert key not in finals
            assert not any(name.startswith(f"{key} (") for name in finals), "published twice"
            if upload.gone or upload.published:
                assert key not in partials, f"{upload.state} upload keeps its partial"
            else:
                assert key in partials, f"{upload.state} upload lost its partial"
        known = self.deployment.known_ids
        assert finals <= known, finals - known
        strays = {name.removesuffix(NOTE_SUFFIX) for name in partials} - known
        assert not strays, strays


# 7,500 steps of real requests: minutes on a busy machine, past the default.
@pytest.mark.timeout(1200)
def test_two_instances_answer_random_request_sequences_as_the_model_says(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    class OnThisDeployment(TusModel):
        pass

    OnThisDeployment.deployment = deployment
    with caplog.at_level(logging.ERROR):
        run_state_machine_as_test(OnThisDeployment, settings=SETTINGS)

    # Nothing went wrong inside either instance, even where the answers were right.
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]
    # The run went where it is meant to go: every rule, every ending of an
    # upload, a cut body whose bytes count, the refusals. A change that keeps
    # the strategies from reaching one fails here instead of passing vacuously.
    expected = {
        "rule:create",
        "rule:concatenate",
        "rule:concatenate-complete-parts",
        "rule:patch",
        "rule:patch-cut",
        "rule:head-and-get",
        "rule:delete",
        "rule:sweep:now",
        "rule:sweep:later",
        "created:final:complete",
        "created:plain:complete",
        "created:partial:complete",
        "patch:204:complete",
        "patch:204:incomplete",
        "patch:409:mismatched_offset",
        "patch:410:upload_gone",
        "patch:413:body_exceeds_upload_length",
        "cut:kept-all",
        "terminated:plain:complete",
        "terminated:partial:incomplete",
        "expired:plain:incomplete",
        "expired:partial:complete",
    }
    assert expected <= set(deployment.seen), (expected - set(deployment.seen), deployment.seen)
