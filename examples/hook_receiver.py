"""A hook receiver in tusd v2's format, for ``tusserver serve --hooks-url``.

    uvicorn --app-dir examples hook_receiver:app --port 8000
    tusserver serve --hooks-url http://127.0.0.1:8000/tus-hooks \\
        --hooks-header "X-Hook-Secret:change-me"

It is written against tusd's documented hook format only, so it works in
front of tusd unchanged. What it does:

- pre-create: refuses uploads without a ``filename`` in their metadata (400
  with a JSON body the client sees), and files every upload under an id of
  its own choosing (``upload-<n>``);
- post-finish: remembers the finished upload (delivered at least once: keyed
  by id, a repeat changes nothing);
- everything else: answers 200 with an empty object ("no objection").

Requests without the shared secret get 403; tusserver treats that as a
failed hook (503 for blocking events, a retry for post-finish).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SECRET = os.environ.get("HOOK_SECRET", "change-me")

# Finished uploads by id: a post-finish delivered twice is stored once.
finished: dict[str, dict[str, Any]] = {}
_numbers = itertools.count(1)


def pre_create(upload: dict[str, Any]) -> dict[str, Any]:
    filename = upload["MetaData"].get("filename", "")
    if not filename:
        return {
            "RejectUpload": True,
            "HTTPResponse": {
                "StatusCode": 400,
                "Body": json.dumps({"message": "name the file (metadata 'filename')"}),
                "Header": {"Content-Type": "application/json"},
            },
        }
    return {"ChangeFileInfo": {"ID": f"upload-{next(_numbers):08d}"}}


async def hooks(request: Request) -> JSONResponse:
    if request.headers.get("X-Hook-Secret") != SECRET:
        return JSONResponse({}, status_code=403)
    hook = await request.json()
    upload = hook["Event"]["Upload"]
    if hook["Type"] == "pre-create":
        return JSONResponse(pre_create(upload))
    if hook["Type"] == "post-finish":
        finished[upload["ID"]] = {
            "size": upload["Size"],
            "filename": upload["MetaData"].get("filename", ""),
            "storage": upload["Storage"],
        }
    return JSONResponse({})


async def list_finished(request: Request) -> JSONResponse:
    return JSONResponse(finished)


app = Starlette(
    routes=[
        Route("/tus-hooks", hooks, methods=["POST"]),
        Route("/finished", list_finished, methods=["GET"]),
    ]
)
