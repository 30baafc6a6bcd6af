"""A FastAPI app with tusserver mounted under /uploads and a post-finish hook.

    uvicorn --app-dir examples fastapi_app:app --port 8000

Clients upload to http://127.0.0.1:8000/uploads/files/ (Locations then read
/uploads/files/<id>: the mount path is part of them). Settings come from the
same TUSSERVER_* variables as the CLI's: TUSSERVER_STORAGE (default
./uploads), TUSSERVER_REDIS_URL (default: embedded Redis in ./tusserver-data).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tusserver import Config, create_app
from tusserver.hook_events import HookEvent
from tusserver.hooks import Hooks

logger = logging.getLogger("uvicorn.error")

# What this app learned about finished uploads; a real app would write to its
# database or queue a job. post-finish is delivered at least once (recorded
# in Redis, retried until the callback returns), so key the work on the id.
finished: dict[str, HookEvent] = {}


async def on_finish(event: HookEvent) -> None:
    upload = event.upload
    location = (upload.storage or {}).get("Location", "")
    logger.info(
        "upload %s finished: %r, %d bytes, at %s",
        upload.id,
        upload.metadata.get("filename", ""),
        upload.offset,
        location,
    )
    finished[upload.id] = event


tus = create_app(
    Config(
        storage=os.environ.get("TUSSERVER_STORAGE", "./uploads"),
        redis_url=os.environ.get("TUSSERVER_REDIS_URL"),
        data_dir=Path(os.environ.get("TUSSERVER_DATA_DIR", "./tusserver-data")),
        cors_origins=tuple(os.environ.get("TUSSERVER_CORS_ORIGIN", "").split()),
    ),
    hooks=Hooks(post_finish=on_finish),
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # FastAPI and Starlette do not run a mounted app's lifespan: tusserver's
    # opens Redis and the storage, so run it from the parent's.
    async with tus.router.lifespan_context(tus):
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/uploads-finished")
async def uploads_finished() -> list[dict[str, object]]:
    return [
        {
            "id": upload_id,
            "length": event.upload.offset,
            "location": (event.upload.storage or {}).get("Location"),
        }
        for upload_id, event in finished.items()
    ]


app.mount("/uploads", tus)
