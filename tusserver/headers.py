"""Header names, in one place (tus spec "Headers" section, plus the HTTP
headers the handlers read). A leaf module: ``errors`` and ``protocol`` both
import it.
"""

TUS_RESUMABLE = "Tus-Resumable"
TUS_VERSION = "Tus-Version"
TUS_EXTENSION = "Tus-Extension"
TUS_MAX_SIZE = "Tus-Max-Size"
UPLOAD_OFFSET = "Upload-Offset"
UPLOAD_LENGTH = "Upload-Length"
UPLOAD_DEFER_LENGTH = "Upload-Defer-Length"
UPLOAD_METADATA = "Upload-Metadata"
UPLOAD_CHECKSUM = "Upload-Checksum"
TUS_CHECKSUM_ALGORITHM = "Tus-Checksum-Algorithm"
UPLOAD_CONCAT = "Upload-Concat"
UPLOAD_EXPIRES = "Upload-Expires"
METHOD_OVERRIDE = "X-HTTP-Method-Override"
LOCATION = "Location"
CACHE_CONTROL = "Cache-Control"
CONTENT_TYPE = "Content-Type"
CONTENT_LENGTH = "Content-Length"
TRANSFER_ENCODING = "Transfer-Encoding"
# CORS (Fetch standard) and proxies (RFC 7239, and the de-facto X-Forwarded-*).
AUTHORIZATION = "Authorization"
# RFC 6750: the challenge of a 401 (tusserver.auth).
WWW_AUTHENTICATE = "WWW-Authenticate"
X_REQUESTED_WITH = "X-Requested-With"
X_REQUEST_ID = "X-Request-ID"
FORWARDED = "Forwarded"
X_FORWARDED_HOST = "X-Forwarded-Host"
X_FORWARDED_PROTO = "X-Forwarded-Proto"
X_FORWARDED_PREFIX = "X-Forwarded-Prefix"
ALLOW = "Allow"
# GET download (RFC 9110 ranges and validators, RFC 6266 disposition).
ACCEPT_RANGES = "Accept-Ranges"
CONTENT_RANGE = "Content-Range"
CONTENT_DISPOSITION = "Content-Disposition"
CONTENT_TYPE_OPTIONS = "X-Content-Type-Options"
ETAG = "ETag"
LAST_MODIFIED = "Last-Modified"
RANGE = "Range"
IF_RANGE = "If-Range"
IF_NONE_MATCH = "If-None-Match"
IF_MODIFIED_SINCE = "If-Modified-Since"
# A server that is stopping (tusserver.draining): when to retry, and that this
# connection ends with the answer.
RETRY_AFTER = "Retry-After"
CONNECTION = "Connection"
