"""smbprotocol's failures as builtin ``OSError`` subclasses chosen by errno.

smbprotocol's failures are not builtin ``OSError`` subclasses: a refused
connection is a ``ValueError``, a lost one ``SMBConnectionClosed``, a missing
file an ``SMBOSError`` with an errno (or errno 0 for most NT statuses).
``translate`` maps each to the ``OSError`` a caller can rely on
(``FileNotFoundError``, ``PermissionError``, ``TimeoutError``,
``ConnectionResetError``), with a message that names the server but never
the password.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.header import NtStatus

if TYPE_CHECKING:
    from storage_backends.smb_calls import Server

# NT statuses smbprotocol reports with errno 0, and the errno they mean.
_NTSTATUS_ERRNO = {
    NtStatus.STATUS_ACCESS_DENIED: errno.EACCES,
    NtStatus.STATUS_LOGON_FAILURE: errno.EACCES,
    NtStatus.STATUS_WRONG_PASSWORD: errno.EACCES,
    NtStatus.STATUS_PASSWORD_EXPIRED: errno.EACCES,
    NtStatus.STATUS_CANNOT_DELETE: errno.EACCES,
    # The share itself is gone (a reload, a failover): passing trouble with the
    # connection, not a missing file (which would end the upload for good).
    NtStatus.STATUS_BAD_NETWORK_NAME: errno.ECONNRESET,
    NtStatus.STATUS_DELETE_PENDING: errno.ENOENT,
    NtStatus.STATUS_NO_SUCH_FILE: errno.ENOENT,
    NtStatus.STATUS_OBJECT_NAME_INVALID: errno.EINVAL,
    NtStatus.STATUS_OBJECT_PATH_SYNTAX_BAD: errno.EINVAL,
    NtStatus.STATUS_DISK_FULL: errno.ENOSPC,
    0xC0000044: errno.EDQUOT,  # STATUS_DISK_QUOTA_EXCEEDED, which smbprotocol does not name
    NtStatus.STATUS_INSUFF_SERVER_RESOURCES: errno.ENOMEM,
    NtStatus.STATUS_INSUFFICIENT_RESOURCES: errno.ENOMEM,
    NtStatus.STATUS_FILE_CLOSED: errno.EBADF,
    NtStatus.STATUS_USER_SESSION_DELETED: errno.ECONNRESET,
    NtStatus.STATUS_NETWORK_NAME_DELETED: errno.ECONNRESET,
    NtStatus.STATUS_IO_TIMEOUT: errno.ETIMEDOUT,
}
_LOGIN_STATUSES = {
    NtStatus.STATUS_LOGON_FAILURE,
    NtStatus.STATUS_WRONG_PASSWORD,
    NtStatus.STATUS_PASSWORD_EXPIRED,
}


def translate(exc: BaseException, server: Server, timed_out_after: float | None) -> OSError | None:
    """The builtin ``OSError`` for an smbprotocol failure; None for a programming error."""
    if timed_out_after is not None:
        return TimeoutError(
            errno.ETIMEDOUT,
            f"SMB server {server} did not answer within {timed_out_after:g} seconds",
        )
    if isinstance(exc, SMBOSError):
        status = exc.ntstatus
        if status in _LOGIN_STATUSES:
            return _login_refused(server)
        if exc.errno:
            return OSError(exc.errno, exc.strerror, exc.filename)
        code = _NTSTATUS_ERRNO.get(status, errno.EIO)
        return OSError(code, _status_name(status), exc.filename)
    if isinstance(exc, SMBResponseException):
        if exc.status in _LOGIN_STATUSES:
            return _login_refused(server)
        code = _NTSTATUS_ERRNO.get(exc.status, errno.EIO)
        return OSError(code, f"SMB server {server} answered {_status_name(exc.status)}")
    if isinstance(exc, SMBAuthenticationError):
        return _login_refused(server)
    if isinstance(exc, SMBException):
        # SMBConnectionClosed and the transport's own failures.
        return ConnectionResetError(errno.ECONNRESET, f"connection to SMB server {server} lost")
    if isinstance(exc, ValueError):
        # smbprotocol reports a failed TCP connect as ValueError from OSError.
        cause = exc.__cause__
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause) or type(cause).__name__
            code = cause.errno or errno.ECONNREFUSED
            return OSError(code, f"cannot connect to SMB server {server}: {reason}")
        return None
    if isinstance(exc, OSError):
        if exc.errno in (errno.EPIPE, errno.EBADF, None) or isinstance(exc, ConnectionError):
            return ConnectionResetError(errno.ECONNRESET, f"connection to SMB server {server} lost")
        return exc
    return None


def _login_refused(server: Server) -> PermissionError:
    return PermissionError(
        errno.EACCES,
        f"SMB server {server} refused the login of user {server.username!r} "
        "(check the user in the URL and TUSSERVER_SMB_PASSWORD)",
    )


def _status_name(status: int) -> str:
    for name, value in vars(NtStatus).items():
        if value == status and name.startswith("STATUS_"):
            return str(name)
    return f"NT status 0x{status:08x}"
