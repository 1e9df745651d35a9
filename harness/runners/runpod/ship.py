"""The working tree a pod receives: the files git tracks (with their local edits), plus the
untracked paths the user names (``--runpod-ship``); never ``.env`` or the local results. A stray
untracked file (a notebook, a dataset dump) is not shipped unless asked for: the tree goes to a
machine the user pays for and to RunPod's disks."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from harness.errors import HarnessError

MAX_BYTES = 200 * 1024 * 1024
_WALK_SKIP = {
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".benchmarks",
    "results",
    "build",
    "dist",
    ".cache",
}


def project_root() -> Path:
    """The checkout this harness runs from (the folder holding pyproject.toml)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd()


def _git_files(root: Path, *args: str) -> list[str] | None:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", *args],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [n for n in out.decode().split("\0") if n]


def tree_files(root: Path, exclude: list[Path] = (), include: tuple[str, ...] = ()) -> list[str]:
    """Relative paths of the files to ship, sorted: tracked files plus the untracked,
    not-ignored ones under the paths (or git pathspecs) in ``include``."""
    root = Path(root).resolve()
    names = _git_files(root, "--cached")
    if names is not None:
        if include:
            names += _git_files(root, "--others", "--exclude-standard", "--", *include) or []
    else:  # not a git checkout: everything but the usual build and cache folders
        names = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [
                d for d in dirnames if d not in _WALK_SKIP and not d.endswith(".egg-info")
            ]
            for f in filenames:
                if not f.endswith((".pyc", ".pyo")) and f != ".env":
                    names.append(os.path.relpath(os.path.join(dirpath, f), root))
    skip = []
    for ex in exclude:
        try:
            skip.append(Path(ex).resolve().relative_to(root).as_posix().rstrip("/") + "/")
        except ValueError:
            continue
    keep = []
    for n in sorted(set(names)):
        if n == ".env" or n.endswith("/.env") or any(n.startswith(s) for s in skip):
            continue  # never ship credentials or local results
        p = root / n
        if p.is_symlink() or p.is_file():
            keep.append(n)
    return keep


def unshipped(root: Path) -> list[str]:
    """Untracked, not-ignored files that stay here (shown so a user can add them)."""
    return _git_files(Path(root).resolve(), "--others", "--exclude-standard") or []


def tree_tarball(root: Path, exclude: list[Path] = (), include: tuple[str, ...] = ()) -> bytes:
    """A gzipped tar of ``tree_files``; refuses trees above 200 MB."""
    root = Path(root).resolve()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for n in tree_files(root, exclude, include):
            tar.add(str(root / n), arcname=n, recursive=False)
            if buf.tell() > MAX_BYTES:
                raise HarnessError(
                    f"the working tree at {root} is above {MAX_BYTES >> 20} MB compressed; "
                    "add large files to .gitignore before using --runpod."
                )
    return buf.getvalue()
