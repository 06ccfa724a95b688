"""Where a checkpoint folder's files may live (shared by model folders, sharded indexes
and DCP folders)."""

from __future__ import annotations

import os


def allowed_roots(index_dir: str) -> list[str]:
    """The folder itself, and for a Hugging Face cache snapshot the repo's blob store
    (snapshot files are links to ``../../blobs/<hash>``)."""
    real = os.path.realpath(index_dir)
    roots = [real]
    cur = os.path.abspath(index_dir)
    while True:
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        if os.path.basename(parent) == "snapshots":
            roots.append(os.path.realpath(os.path.join(parent, "..", "blobs")))
            break
        cur = parent
    return roots


__all__ = ["allowed_roots"]
