"""A FastAPI app with tusserver mounted under /uploads and an on-finish callback.

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
from tusserver.hooks import FinishedUpload, Hooks

logger = logging.getLogger("uvicorn.error")

# What this app learned about finished uploads; a real app would write to its
# database or queue a job (keep the callback short: the client waits for it).
finished: list[FinishedUpload] = []


async def on_finish(upload: FinishedUpload) -> None:
    name = upload.metadata.get("filename", b"").decode(errors="replace")
    logger.info(
        "upload %s finished: %r, %d bytes, at %s", upload.id, name, upload.length, upload.location
    )
    finished.append(upload)


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
    return [{"id": u.id, "length": u.length, "location": u.location} for u in finished]


app.mount("/uploads", tus)
