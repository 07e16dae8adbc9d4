"""What every part of the workflow shares: its log line and the digest of its stored records."""

from __future__ import annotations

import time

from .. import store


def log(msg: str) -> None:
    print(f"[ekd {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_digest(obj) -> str:
    """:func:`ekd.store.digest` with str() of what JSON cannot hold (paths): the digests stored in
    existing run directories were made so."""
    return store.digest(obj, default=str)
