"""The commit of a checkout and whether it has local edits: provenance of every result.

Standard library only (the RunPod runner reads it without importing torch). A pod gets the
tree without ``.git``; the run that shipped it passes its commit as ``OUTLIERS_GIT_SHA``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_state(root: Path) -> dict | None:
    """{"sha", "dirty"} of the checkout at ``root`` (None outside a checkout)."""
    root = Path(root)
    if not (root / ".git").exists():
        shipped = os.environ.get("OUTLIERS_GIT_SHA")
        if shipped:
            return {
                "sha": shipped,
                "dirty": os.environ.get("OUTLIERS_GIT_DIRTY") == "1",
                "shipped": True,
            }
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(dirty)}
