"""The ceiling of Python on an HTTP server: a minimal Starlette app that streams request bodies
to files, on uvicorn or on granian.

``POST /sink/{name}`` writes the request body to ``<dir>/<name>`` and answers 204. A request
whose ``Upload-Offset`` header is missing or 0 truncates the file; any other offset appends, so
a chunked upload can be replayed as a series of requests. ``HEAD /sink/{name}`` answers 200
with the file's size as ``Upload-Offset``: the cheapest HEAD a Starlette app on uvicorn can
give. There is no tus protocol here, no state and no checks: only the cost of receiving bytes
through the server and Starlette and writing them to disk. It runs with the settings tusserver
runs the same server with (uvicorn: uvloop, httptools; granian: HTTP/1, one worker process),
one worker, access log off.

Usage: python bench/bare_sink.py --port 8081 --dir /some/dir [--host 127.0.0.1]
       [--server uvicorn|granian]
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable

import uvicorn
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server import Server as GranianServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def make_app(directory: str) -> Starlette:
    async def sink(request: Request) -> Response:
        name = request.path_params["name"]
        if not _NAME.fullmatch(name) or name.startswith("."):
            return Response(status_code=400)
        mode = "wb" if request.headers.get("upload-offset", "0") == "0" else "ab"
        with open(os.path.join(directory, name), mode) as f:  # noqa: ASYNC230 - that is the point
            async for chunk in request.stream():
                f.write(chunk)
        return Response(status_code=204)

    async def offset(request: Request) -> Response:
        name = request.path_params["name"]
        if not _NAME.fullmatch(name) or name.startswith("."):
            return Response(status_code=400)
        try:
            size = os.stat(os.path.join(directory, name)).st_size
        except FileNotFoundError:
            return Response(status_code=404)
        return Response(status_code=200, headers={"Upload-Offset": str(size)})

    return Starlette(
        routes=[
            Route("/sink/{name}", sink, methods=["POST"]),
            Route("/sink/{name}", offset, methods=["HEAD"]),
        ]
    )


def on_uvicorn(host: str, port: int, directory: str) -> None:
    uvicorn.run(
        make_app(directory),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


class _Loader:
    """Builds the app in granian's worker process (pickled to it, as tusserver's WorkerApp)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self) -> Starlette:
        return make_app(self.directory)


def on_granian(host: str, port: int, directory: str) -> None:
    server = GranianServer(
        "bare_sink",
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        http=HTTPModes.http1,
        websockets=False,
        log_level=LogLevels.warning,
    )
    server.serve(target_loader=_Loader(directory), wrap_loader=False)


SERVERS: dict[str, Callable[[str, int, str], None]] = {
    "uvicorn": on_uvicorn,
    "granian": on_granian,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True, help="folder the bodies are written to")
    parser.add_argument("--server", choices=sorted(SERVERS), default="uvicorn")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    SERVERS[args.server](args.host, args.port, args.dir)


if __name__ == "__main__":
    main()
