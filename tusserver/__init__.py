"""tusserver: a tus 1.0.0 resumable upload server on Starlette, state in Redis."""

from tusserver.app import create_app
from tusserver.config import Config

__all__ = ["Config", "create_app"]
