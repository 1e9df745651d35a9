"""Files written whole or not at all, and the one JSON encoding of results and exports.

Every file the harness writes goes through ``atomic_write_bytes``: a temporary file in the same
directory, flushed to disk, then ``os.replace``d over the target, so a crash, a full disk or a
kill never leaves a truncated file under the final name. (The pod-side script
``harness/runners/runpod/podside.py`` keeps its own copy: it runs on the pod with the standard
library only.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from harness.errors import HarnessError


def fsync_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk (inside a directory that is renamed into
    place as a whole, such as a result directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary file next to ``path``, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: fsync_write(tmp, data))


def _default(obj):
    import numpy as np  # only when a numpy value is met: report exports stay numpy-free

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj, indent: int | None = 1) -> str:
    """Strict JSON (no NaN or infinity: a missing figure is ``null``), numpy scalars as numbers."""
    return json.dumps(obj, indent=indent, allow_nan=False, default=_default)


def replace_dir(tmp: Path, final: Path, attempts: int = 5) -> None:
    """Move the finished directory ``tmp`` to ``final``, replacing a previous one; another writer
    finishing the same directory in between (ENOTEMPTY / EEXIST on the rename) makes us try
    again. The previous directory is moved aside as ``.old-*`` and removed once ours is in place
    (``harness.engine.result_files.clean_stale`` removes what a killed writer left)."""
    olds: list[Path] = []  # previous results moved aside, removed once ours is in place
    for _ in range(attempts):
        try:
            if final.exists():
                old = final.parent / f".old-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
                olds.append(old)
            try:
                os.rename(tmp, final)
            except BaseException:
                # interrupted between the two renames (Ctrl-C, a signal): put the previous
                # result back now; after a SIGKILL, clean_stale does it on the next write
                if olds and not final.exists():
                    os.rename(olds.pop(), final)
                raise
            for old in olds:
                shutil.rmtree(old, ignore_errors=True)
            return
        except FileNotFoundError:
            continue  # the other writer moved final away first: look again
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise HarnessError(
        f"another process kept replacing {final} while this one wrote it; run one writer per "
        "directory at a time."
    )
