"""HTTP hooks in tusd v2's format: what a receiver written for tusd gets, and
how its answers reach real clients (tuspy, tus-js-client)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from tests.helpers import assert_tus_error, b64, upload_id_of
from tests.hook_receiver import HookReceiver
from tests.js_fixtures import JS_DIR, TusJs
from tests.server_fixtures import OCTETS, TUS, RunningServer, free_port
from tests.test_cli import cli_env, tusserver

StartServer = Callable[..., RunningServer]

UPLOAD_FIELDS = {
    "ID",
    "Size",
    "SizeIsDeferred",
    "Offset",
    "MetaData",
    "IsPartial",
    "IsFinal",
    "PartialUploads",
    "Storage",
    # tusserver's addition (the upload's owner), which tusd receivers ignore.
    "Owner",
}
REQUEST_FIELDS = {"Method", "URI", "RemoteAddr", "Header"}


def hooked(tus_server: StartServer, receiver: HookReceiver, **fields: Any) -> RunningServer:
    return tus_server(hooks_url=receiver.url, **fields)


def upload_keys(state: redis.Redis) -> list[str]:
    """Keys of uploads (the hooks' own stream aside)."""
    return [key for key in state.keys("tus:*") if not key.startswith("tus:hooks:")]


def test_every_event_arrives_with_tusds_fields(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(tus_server, hook_receiver)
    url = server.create(5, Upload_Metadata=f"filename {b64(b'a.txt')},empty")
    upload_id = upload_id_of(url)
    assert server.patch(url, 0, b"ab").status_code == 204
    assert server.patch(url, 2, b"cde").status_code == 204
    assert server.head(url).status_code == 200
    assert server.client.get(url).content == b"abcde"
    assert server.client.delete(url, headers=TUS).status_code == 204
    hook_receiver.wait_for("post-finish")
    hook_receiver.wait_for("post-terminate")

    received = hook_receiver.received()
    assert {r.type for r in received} == {
        "pre-create",
        "post-create",
        "post-receive",
        "pre-finish",
        "post-finish",
        "pre-terminate",
        "post-terminate",
        "pre-access",
    }
    for hook in received:
        assert set(hook.body) == {"Type", "Event"}
        assert set(hook.body["Event"]) == {"Upload", "HTTPRequest"}
        assert set(hook.upload) == UPLOAD_FIELDS
        assert set(hook.request) == REQUEST_FIELDS
        assert hook.upload["MetaData"] == {"filename": "a.txt", "empty": ""}
        assert hook.upload["Size"] == 5 and hook.upload["SizeIsDeferred"] is False
        assert hook.upload["IsPartial"] is False and hook.upload["IsFinal"] is False
        assert hook.upload["PartialUploads"] is None
        assert hook.request["RemoteAddr"].startswith("127.0.0.1:")
        assert hook.request["Header"]["Host"] == [server.url.removeprefix("http://")]
        assert hook.headers["content-type"] == "application/json"
    [pre_create] = hook_receiver.received("pre-create")
    assert pre_create.upload["ID"] == "" and pre_create.upload["Offset"] == 0
    assert pre_create.request["Method"] == "POST" and pre_create.request["URI"] == "/files/"
    assert all(r.upload["ID"] == upload_id for r in received if r.type != "pre-create")
    [post_finish] = hook_receiver.received("post-finish")
    assert post_finish.upload["Offset"] == 5
    assert post_finish.upload["Storage"]["Location"] == upload_id
    assert post_finish.request["Method"] == "PATCH"
    assert post_finish.request["URI"] == f"/files/{upload_id}"
    assert [r.request["Method"] for r in hook_receiver.received("pre-access")] == [
        "PATCH",
        "PATCH",
        "HEAD",
        "GET",
        "DELETE",
    ]
    offsets = [r.upload["Offset"] for r in hook_receiver.received("post-receive")]
    assert offsets and offsets[-1] in (2, 5)


def test_credentials_are_redacted_unless_forwarding_is_asked_for(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    secret = {"Authorization": "Bearer s3cret", "Cookie": "session=s3cret"}
    redacting = hooked(tus_server, hook_receiver, hooks_events=("pre-create",))
    forwarding = hooked(
        tus_server, hook_receiver, hooks_events=("pre-create",), hooks_forward_auth=True
    )

    redacting.create(1, **secret)
    forwarding.create(1, **secret)

    first, second = hook_receiver.received("pre-create")
    assert first.request["Header"]["Authorization"] == ["[redacted]"]
    assert first.request["Header"]["Cookie"] == ["[redacted]"]
    assert "s3cret" not in json.dumps(first.body)
    assert second.request["Header"]["Authorization"] == ["Bearer s3cret"]


def test_hooks_headers_are_sent_with_every_hook_request(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(tus_server, hook_receiver, hooks_headers=("X-Hook-Secret: abc",))
    server.create(1)

    assert all(r.headers["x-hook-secret"] == "abc" for r in hook_receiver.received())


def test_only_the_configured_events_are_sent(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(tus_server, hook_receiver, hooks_events=("post-create", "post-terminate"))
    url = server.create(1)
    server.client.delete(url, headers=TUS)
    hook_receiver.wait_for("post-terminate")

    assert [r.type for r in hook_receiver.received()] == ["post-create", "post-terminate"]


def test_hook_failures_never_log_the_hooks_headers_or_the_clients_credentials(
    tus_server: StartServer, hook_receiver: HookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    server = hooked(
        tus_server, hook_receiver, hooks_retries=0, hooks_headers=("X-Hook-Secret: hdr-s3cret",)
    )
    hook_receiver.answer("pre-create", status=500)
    hook_receiver.answer("post-create", status=500)
    tusserver_logger = logging.getLogger("tusserver")
    tusserver_logger.addHandler(caplog.handler)  # it may not propagate to the root
    try:
        with caplog.at_level(logging.INFO, logger="tusserver"):
            refused = server.client.post(
                server.endpoint,
                headers={**TUS, "Upload-Length": "1", "Authorization": "Bearer tok-s3cret"},
            )
            hook_receiver.answer("pre-create")
            server.create(1, Authorization="Bearer tok-s3cret")
            hook_receiver.wait_for("post-create")
            deadline = time.monotonic() + 10
            while "post-create hook failed" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.02)
    finally:
        tusserver_logger.removeHandler(caplog.handler)

    assert_tus_error(refused, 503, "hook_unavailable")
    assert "pre-create hook failed (HookFailed: answered 500)" in caplog.text
    for leak in ("hdr-s3cret", "tok-s3cret", "X-Hook-Secret", "Traceback"):
        assert leak not in caplog.text


# --- pre-create -------------------------------------------------------------


def test_a_pre_create_rejection_reaches_tuspy_with_the_hooks_status_and_body(
    tus_server: StartServer, hook_receiver: HookReceiver, state: redis.Redis, tmp_path: Path
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer(
        "pre-create",
        {
            "RejectUpload": True,
            "HTTPResponse": {
                "StatusCode": 403,
                "Body": '{"message":"quota exceeded"}',
                "Header": {"Content-Type": "application/json", "X-Quota": "0"},
            },
        },
    )
    source = tmp_path / "a.bin"
    source.write_bytes(b"data")

    with pytest.raises(TusCommunicationError) as refused:
        TusClient(server.endpoint).uploader(file_path=str(source)).upload()
    raw = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "4"})

    assert refused.value.status_code == 403
    assert b"quota exceeded" in (refused.value.response_content or b"")
    assert raw.status_code == 403
    assert raw.json() == {"message": "quota exceeded"}
    assert raw.headers["X-Quota"] == "0"
    assert raw.headers["Tus-Resumable"] == "1.0.0"
    assert "Location" not in raw.headers
    assert upload_keys(state) == []
    assert list(server.partials.iterdir()) == []


def test_a_rejection_without_a_status_or_body_is_a_400_tus_error(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer("pre-create", {"RejectUpload": True})

    response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "4"})

    assert_tus_error(response, 400, "upload_rejected")


def test_pre_create_changes_the_metadata_and_chooses_the_id_tuspy_uploads_to(
    tus_server: StartServer, hook_receiver: HookReceiver, tmp_path: Path
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer(
        "pre-create",
        {"ChangeFileInfo": {"ID": "invoice-2024-0001", "MetaData": {"filename": "renamed.pdf"}}},
    )
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(100_000))

    uploader = TusClient(server.endpoint).uploader(
        file_path=str(source), metadata={"filename": "a.bin", "owner": "x"}
    )
    uploader.upload()

    assert str(uploader.url).endswith("/files/invoice-2024-0001")
    assert (server.storage / "invoice-2024-0001").read_bytes() == source.read_bytes()
    head = server.head(str(uploader.url))
    assert head.headers["Upload-Metadata"] == f"filename {b64(b'renamed.pdf')}"
    [finished] = hook_receiver.wait_for("post-finish")
    assert finished.upload["ID"] == "invoice-2024-0001"
    assert finished.upload["MetaData"] == {"filename": "renamed.pdf"}


def test_an_id_that_is_taken_is_refused_with_409_and_the_existing_upload_is_untouched(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer("pre-create", {"ChangeFileInfo": {"ID": "one-per-document"}})
    first = server.create(6)
    assert server.patch(first, 0, b"abc").status_code == 204

    second = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "9"})

    assert_tus_error(second, 409, "upload_id_taken")
    head = server.head(first)
    assert head.headers["Upload-Offset"] == "3" and head.headers["Upload-Length"] == "6"
    assert (server.partials / "one-per-document").read_bytes() == b"abc"


@pytest.mark.parametrize("chosen", ["../etc", "UPPER-case-id", "short", "tus{x}yz-1234"])
def test_an_invalid_chosen_id_is_refused_with_502_and_nothing_is_created(
    tus_server: StartServer, hook_receiver: HookReceiver, state: redis.Redis, chosen: str
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer("pre-create", {"ChangeFileInfo": {"ID": chosen}})

    response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "4"})

    assert_tus_error(response, 502, "hook_invalid_answer")
    assert chosen not in response.text
    assert upload_keys(state) == []
    assert list(server.partials.iterdir()) == []


def test_pre_create_runs_for_a_concatenation_and_can_refuse_it(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(tus_server, hook_receiver)
    part = server.create(3, Upload_Concat="partial")
    assert server.patch(part, 0, b"abc").status_code == 204
    hook_receiver.answer("pre-create", {"RejectUpload": True})

    final = server.client.post(
        server.endpoint, headers={**TUS, "Upload-Concat": f"final;/files/{upload_id_of(part)}"}
    )

    assert_tus_error(final, 400, "upload_rejected")
    last = hook_receiver.received("pre-create")[-1]
    assert last.upload["IsFinal"] is True
    assert last.upload["PartialUploads"] == [upload_id_of(part)]
    part_access = [r for r in hook_receiver.received("pre-access") if r.request["Method"] == "POST"]
    assert [r.upload["ID"] for r in part_access] == [upload_id_of(part)]


# --- blocking hooks fail closed -----------------------------------------------


def test_a_receiver_that_is_down_fails_creation_with_a_retryable_503_and_creates_nothing(
    tus_server: StartServer, state: redis.Redis
) -> None:
    server = tus_server(hooks_url=f"http://127.0.0.1:{free_port()}/hooks", hooks_retries=1)

    response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "4"})

    assert_tus_error(response, 503, "hook_unavailable")
    assert response.json()["error"]["retryable"] is True
    assert upload_keys(state) == []
    assert list(server.partials.iterdir()) == []


def test_a_slow_receiver_fails_creation_with_503_within_the_timeout(
    tus_server: StartServer, hook_receiver: HookReceiver, state: redis.Redis
) -> None:
    server = hooked(tus_server, hook_receiver, hooks_timeout=0.3, hooks_retries=0)
    hook_receiver.answer("pre-create", delay=3)

    response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "4"})

    assert_tus_error(response, 503, "hook_unavailable")
    assert response.elapsed.total_seconds() < 2
    assert upload_keys(state) == []


@pytest.mark.parametrize("answer", [{"status": 500}, {"body": {"RejectUpload": "yes"}}])
def test_a_failing_or_garbled_pre_create_answer_is_a_503_and_creates_nothing(
    tus_server: StartServer, hook_receiver: HookReceiver, state: redis.Redis, answer: Any
) -> None:
    server = hooked(tus_server, hook_receiver, hooks_retries=0)
    hook_receiver.answer("pre-create", **answer)

    response = server.client.post(server.endpoint, headers={**TUS, "Upload-Length": "4"})

    assert_tus_error(response, 503, "hook_unavailable")
    assert upload_keys(state) == []


def test_a_receiver_that_is_down_fails_head_with_423_and_patch_with_503(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(tus_server, hook_receiver, hooks_retries=0)
    url = server.create(3)
    hook_receiver.answer("pre-access", status=503)

    # HEAD turns 5xx into 423, the status tus-js-client retries (docs/clients.md).
    assert server.head(url).status_code == 423
    assert_tus_error(server.patch(url, 0, b"abc"), 503, "hook_unavailable")
    hook_receiver.answer("pre-access")
    assert server.head(url).headers["Upload-Offset"] == "0"


# --- pre-access, pre-terminate ------------------------------------------------


def test_pre_access_refuses_a_patch_and_nothing_is_written(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(tus_server, hook_receiver)
    url = server.create(3)
    hook_receiver.answer("pre-access", {"RejectAccess": True})

    refused = server.patch(url, 0, b"abc")

    assert_tus_error(refused, 403, "access_rejected")
    hook_receiver.answer("pre-access")
    assert server.head(url).headers["Upload-Offset"] == "0"


def test_pre_terminate_refuses_a_delete_seen_by_tuspy_and_the_upload_stays(
    tus_server: StartServer, hook_receiver: HookReceiver, tmp_path: Path
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer(
        "pre-terminate",
        {"RejectTermination": True, "HTTPResponse": {"StatusCode": 409, "Body": "keep it"}},
    )
    source = tmp_path / "a.bin"
    source.write_bytes(b"data")
    uploader = TusClient(server.endpoint).uploader(file_path=str(source))
    uploader.upload()

    refused = server.client.delete(str(uploader.url), headers=TUS)

    assert refused.status_code == 409
    assert refused.text == "keep it"
    assert refused.headers["Tus-Resumable"] == "1.0.0"
    assert server.head(str(uploader.url)).status_code == 200
    assert (server.storage / upload_id_of(str(uploader.url))).read_bytes() == b"data"
    assert hook_receiver.received("post-terminate") == []


def test_pre_terminate_refuses_a_delete_sent_by_curl_and_the_upload_stays(
    tus_server: StartServer, hook_receiver: HookReceiver, tmp_path: Path
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer(
        "pre-terminate",
        {
            "RejectTermination": True,
            "HTTPResponse": {"StatusCode": 423, "Body": "under legal hold"},
        },
    )
    url = server.create(6)
    assert server.patch(url, 0, b"abc").status_code == 204
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed for this spec"

    sent = subprocess.run(
        [curl, "--silent", "--show-error", "--max-time", "30", "--request", "DELETE",
         "--header", "Tus-Resumable: 1.0.0", "--dump-header", "-", url],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip

    assert sent.returncode == 0, sent.stderr
    head, _, body = sent.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 423")
    assert body == b"under legal hold"
    [asked] = hook_receiver.received("pre-terminate")
    assert asked.upload["ID"] == upload_id_of(url)
    assert asked.request["Method"] == "DELETE"
    assert asked.request["Header"]["User-Agent"][0].startswith("curl/")
    kept = server.head(url)
    assert kept.status_code == 200
    assert kept.headers["Upload-Offset"] == "3"
    # The upload goes on: the rest of its bytes are taken and it finishes.
    assert server.patch(url, 3, b"def").status_code == 204
    assert (server.storage / upload_id_of(url)).read_bytes() == b"abcdef"
    assert hook_receiver.received("post-terminate") == []


# --- pre-finish -------------------------------------------------------------


def test_without_a_pre_finish_answer_nothing_is_published_until_a_head_finishes_it(
    tus_server: StartServer, hook_receiver: HookReceiver, state: redis.Redis
) -> None:
    server = hooked(tus_server, hook_receiver, hooks_retries=0)
    url = server.create(3)
    upload_id = upload_id_of(url)
    hook_receiver.answer("pre-finish", status=500)

    patched = server.patch(url, 0, b"abc")
    # The commit of the last bytes kept the lock for the finalize: the 503
    # lets go of it, so the next HEAD can finish the upload at once.
    assert state.exists(f"tus:{{{upload_id}}}:lock") == 0
    held_back = server.head(url)

    assert_tus_error(patched, 503, "hook_unavailable")
    # Every byte is in, but the file waits for the hook's agreement.
    assert held_back.status_code == 423
    assert not (server.storage / upload_id).exists()
    assert hook_receiver.received("post-finish") == []

    hook_receiver.answer("pre-finish")
    finished = server.head(url)

    assert finished.headers["Upload-Offset"] == "3"
    assert (server.storage / upload_id).read_bytes() == b"abc"
    [delivered] = hook_receiver.wait_for("post-finish")
    assert delivered.upload["ID"] == upload_id
    assert delivered.upload["Storage"]["Location"] == upload_id


# --- post-receive -----------------------------------------------------------


def slow_body(blocks: int) -> Iterator[bytes]:
    """64 KiB blocks, 50 ms apart: a PATCH that runs for a while."""
    for _ in range(blocks):
        yield b"x" * 65536
        time.sleep(0.05)


def slow_patch_headers(blocks: int) -> dict[str, str]:
    # With a Content-Length the body counts as it streams (checkpoints).
    return {
        **TUS,
        "Content-Type": OCTETS,
        "Upload-Offset": "0",
        "Content-Length": str(blocks * 65536),
    }


@pytest.mark.parametrize("with_response", [True, False], ids=["hooks-answer", "default-answer"])
def test_post_receive_stops_a_running_patch_and_the_upload_is_terminated(
    tus_server: StartServer, hook_receiver: HookReceiver, state: redis.Redis, with_response: bool
) -> None:
    server = hooked(
        tus_server,
        hook_receiver,
        checkpoint_interval=0.1,
        block_size=64 * 1024,
        progress_interval=0.1,
    )
    answer: dict[str, Any] = {"StopUpload": True}
    if with_response:
        answer["HTTPResponse"] = {"StatusCode": 409, "Body": "virus found"}
    hook_receiver.answer("post-receive", answer)
    url = server.create(40 * 65536)

    with httpx.Client(timeout=30) as client:
        stopped = client.patch(url, headers=slow_patch_headers(40), content=slow_body(40))

    if with_response:
        assert stopped.status_code == 409
        assert stopped.text == "virus found"
    else:
        # As tusd: 400, which tells a tus client not to resume.
        assert_tus_error(stopped, 400, "upload_stopped")
        assert stopped.json()["error"]["retryable"] is False
    assert server.head(url).status_code == 410
    [terminated] = hook_receiver.wait_for("post-terminate")
    assert terminated.upload["ID"] == upload_id_of(url)
    assert state.exists(f"tus:{{{upload_id_of(url)}}}:info") == 0
    assert state.exists(f"tus:{{{upload_id_of(url)}}}:gone") == 1
    assert list(server.partials.iterdir()) == []


def test_post_receive_stops_a_running_tuspy_upload_which_fails_with_the_hooks_status(
    tus_server: StartServer, hook_receiver: HookReceiver, state: redis.Redis, tmp_path: Path
) -> None:
    size = 64 * 1024 * 1024
    server = hooked(
        tus_server,
        hook_receiver,
        checkpoint_interval=0.05,
        checkpoint_bytes=64 * 1024,  # a commit, so a post-receive, soon after the start
        block_size=64 * 1024,
        progress_interval=0.1,
    )
    hook_receiver.answer(
        "post-receive",
        {"StopUpload": True, "HTTPResponse": {"StatusCode": 422, "Body": "virus found"}},
    )
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(size))
    # tuspy's default: the whole file in one PATCH, running while the hook answers.
    uploader = TusClient(server.endpoint).uploader(file_path=str(source))

    with pytest.raises(TusUploadFailed) as stopped:
        uploader.upload()

    assert stopped.value.status_code == 422
    assert stopped.value.response_content == b"virus found"
    url = str(uploader.url)
    upload_id = upload_id_of(url)
    [first, *_] = hook_receiver.received("post-receive")
    assert first.upload["ID"] == upload_id and 0 < first.upload["Offset"] < size
    # Terminated as tusd does: HEAD says gone, the bytes and the record are removed.
    assert server.head(url).status_code == 410
    [terminated] = hook_receiver.wait_for("post-terminate")
    assert terminated.upload["ID"] == upload_id
    assert state.exists(f"tus:{{{upload_id}}}:info") == 0
    assert not (server.storage / upload_id).exists()
    assert list(server.partials.iterdir()) == []
    assert hook_receiver.received("post-finish") == []
    # tuspy resuming the URL is told the upload is gone.
    with pytest.raises(TusCommunicationError) as resumed:
        TusClient(server.endpoint).uploader(file_path=str(source), url=url).upload()
    assert resumed.value.status_code == 410


def test_post_receive_is_sent_at_most_once_per_progress_interval(
    tus_server: StartServer, hook_receiver: HookReceiver
) -> None:
    server = hooked(
        tus_server,
        hook_receiver,
        hooks_events=("post-receive",),
        checkpoint_interval=0.05,
        checkpoint_bytes=64 * 1024,
        block_size=64 * 1024,  # stored, so committed, block by block
        progress_interval=0.5,
    )
    url = server.create(60 * 65536)

    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        done = client.patch(url, headers=slow_patch_headers(60), content=slow_body(60))
    elapsed = time.monotonic() - started
    time.sleep(0.3)

    assert done.status_code == 204
    sent = len(hook_receiver.received("post-receive"))
    assert 2 <= sent <= elapsed / 0.5 + 1


# --- tus-js-client ----------------------------------------------------------


def run_tus_js(endpoint: str, path: Path, **options: Any) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None
    return subprocess.run(
        [node, str(JS_DIR / "upload.mjs"), endpoint, str(path), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_tus_js_client_gets_the_pre_create_rejection(
    tus_server: StartServer, hook_receiver: HookReceiver, tus_js: TusJs, tmp_path: Path
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer(
        "pre-create",
        {"RejectUpload": True, "HTTPResponse": {"StatusCode": 403, "Body": "not allowed here"}},
    )
    source = tmp_path / "a.bin"
    source.write_bytes(b"data")

    result = run_tus_js(server.endpoint, source)

    assert result.returncode == 1
    assert "response code: 403" in result.stderr
    assert "not allowed here" in result.stderr


def test_tus_js_client_uploads_to_the_id_pre_create_chose(
    tus_server: StartServer, hook_receiver: HookReceiver, tus_js: TusJs, tmp_path: Path
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer("pre-create", {"ChangeFileInfo": {"ID": "chosen-by-the-hook"}})
    source = tmp_path / "a.bin"
    source.write_bytes(os.urandom(300_000))

    url = tus_js(server.endpoint, source, chunkSize=100_000)

    assert url.endswith("/files/chosen-by-the-hook")
    assert (server.storage / "chosen-by-the-hook").read_bytes() == source.read_bytes()


def test_post_receive_stops_a_running_tus_js_client_upload_with_the_hooks_status(
    tus_server: StartServer, hook_receiver: HookReceiver, tus_js: TusJs, tmp_path: Path
) -> None:
    server = hooked(
        tus_server,
        hook_receiver,
        checkpoint_interval=0.05,
        checkpoint_bytes=64 * 1024,
        block_size=64 * 1024,
        progress_interval=0.1,
    )
    hook_receiver.answer(
        "post-receive",
        {"StopUpload": True, "HTTPResponse": {"StatusCode": 422, "Body": "virus found"}},
    )
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(64 * 1024 * 1024))

    # tus-js-client's default: the whole file in one PATCH.
    result = run_tus_js(server.endpoint, source)

    assert result.returncode == 1
    assert "response code: 422" in result.stderr
    assert "virus found" in result.stderr
    [terminated] = hook_receiver.wait_for("post-terminate")
    upload_id = terminated.upload["ID"]
    assert server.head(f"{server.endpoint}{upload_id}").status_code == 410
    assert not (server.storage / upload_id).exists()
    assert list(server.partials.iterdir()) == []
    assert hook_receiver.received("post-finish") == []


def test_pre_terminate_refuses_tus_js_clients_abort_true_and_the_upload_stays(
    tus_server: StartServer, hook_receiver: HookReceiver, tus_js: TusJs, tmp_path: Path
) -> None:
    server = hooked(tus_server, hook_receiver)
    hook_receiver.answer(
        "pre-terminate",
        {
            "RejectTermination": True,
            "HTTPResponse": {"StatusCode": 423, "Body": "under legal hold"},
        },
    )
    url = server.create(6)
    assert server.patch(url, 0, b"abc").status_code == 204
    source = tmp_path / "a.bin"
    source.write_bytes(b"abcdef")
    node = shutil.which("node")
    assert node is not None

    # tus-js-client resumes the upload, sends one byte, then abort(true): a DELETE.
    result = subprocess.run(
        [node, str(JS_DIR / "abort.mjs"), url, str(source)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": 423, "body": "under legal hold"}
    [asked] = hook_receiver.received("pre-terminate")
    assert asked.upload["ID"] == upload_id_of(url)
    assert asked.upload["Offset"] == 4
    assert asked.request["Method"] == "DELETE"
    kept = server.head(url)
    assert kept.status_code == 200
    assert kept.headers["Upload-Offset"] == "4"
    assert hook_receiver.received("post-terminate") == []


# --- settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({"TUSSERVER_HOOKS_EVENTS": "pre-create,post-nothing"}, "'post-nothing' is unknown"),
        ({"TUSSERVER_HOOKS_HEADER": "X-Hook-Secret=hdr-s3cret"}, "must be NAME:VALUE"),
        # The variable's list is split at spaces: "abc" arrives as a header of its own.
        ({"TUSSERVER_HOOKS_HEADER": "X-Hook-Secret: hdr-s3cret"}, "must be NAME:VALUE"),
        ({"TUSSERVER_HOOKS_URL": "ftp://hooks.example/tus"}, "absolute http(s) URL"),
        ({"TUSSERVER_HOOKS_TIMEOUT": "0s"}, "hooks timeout must be greater than zero"),
    ],
)
def test_a_bad_hook_setting_stops_the_start_with_one_sentence_that_shows_no_header_value(
    tmp_path: Path, settings: dict[str, str], mentions: str
) -> None:
    env = cli_env(**{"TUSSERVER_HOOKS_URL": "http://127.0.0.1:9/tus-hooks", **settings})
    argv = tusserver(
        "serve", "--port", str(free_port()), "--storage", str(tmp_path / "files"),
        "--data-dir", str(tmp_path / "data"),
    )  # fmt: skip

    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert mentions in lines[0]
    assert "hdr-s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
