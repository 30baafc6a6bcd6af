"""The one error type of tusserver, and the named errors of the protocol.

    TusError(status, code, message, hint, retryable, headers)
      ├── 4xx: the request cannot succeed as sent (retryable only where a
      │        client is expected to retry: 409, 423)
      └── 5xx: the server failed; retryable

``tusserver.app`` renders every TusError as a JSON body
``{"error": {"code", "message", "hint", "retryable"}}`` plus the tus headers;
any other exception becomes a logged 500 with no internals in the body.
Named errors are functions that return a fresh ``TusError`` each time, in the
manner of tusd's ``ErrMismatchOffset``. Never a shared instance: raising an
exception extends its ``__traceback__``, so a module-level error raised on
every 404 would keep each request's frames alive for the life of the process.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping

from tusserver import metrics
from tusserver.headers import (
    ALLOW,
    CONNECTION,
    CONTENT_RANGE,
    RETRY_AFTER,
    TUS_MAX_SIZE,
    UPLOAD_CONCAT,
    UPLOAD_DEFER_LENGTH,
    UPLOAD_LENGTH,
    UPLOAD_OFFSET,
    WWW_AUTHENTICATE,
)


class TusError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        hint: str = "",
        *,
        retryable: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.retryable = retryable
        self.headers: dict[str, str] = dict(headers or {})
        # A body given verbatim instead of the JSON one: a hook's rejection
        # (tusd's HTTPResponse.Body), which its receiver wrote for the client.
        self.raw_body: str | None = None

    def with_headers(self, headers: Mapping[str, str]) -> TusError:
        """This error, carrying extra response headers too."""
        self.headers.update(headers)
        return self

    def body(self) -> dict[str, dict[str, object]]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "hint": self.hint,
                "retryable": self.retryable,
            }
        }


def version_missing() -> TusError:
    return TusError(
        412,
        "tus_resumable_missing",
        "The Tus-Resumable header is missing.",
        "Send Tus-Resumable: 1.0.0 with every request except OPTIONS.",
    )


def version_unsupported() -> TusError:
    return TusError(
        412,
        "tus_version_unsupported",
        "This server does not speak the requested tus version.",
        "Use one of the versions listed in Tus-Version.",
    )


def unsupported_content_type() -> TusError:
    return TusError(
        415,
        "unsupported_content_type",
        "Upload data must be sent as application/offset+octet-stream.",
        "Set Content-Type: application/offset+octet-stream on PATCH (and on POST with data).",
    )


def missing_upload_offset() -> TusError:
    return TusError(
        400,
        "upload_offset_missing",
        "The Upload-Offset header is missing.",
        "Send the offset returned by HEAD as Upload-Offset.",
    )


def missing_upload_length() -> TusError:
    return TusError(
        400,
        "upload_length_missing",
        "Neither Upload-Length nor Upload-Defer-Length was sent.",
        "Send Upload-Length with the size in bytes, "
        "or Upload-Defer-Length: 1 if it is not known yet.",
    )


def length_and_defer() -> TusError:
    return TusError(
        400,
        "upload_length_conflict",
        "Upload-Length and Upload-Defer-Length were both sent.",
        "Send exactly one of them.",
    )


def length_changed() -> TusError:
    return TusError(
        400,
        "upload_length_immutable",
        "The upload's length is already set and cannot be changed.",
        "Send the same Upload-Length as before, or none.",
    )


def length_below_offset() -> TusError:
    return TusError(
        400,
        "upload_length_too_small",
        "Upload-Length is smaller than the bytes already received.",
        "Check the file size; HEAD returns how many bytes the server has.",
    )


def size_exceeded(max_size: int | None) -> TusError:
    return TusError(
        413,
        "upload_too_large",
        "The upload would be larger than allowed.",
        "Check Upload-Length and Tus-Max-Size (OPTIONS); nothing beyond the limit was stored.",
        headers={TUS_MAX_SIZE: str(max_size)},
    )


def body_exceeds_length() -> TusError:
    return TusError(
        413,
        "body_exceeds_upload_length",
        "The request body runs past the declared Upload-Length.",
        "Send at most Upload-Length minus Upload-Offset bytes; "
        "this request's bytes were discarded.",
    )


def not_found() -> TusError:
    return TusError(
        404,
        "upload_not_found",
        "No upload exists at this URL.",
        "Create a new upload with POST.",
    )


def gone() -> TusError:
    return TusError(
        410,
        "upload_gone",
        "This upload was terminated or has expired.",
        "Create a new upload with POST.",
    )


# Redis away (restarting, failing over): a second is when to look again.
_RETRY_SOON = {"Retry-After": "1"}


def locked() -> TusError:
    return TusError(
        423,
        "upload_locked",
        "Another request is working on this upload.",
        "Retry in a moment; the other request is being asked to finish.",
        retryable=True,
    )


def lock_lost(offset: int) -> TusError:
    """``offset``: where this request last committed (or found) the upload;
    another request may have moved it on since."""
    return TusError(
        423,
        "upload_lock_lost",
        "Another request took this upload over while this one was working on it.",
        "Send HEAD and resume from the Upload-Offset it returns; this request's bytes "
        "past the Upload-Offset given here were not counted.",
        retryable=True,
        headers={UPLOAD_OFFSET: str(offset)},
    )


def taken_over(offset: int) -> TusError:
    return TusError(
        423,
        "upload_taken_over",
        "This request stalled and another request took the upload over.",
        "Send HEAD and resume from the Upload-Offset it returns; this request's bytes "
        "up to the Upload-Offset given here were kept.",
        retryable=True,
        headers={UPLOAD_OFFSET: str(offset)},
    )


def shutting_down(offset: int | None = None) -> TusError:
    """503 from a server that is stopping: for a request that arrived after the
    stop began, or a PATCH cut at the end of the shutdown grace (with the
    ``Upload-Offset`` it committed). Retrying goes to another instance."""
    extra = {RETRY_AFTER: "1", CONNECTION: "close"}
    if offset is not None:
        extra[UPLOAD_OFFSET] = str(offset)
    return TusError(
        503,
        "server_shutting_down",
        "This server is shutting down.",
        "Retry in a moment (another instance will answer): send HEAD and resume from the"
        " Upload-Offset it returns; bytes acknowledged so far are safe.",
        retryable=True,
        headers=extra,
    )


def temporarily_unavailable() -> TusError:
    return TusError(
        423,
        "upload_temporarily_unavailable",
        "The upload's state cannot be read right now.",
        "Retry in a moment; nothing was lost.",
        retryable=True,
        headers=_RETRY_SOON,
    )


def state_unavailable() -> TusError:
    return TusError(
        503,
        "state_unavailable",
        "The upload state store is not reachable.",
        "Retry in a moment; bytes already acknowledged are safe.",
        retryable=True,
        headers=_RETRY_SOON,
    )


def storage_failed() -> TusError:
    return TusError(
        503,
        "storage_failed",
        "The storage could not be written.",
        "Retry in a moment with HEAD to learn the offset the server kept.",
        retryable=True,
    )


def internal() -> TusError:
    return TusError(
        500,
        "internal_error",
        "The server failed to handle this request.",
        "Retry; if it persists, report the time and the upload URL to the operator.",
        retryable=True,
    )


def method_not_allowed(allowed: str) -> TusError:
    return TusError(
        405,
        "method_not_allowed",
        "This method is not supported at this URL.",
        "POST to the endpoint creates uploads; HEAD, PATCH and DELETE act on an upload URL.",
        headers={ALLOW: allowed},
    )


def checksum_mismatch() -> TusError:
    return TusError(
        460,
        "checksum_mismatch",
        "The body does not match its Upload-Checksum.",
        "Resend this chunk from the same Upload-Offset; its bytes were discarded.",
        retryable=True,
    )


def checksum_incomplete() -> TusError:
    return TusError(
        460,
        "checksum_body_incomplete",
        "The body ended before the whole chunk arrived, so its Upload-Checksum cannot be verified.",
        "Resend this chunk from the same Upload-Offset; its bytes were discarded.",
        retryable=True,
    )


def invalid_header(header: str, expected: str) -> TusError:
    return TusError(
        400,
        "invalid_header",
        f"The {header} header is malformed.",
        f"{header} must be {expected}.",
    )


def invalid_metadata(detail: str) -> TusError:
    return TusError(
        400,
        "invalid_upload_metadata",
        f"Upload-Metadata is malformed: {detail}.",
        "Send comma-separated pairs of a key and its base64-encoded value.",
    )


def metadata_too_large(limit: int) -> TusError:
    return TusError(
        400,
        "upload_metadata_too_large",
        f"Upload-Metadata is larger than {limit} bytes.",
        "Send fewer or shorter metadata values.",
    )


def mismatched_offset(current: int) -> TusError:
    return TusError(
        409,
        "mismatched_offset",
        "Upload-Offset does not match the server's offset.",
        "Send HEAD and resume from the Upload-Offset it returns.",
        retryable=True,
        headers={UPLOAD_OFFSET: str(current)},
    )


# --- concatenation (tus "Concatenation" extension) ----------------------------


def concatenation_unsupported() -> TusError:
    return TusError(
        400,
        "concatenation_unsupported",
        f"This server's storage cannot concatenate uploads; {UPLOAD_CONCAT} is not accepted.",
        "Upload the file as one upload; Tus-Extension on OPTIONS lists what the server supports.",
    )


def concat_without_parts() -> TusError:
    return TusError(
        400,
        "concat_without_parts",
        f"{UPLOAD_CONCAT}: final lists no partial uploads.",
        f"Send {UPLOAD_CONCAT}: final;<url> <url> ... "
        "with the URLs of the partial uploads, in order.",
    )


def final_length_not_allowed() -> TusError:
    return TusError(
        400,
        "final_upload_length_not_allowed",
        f"A final upload's length is the sum of its parts; {UPLOAD_LENGTH} and "
        f"{UPLOAD_DEFER_LENGTH} are not allowed with it.",
        f"Send {UPLOAD_CONCAT}: final;... without {UPLOAD_LENGTH} or {UPLOAD_DEFER_LENGTH}.",
    )


def final_upload_immutable() -> TusError:
    return TusError(
        403,
        "final_upload_immutable",
        "A final upload is assembled from its partial uploads and takes no data of its own.",
        "Upload the bytes to the partial uploads; the final upload is complete once created.",
    )


def concat_part_removed() -> TusError:
    return TusError(
        400,
        "concat_part_removed",
        "A partial upload was removed while the final upload was being assembled.",
        "Upload that part again and send the final upload anew.",
    )


def too_many_concat_parts(limit: int) -> TusError:
    return TusError(
        400,
        "too_many_concat_parts",
        f"{UPLOAD_CONCAT} lists more than {limit} partial uploads.",
        "Split the file into fewer parts.",
    )


def _shown(url: str) -> str:
    """A client's URL, shortened for an error message."""
    return repr(url if len(url) <= 200 else url[:200] + "...")


def _concat_part_error(code: str, number: int, url: str, problem: str, hint: str) -> TusError:
    """A 400 naming the part of an ``Upload-Concat: final`` list that is at fault."""
    return TusError(400, code, f"Part {number} of {UPLOAD_CONCAT} ({_shown(url)}) {problem}", hint)


def concat_part_invalid(number: int, url: str) -> TusError:
    return _concat_part_error(
        "invalid_concat_part",
        number,
        url,
        "is not an upload URL of this endpoint.",
        "List the URLs this endpoint returned in Location for the partial uploads.",
    )


def concat_part_not_found(number: int, url: str) -> TusError:
    return _concat_part_error(
        "concat_part_not_found",
        number,
        url,
        "does not exist (any more).",
        "Upload that part again, then send the final upload.",
    )


def concat_part_not_partial(number: int, url: str) -> TusError:
    return _concat_part_error(
        "concat_part_not_partial",
        number,
        url,
        "was not created as a partial upload.",
        f"Create the parts with {UPLOAD_CONCAT}: partial.",
    )


def concat_part_incomplete(number: int, url: str) -> TusError:
    return _concat_part_error(
        "concat_part_incomplete",
        number,
        url,
        "is not complete.",
        "Finish uploading every part (HEAD shows its offset) before sending the final upload.",
    )


def concat_part_failed(number: int, url: str) -> TusError:
    return _concat_part_error(
        "concat_part_failed",
        number,
        url,
        "does not match its declared checksum.",
        "Upload that part again as a new partial upload and list the new URL.",
    )


def unsupported_checksum_algorithm(algorithm: str, supported: str) -> TusError:
    return TusError(
        400,
        "unsupported_checksum_algorithm",
        f"The checksum algorithm {algorithm[:20]!r} is not supported.",
        f"Use one of {supported} (OPTIONS lists them in Tus-Checksum-Algorithm).",
    )


def upload_checksum_failed(reason: str) -> TusError:
    """The whole file does not match the digest declared at creation."""
    return TusError(
        460,
        "upload_checksum_mismatch",
        f"The uploaded file does not match the checksum declared when it was created: {reason}.",
        "The upload was not finalized. Create a new upload and send the file again.",
    )


def type_not_allowed(declared: str) -> TusError:
    """Creation declares a type (metadata or file extension) not allowed."""
    return TusError(
        415,
        "upload_type_not_allowed",
        f"This server does not accept files of type {declared[:100]}.",
        "Upload a file of an allowed type; the filetype or type metadata and "
        "the filename's extension must name one.",
    )


def content_refused(reason: str) -> TusError:
    """The first bytes are not of an allowed type, or not of the declared one.
    Answered by the PATCH that brought them and by HEAD afterwards."""
    return TusError(
        415,
        "upload_content_refused",
        f"The upload was refused: {reason[:200]}.",
        "Its bytes were removed. Upload a file of an allowed type, declared as what it is.",
    )


def too_small(reason: str) -> TusError:
    # 400 like any Upload-Length the server cannot take (tusd answers an
    # invalid length so); 413 would tell the client the file is too large.
    return TusError(
        400,
        "upload_too_small",
        f"The upload was refused: {reason[:200]}.",
        "Upload a larger file; nothing can make this one acceptable.",
    )


def failed(code: str | None, reason: str) -> TusError:
    """What HEAD and PATCH answer for an upload recorded as failed, by the
    code of the error that failed it (none: a whole-file checksum mismatch
    recorded before codes were)."""
    if code == "upload_content_refused":
        return content_refused(reason)
    if code == "upload_too_small":
        return too_small(reason)
    return upload_checksum_failed(reason)


def not_finished() -> TusError:
    return TusError(
        404,
        "upload_not_finished",
        "This upload is not finished, so there is nothing to download yet.",
        "HEAD shows how many bytes have arrived; download once Upload-Offset equals Upload-Length.",
    )


def range_not_satisfiable(size: int) -> TusError:
    # RFC 9110 15.5.17: a 416 names the current length as "bytes */<length>".
    return TusError(
        416,
        "range_not_satisfiable",
        "The requested byte range lies outside the file.",
        f"Request bytes within 0-{size - 1}, or send no Range for the whole file.",
        headers={CONTENT_RANGE: f"bytes */{size}"},
    )


# RFC 6750 section 3: the challenge every 401 of tusserver carries.
BEARER_REALM = 'Bearer realm="tus"'


def unauthorized(
    code: str = "unauthorized",
    message: str = "This request needs credentials.",
    hint: str = "Send Authorization: Bearer <token>.",
    *,
    invalid_token: bool = False,
) -> TusError:
    """401 with ``WWW-Authenticate: Bearer``. ``invalid_token``: a token was
    presented and not accepted (RFC 6750 3.1 ``error="invalid_token"``);
    without it, the request carried no bearer token, and RFC 6750 3.1 says
    the challenge then names no error. Also for an application's
    ``authenticate`` callable to raise (tusserver.auth)."""
    challenge = BEARER_REALM + (', error="invalid_token"' if invalid_token else "")
    return TusError(401, code, message, hint, headers={WWW_AUTHENTICATE: challenge})


def token_missing() -> TusError:
    return unauthorized(
        "token_missing",
        "This server needs a bearer token with every request.",
        "Send Authorization: Bearer <token>.",
    )


def token_invalid() -> TusError:
    # One answer for every reason (signature, audience, issuer, algorithm,
    # syntax): which check failed is for the server's log, not the caller.
    return unauthorized(
        "token_invalid",
        "The bearer token was not accepted.",
        "Get a new token from the application that issued it.",
        invalid_token=True,
    )


def token_expired() -> TusError:
    return unauthorized(
        "token_expired",
        "The bearer token has expired.",
        "Get a fresh token and send the request again; the upload resumes where it was.",
        invalid_token=True,
    )


def forbidden(
    code: str = "forbidden",
    message: str = "This request is not allowed.",
    hint: str = "Sending it again with the same credentials will not help.",
) -> TusError:
    """403: the caller is known and not allowed. For an ``authenticate``
    callable to raise (tusserver.auth)."""
    return TusError(403, code, message, hint)


def forbidden_owner() -> TusError:
    """Another owner's upload. Says nothing of the upload: not its state,
    size, offset or owner (tusserver.ownership)."""
    return forbidden(
        "upload_forbidden",
        "This upload belongs to another user.",
        "Use the credentials of the user who created it, or create your own upload.",
    )


def concat_part_forbidden(number: int) -> TusError:
    """A final upload naming another owner's partial upload."""
    return forbidden(
        "concat_part_forbidden",
        f"Part {number} of Upload-Concat belongs to another user.",
        "Name only partial uploads created with your own credentials.",
    )


def cors_refused(what: str) -> TusError:
    """A browser preflight asking for what the CORS settings do not allow."""
    return TusError(
        400,
        "cors_preflight_refused",
        f"This cross-origin request is not allowed ({what[:100]}).",
        "The server's --cors-origin setting must list the page's origin.",
    )


def storage_full() -> TusError:
    return TusError(
        507,
        "storage_full",
        "The storage is full (or over its quota).",
        "Retrying will not help until the operator frees space; "
        "bytes already acknowledged are safe.",
    )


def storage_refused() -> TusError:
    return TusError(
        500,
        "storage_refused",
        "The storage refused the server's access.",
        "Report the time and the upload URL to the operator; retrying will not help.",
    )


def storage_read_failed() -> TusError:
    return TusError(
        503,
        "storage_read_failed",
        "The storage could not be read.",
        "Retry in a moment.",
        retryable=True,
    )


def storage_failure(exc: OSError, *, reading: bool = False) -> TusError:
    """The answer to a storage fault, by what it is: a full disk or a refused
    access is not passing trouble, and a client should not retry it.
    Every storage fault a client is told of passes here, so it is counted here."""
    metrics.recorder().storage_error(
        errno.errorcode.get(exc.errno, type(exc).__name__)
        if exc.errno is not None
        else type(exc).__name__
    )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return storage_full()
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return storage_refused()
    return storage_read_failed() if reading else storage_failed()


# --- hooks (tusserver.hooking) ----------------------------------------------


def hook_unavailable(event: str) -> TusError:
    """A blocking hook did not answer (down, timed out, failed): never let
    the request through as if it had agreed."""
    return TusError(
        503,
        "hook_unavailable",
        f"The server could not check this request ({event} hook unavailable).",
        "Retry in a moment; nothing was changed.",
        retryable=True,
    )


def hook_invalid_answer(event: str, detail: str) -> TusError:
    """The hook answered, but with something that cannot be applied: the
    operator's receiver must be fixed; retrying would get the same answer."""
    return TusError(
        502,
        "hook_invalid_answer",
        f"The server's {event} hook gave an answer that cannot be used: {detail}.",
        "Report the time to the operator; retrying will not help until it is fixed.",
    )


def upload_id_taken() -> TusError:
    return TusError(
        409,
        "upload_id_taken",
        "An upload with the id chosen for this one exists already (or was removed recently).",
        "Resume the existing upload by its URL, or create this one under other metadata.",
    )


# Hook response headers a hook may not set: framing and the tus protocol's
# own, which the server alone decides.
_RESERVED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "tus-resumable", "upload-offset"}
)


def hook_rejected(
    status: int,
    body: str,
    headers: Mapping[str, str],
    *,
    default_status: int,
    code: str,
    message: str,
) -> TusError:
    """A hook's refusal (pre-create, pre-access, pre-terminate, a stopped
    upload): its status (a 4xx or 5xx; anything else gets ``default_status``),
    its body verbatim when it gave one, and its headers beside the tus ones."""
    error = TusError(
        status if 400 <= status <= 599 else default_status,
        code,
        message,
        "The server's policy refused it; retrying the same request will not help.",
    )
    for name, value in headers.items():
        if name.lower() not in _RESERVED_HEADERS:
            error.headers[name] = value
    if body:
        error.raw_body = body
    return error


# --- plain form uploads (POST multipart/form-data; tusserver/forms.py) ----------


def form_malformed(detail: str) -> TusError:
    return TusError(
        400,
        "form_malformed",
        f"The multipart/form-data body is malformed: {detail}.",
        "Send the form as a browser or curl -F does; nothing of it was stored.",
    )


def form_too_many_parts(limit: int) -> TusError:
    return TusError(
        400,
        "form_too_many_parts",
        f"The form has more than {limit} parts.",
        "Send the files in several forms; nothing of this one was stored.",
    )


def form_field_too_large(limit: int) -> TusError:
    return TusError(
        400,
        "form_field_too_large",
        f"A form field that is not a file is larger than {limit} bytes.",
        "Send files as file parts (with a filename); nothing of this form was stored.",
    )


def form_incomplete() -> TusError:
    return TusError(
        400,
        "form_incomplete",
        "The form's body ended, stalled or was cut before its closing boundary.",
        "Send the whole form again; nothing of it was stored.",
        retryable=True,
    )


def form_without_files() -> TusError:
    return TusError(
        400,
        "form_without_files",
        "The form holds no file.",
        "Choose a file: a file part has a filename in its Content-Disposition.",
    )
