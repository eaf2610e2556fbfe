"""Atomic file writes: the content goes to a temporary file beside the target, which is then renamed over it, so an
existing file is never half-overwritten (an interrupted write leaves the old file, or none)."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = True):
    """Yield a hidden temporary path beside ``path``, ending in ``path``'s suffix (so writers that infer the format
    from it work) or, with ``keep_suffix=False``, in ``.tmp``; on success it replaces ``path``, on error it is
    removed."""
    p = Path(path)
    suffix = f".tmp{p.suffix}" if keep_suffix else ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent if str(p.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, default=float))
