"""Turn the command line's PATHs (and ``--hf-cache``) into the list of files to scan.

* Folders are walked here (not by ``scan()``) so the CLI can show per-file progress, apply
  ``--exclude`` and spread files over ``--workers``. The walk is sorted, does not follow
  directory links (each one is noted), skips VCS folders, and never fails: an unreadable
  folder becomes an entry the scan reports as unreadable.
* Inside folders, files are kept by content (``ckptguard.detect.sniff``) with the extension
  as a hint; files named on the command line are always scanned. A file that is no model
  file by either is still kept when a loader that takes any file (pickle.load, torch.load)
  would run it as code: ``analysis/skipped.py`` checks it with the engine's audit.
* Shards named by an ``*.index.json`` of the same scan are scanned with their index and
  listed once, under it (``defer_shards``).
* The same file reached under several names (hard links, symlinks, the Hugging Face cache's
  snapshot links to one blob) is scanned once and reported under each name.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..detect import DCP_METADATA_RE as METADATA_RE
from ..detect import DCP_SHARD_SUFFIX as SHARD_SUFFIX
from ..detect import EXTENSION_HINTS, extension_of, sniff
from ..detect import lists_dcp_metadata as lists_metadata
from ..model import Format
from ..policy import DEFAULT_LIMITS, DEFAULT_POLICY, Limits, Policy
from ..primitives import open_readonly, read_regular_file

VCS_DIRS = frozenset({".git", ".hg", ".svn"})
#: metadata key: a cache file's path inside the Hugging Face cache (SARIF resolves it)
CACHE_FILE = "hf_cache.file"
_HEAD = 4096


@dataclass
class Target:
    """One file to scan: ``path`` is opened; the report is shown under each of ``names``."""

    path: str
    names: list[str]
    size: int = 0
    order: list[int] = field(default_factory=list)  # discovery position of each name
    metadata: list[dict[str, str]] = field(default_factory=list)  # extra metadata per name
    unreadable: str | None = None  # a folder that could not be listed: reported, not scanned
    #: every name is a shard named by an index found in the same scan: scanned (as the
    #: index's child) with the index, and on its own only for names the index did not cover
    deferred: bool = False


@dataclass
class Discovery:
    targets: list[Target] = field(default_factory=list)
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    _by_key: dict[tuple[int, int, str], Target] = field(default_factory=dict)
    _seq: int = 0
    linked: set[str] = field(default_factory=set)  # real paths that snapshot links point to
    #: the scan's policy and limits: the audit that decides whether a file that is no
    #: model file runs code (``looks_like_model``) uses them
    policy: Policy = DEFAULT_POLICY
    limits: Limits = DEFAULT_LIMITS

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, path: str, name: str, *, metadata: dict[str, str] | None = None) -> None:
        """Add a file, merging it with an earlier name for the same file and extension (the
        extension matters to the audit, so different ones are scanned separately)."""
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino, extension_of(name))
            prior = self._by_key.get(key)
            if prior is not None:
                if name not in prior.names:
                    prior.names.append(name)
                    prior.order.append(self._next())
                    prior.metadata.append(dict(metadata or {}))
                return
            target = Target(path, [name], st.st_size, order=[self._next()],
                            metadata=[dict(metadata or {})])
            self._by_key[key] = target
        else:
            target = Target(path, [name], 0, order=[self._next()], metadata=[dict(metadata or {})])
        self.targets.append(target)

    def add_unreadable_dir(self, path: str, reason: str) -> None:
        self.targets.append(Target(path, [path], 0, order=[self._next()], unreadable=reason))

    @property
    def total_bytes(self) -> int:
        return sum(t.size for t in self.targets)


def is_excluded(rel: str, name: str, patterns: Iterable[str]) -> bool:
    """``--exclude`` globs match the path relative to the walked folder or the bare name."""
    rel = rel.replace(os.sep, "/")
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _model_extension(name: str) -> bool:
    ext = extension_of(name)
    hints = EXTENSION_HINTS.get(ext)
    return hints is not None and Format.UNKNOWN not in hints and ext != ".json"


def looks_like_model(path: str, name: str, *, policy: Policy = DEFAULT_POLICY,
                     limits: Limits = DEFAULT_LIMITS) -> bool:
    """Keep a file found in a folder? By content first: any format ckptguard audits, except
    empty files and JSON other than a sharded index; files with a model extension always.
    Anything that cannot be read or is not a regular file is kept (the scan reports it).
    A file that is none of these is kept all the same when a loader that takes any file
    would run it as code: the engine's audit of it (under ``policy`` and ``limits``) finds
    a live reading or another reason to report it (``analysis/skipped.py``)."""
    if _model_extension(name):
        return True
    try:
        fd = open_readonly(path)
    except OSError:
        return True
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return True
        head = os.pread(fd, _HEAD, 0)
        fmt, _ = sniff(head, st.st_size)
        if fmt in (Format.UNKNOWN, Format.EMPTY) or (
                fmt is Format.JSON and not name.lower().endswith(".index.json")):
            from ..analysis.skipped import runs_code_fd

            return runs_code_fd(path, fd, st.st_size, head, policy=policy,
                                limits=limits) is not None
    except Exception:  # noqa: BLE001 - fail closed: a file we cannot classify is scanned
        return True
    finally:
        os.close(fd)
    return True


def walk_folder(root: str, excludes: tuple[str, ...], found: Discovery, *,
                display_root: str | None = None, metadata: dict[str, str] | None = None,
                cache_prefix: str | None = None) -> None:
    """Walk ``root`` in sorted order; add the files that look like models to ``found``.
    ``cache_prefix``: ``root``'s path inside the Hugging Face cache (each file's metadata
    then gets ``hf_cache.file``, its path inside the cache)."""
    stack: list[tuple[Iterator[os.DirEntry[str]], str]] = []

    def enter(folder: str, rel_folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            found.add_unreadable_dir(folder, e.strerror or str(e))
            return
        if lists_metadata(entries):
            # a torch.distributed.checkpoint folder: scanned as one unit (its metadata and
            # .distcp shards together); the other files in it are walked as usual
            shown = folder if display_root is None else (
                f"{display_root}/{rel_folder}" if rel_folder else display_root)
            found.add(folder, shown, metadata=metadata)
            unit = [e for e in entries if METADATA_RE.match(e.name)
                    or e.name.endswith(SHARD_SUFFIX)]
            if metadata is not None:  # HF cache: these blobs are scanned with the unit
                found.linked.update(os.path.realpath(e.path) for e in unit)
            entries = [e for e in entries if e not in unit]
        stack.append((iter(entries), rel_folder))

    enter(root, "")
    while stack:
        entries, rel_folder = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
        if is_excluded(rel, entry.name, excludes):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
            is_link = entry.is_symlink()
        except OSError:
            is_dir, is_link = False, False
        if is_dir:
            if is_link:
                found.notes.append(f"directory link not followed: {entry.path}")
            elif entry.name not in VCS_DIRS:
                enter(entry.path, rel)  # depth-first, in name order
            continue
        name = entry.path if display_root is None else f"{display_root}/{rel}"
        real = os.path.realpath(entry.path) if is_link else entry.path
        if metadata is not None:
            found.linked.add(real)
        if looks_like_model(entry.path, entry.name, policy=found.policy,
                            limits=found.limits):
            meta = metadata
            if metadata is not None and is_link:
                meta = {**metadata, "hf_cache.blob": os.path.basename(real)}
            if meta is not None and cache_prefix is not None:
                meta = {**meta, CACHE_FILE: f"{cache_prefix}/{rel}"}
            found.add(entry.path, name, metadata=meta)
        else:
            found.skipped += 1


def default_hf_cache() -> str:
    """The Hugging Face hub cache as huggingface_hub finds it."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return os.path.expanduser(env[var])
    if env.get("HF_HOME"):
        return os.path.join(os.path.expanduser(env["HF_HOME"]), "hub")
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


_REPO_KINDS = {"models": "", "datasets": "datasets/", "spaces": "spaces/"}


def repo_display(folder_name: str) -> str | None:
    """``models--org--name`` -> ``org/name``; ``datasets--org--name`` -> ``datasets/org/name``."""
    parts = folder_name.split("--")
    if len(parts) < 2 or parts[0] not in _REPO_KINDS:
        return None
    return _REPO_KINDS[parts[0]] + "/".join(parts[1:])


SHORT_REVISION = 7
_MAX_REF_BYTES = 256


def read_refs(refs_dir: str) -> dict[str, list[str]]:
    """``refs/`` of a cached repo: revision -> the ref names pointing at it (``main``,
    ``pr/1``), sorted with ``main`` first. Unreadable or odd entries are ignored (the ref
    only labels the display name; the revision is what is scanned)."""
    out: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(refs_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                raw = read_regular_file(path, _MAX_REF_BYTES)
            except OSError:  # unreadable, a FIFO, too long: not a ref
                continue
            rev = raw.decode("ascii", "replace").strip()
            if not rev or len(raw) > _MAX_REF_BYTES or not rev.isalnum():
                continue
            ref = os.path.relpath(path, refs_dir).replace(os.sep, "/")
            out.setdefault(rev, []).append(ref)
    for names in out.values():
        names.sort(key=lambda n: (n != "main", n))
    return out


def revision_display(rev: str, refs: list[str]) -> str:
    """``main (a1b2c3d)`` for a revision a ref points at, else the short revision."""
    short = rev[:SHORT_REVISION]
    return f"{refs[0]} ({short})" if refs else short


def walk_hf_cache(cache: str, excludes: tuple[str, ...], found: Discovery) -> None:
    """Add every file of every snapshot as ``org/name@ref (short revision)/file`` (each blob
    is scanned once), then blobs no snapshot points to as ``org/name/blobs/<sha>``."""
    try:
        with os.scandir(cache) as it:
            repos = sorted((e for e in it if e.is_dir(follow_symlinks=False)),
                           key=lambda e: e.name)
    except OSError as e:
        found.add_unreadable_dir(cache, e.strerror or str(e))
        return
    for repo in repos:
        display = repo_display(repo.name)
        if display is None:
            continue
        snapshots = os.path.join(repo.path, "snapshots")
        try:
            with os.scandir(snapshots) as it:
                revisions = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            revisions = []
        except OSError as e:
            found.add_unreadable_dir(snapshots, e.strerror or str(e))
            revisions = []
        refs = read_refs(os.path.join(repo.path, "refs"))
        for rev in revisions:
            meta = {"hf_cache.repo": display, "hf_cache.revision": rev}
            if refs.get(rev):
                meta["hf_cache.refs"] = ",".join(refs[rev])
            walk_folder(os.path.join(snapshots, rev), excludes, found,
                        display_root=f"{display}@{revision_display(rev, refs.get(rev, []))}",
                        metadata=meta, cache_prefix=f"{repo.name}/snapshots/{rev}")
        _unreferenced_blobs(repo.path, display, excludes, found)


def _unreferenced_blobs(repo: str, display: str, excludes: tuple[str, ...],
                        found: Discovery) -> None:
    blobs = os.path.join(repo, "blobs")
    try:
        with os.scandir(blobs) as it:
            entries = sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return
    except OSError as e:
        found.add_unreadable_dir(blobs, e.strerror or str(e))
        return
    for entry in entries:
        if entry.name.endswith(".incomplete"):
            found.notes.append(f"partial download not scanned: {entry.path}")
            continue
        name = f"{display}/blobs/{entry.name}"
        if is_excluded(f"blobs/{entry.name}", entry.name, excludes):
            continue
        if os.path.realpath(entry.path) in found.linked:
            continue
        if looks_like_model(entry.path, entry.name, policy=found.policy,
                            limits=found.limits):
            found.add(entry.path, name, metadata={
                "hf_cache.repo": display, "hf_cache.blob": entry.name,
                CACHE_FILE: f"{os.path.basename(repo)}/blobs/{entry.name}"})
        else:
            found.skipped += 1


def discover(paths: Iterable[str], *, excludes: tuple[str, ...] = (),
             hf_cache: str | None = None, filter_files: bool = False,
             policy: Policy = DEFAULT_POLICY, limits: Limits = DEFAULT_LIMITS) -> Discovery:
    """Files named in ``paths`` are always scanned (a missing one is reported), unless
    ``filter_files``: then they are kept by content like files found in folders.
    ``policy`` and ``limits``: the scan's (``looks_like_model`` audits with them)."""
    found = Discovery(policy=policy, limits=limits)
    for path in paths:
        if os.path.isdir(path):
            walk_folder(path, excludes, found, display_root=None)
        elif filter_files and os.path.lexists(path) and not looks_like_model(
                path, os.path.basename(path), policy=policy, limits=limits):
            found.skipped += 1
        else:
            found.add(path, path)
    if hf_cache is not None:
        walk_hf_cache(hf_cache, excludes, found)
    defer_shards(found)
    return found


INDEX_SUFFIX = ".index.json"
#: an index larger than this is not read here (its shards are then scanned on their own too)
_MAX_INDEX_BYTES = 64 << 20


def index_shards(path: str) -> list[str]:
    """The shard file names an ``*.index.json`` names (plain names only); [] when it cannot
    be read or parsed here -- the scan of the index reports why."""
    from ..readers.jsonfile import JsonError, parse_json

    try:  # a FIFO or device named like an index is the scan's to report (CKG010)
        data = read_regular_file(path, _MAX_INDEX_BYTES)
        value = parse_json(data, max_depth=64).value
    except (OSError, JsonError):
        return []
    wm = value.get("weight_map") if isinstance(value, dict) else None
    if not isinstance(wm, dict):
        return []
    return sorted({v for v in wm.values() if isinstance(v, str) and v and "/" not in v
                   and "\\" not in v and v not in (".", "..")})


def shard_name(index_name: str, shard: str) -> str:
    """The name a shard is shown under: beside its index's name."""
    folder = index_name.rpartition("/")[0]
    return f"{folder}/{shard}" if folder else shard


def defer_shards(found: Discovery) -> None:
    """Mark the targets whose every name is a shard of an index in this scan: they are
    listed and counted once, as children of their index (see ``runner.run_targets``)."""
    claimed: set[str] = set()
    for t in found.targets:
        if t.unreadable is None and any(n.endswith(INDEX_SUFFIX) for n in t.names):
            shards = index_shards(t.path)
            claimed.update(shard_name(n, s) for n in t.names for s in shards)
    if not claimed:
        return
    for t in found.targets:
        if t.unreadable is None and all(n in claimed for n in t.names):
            t.deferred = True


__all__ = ["Discovery", "Target", "default_hf_cache", "defer_shards", "discover",
           "index_shards", "is_excluded", "looks_like_model", "read_refs", "repo_display",
           "revision_display", "shard_name", "walk_folder", "walk_hf_cache"]
