"""Upload a file to tusserver with tuspy, resuming where a previous run stopped.

    python examples/tuspy_upload.py FILE [--endpoint http://127.0.0.1:8080/files/]

The upload URL is remembered in a small JSON file next to this script's
working directory (``.tuspy-urls.json``), keyed by the file's fingerprint:
interrupt the script (Ctrl-C) and run it again, and it continues from the
offset the server reports instead of starting over.
"""

from __future__ import annotations

import argparse
import os
import sys

from tusclient import client
from tusclient.storage.filestorage import FileStorage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--endpoint", default="http://127.0.0.1:8080/files/")
    parser.add_argument("--chunk-size", type=int, default=8 * 1024 * 1024)
    parser.add_argument("--url-storage", default=".tuspy-urls.json")
    args = parser.parse_args(argv)

    tus = client.TusClient(args.endpoint)
    uploader = tus.uploader(
        args.file,
        chunk_size=args.chunk_size,
        metadata={"filename": os.path.basename(args.file)},
        store_url=True,
        url_storage=FileStorage(args.url_storage),
        retries=3,
        retry_delay=1,
    )
    size = uploader.get_file_size()
    print(f"resuming at byte {uploader.offset} of {size}" if uploader.offset else f"{size} bytes")
    while uploader.offset < size:
        uploader.upload_chunk()
        print(f"\r{uploader.offset * 100 // max(size, 1):3d}%  {uploader.offset} bytes", end="")
    print(f"\ndone: {uploader.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
