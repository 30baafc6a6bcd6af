"""Comparison server for bench.py: tuspyserver's FastAPI router on uvicorn.

``create_tus_router`` mounted at ``/files`` in a FastAPI app, with its default local storage:
an upload's bytes in ``<dir>/<id>``, its state in ``<dir>/<id>.info`` (JSON), and a lock file
per upload in ``<dir>/.locks/``. uvicorn runs with the settings tusserver runs it with
(uvloop, httptools, one worker, access log off).

It runs in its own virtualenv (``bench/tuspy/.venv``, from ``requirements.txt``), which
bench.py makes, so it never shares packages with the project.

Usage: python tuspy_server.py --port 8082 --dir /some/dir [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import os

import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router


def make_app(directory: str) -> FastAPI:
    app = FastAPI()
    # A 2 GiB upload in one PATCH must not hit the router's size limit (128 GB by default).
    app.include_router(create_tus_router(prefix="files", files_dir=directory))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True, help="folder the uploads are stored in")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    uvicorn.run(
        make_app(args.dir),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
