"""Small deterministic inputs for the CLI tests, built byte by byte (no torch needed)."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]] | None = None,
                      metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, JSON header, data."""
    tensors = tensors if tensors is not None else {
        "w": ("F32", [2], struct.pack("<2f", 1.0, 2.0))}
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


class _Marker:
    """Pickles as a call of posix.system on an inert string (never unpickled here)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("true",))


def evil_pickle() -> bytes:
    return pickle.dumps({"a": _Marker()}, protocol=4)


def namespace_pickle() -> bytes:
    import argparse

    return pickle.dumps({"args": argparse.Namespace(lr=1)}, protocol=2)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def model_folder(root: Path) -> Path:
    """safe.safetensors, empty.bin, notes.txt (skipped: not a model), sub/evil.pkl."""
    write(root / "safe.safetensors", safetensors_bytes())
    write(root / "empty.bin", b"")
    write(root / "notes.txt", b"ZZZ not a model\n")
    write(root / "sub" / "evil.pkl", evil_pickle())
    return root


def hf_cache(root: Path) -> Path:
    """models--org--name with two revisions sharing one blob, and a dataset repo."""
    repo = root / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    write(repo / "blobs" / ("1" * 40), safetensors_bytes())
    write(repo / "blobs" / ("2" * 40), evil_pickle())
    write(repo / "blobs" / ("3" * 40), b'{"model_type": "x"}')
    write(repo / "blobs" / ("4" * 40 + ".incomplete"), b"\x80\x04partial")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("r2")
    for rev in ("r1", "r2"):
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        (snap / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / ("1" * 40))
        (snap / "config.json").symlink_to(Path("..") / ".." / "blobs" / ("3" * 40))
    sub = repo / "snapshots" / "r2" / "extra"
    sub.mkdir()
    (sub / "pytorch_model.bin").symlink_to(Path("..") / ".." / ".." / "blobs" / ("2" * 40))
    ds = root / "datasets--org--data"
    write(ds / "blobs" / ("5" * 40), safetensors_bytes())
    snap = ds / "snapshots" / "r9"
    snap.mkdir(parents=True)
    (snap / "data.safetensors").symlink_to(Path("..") / ".." / "blobs" / ("5" * 40))
    write(root / "version.txt", b"1")
    return root
