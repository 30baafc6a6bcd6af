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
UPLOAD_EXPIRES = "Upload-Expires"
METHOD_OVERRIDE = "X-HTTP-Method-Override"
LOCATION = "Location"
CACHE_CONTROL = "Cache-Control"
CONTENT_TYPE = "Content-Type"
CONTENT_LENGTH = "Content-Length"
TRANSFER_ENCODING = "Transfer-Encoding"
ALLOW = "Allow"
