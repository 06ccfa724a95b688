"""Model folders and sharded checkpoints.

``audit_folder`` walks a folder (sorted, bounded by ``Limits.max_files``, never following
directory links), audits every file that is or claims to be a checkpoint, config or index,
and every other file that a loader taking any file (pickle.load, torch.load) would run as
code (``analysis/skipped.py``; the rest is skipped), and adds the folder-level findings:
Python files shipped beside the weights (CKG705) and, through each ``*.index.json``, the
sharded-checkpoint checks (CKG701-704).

``audit_index`` audits one sharded checkpoint from its index json: the index itself, then
every shard it names (as children), then the cross-checks between them.

A folder's verdict is the worst of its own findings and its children's verdicts.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..context import AuditContext, LimitExceeded, Source
from ..detect import CODE_BEARING, INDEX_SUFFIX, extension_of, sniff
from ..model import Format, Report, TensorInfo, Verdict, combine_verdicts
from ..policy import Limits, Policy
from ..primitives import escape, open_readonly
from ..readers.jsonfile import JsonError, parse_json
from .dcp import METADATA_RE, SHARD_SUFFIX, lists_metadata
from .dcp_folder import audit_dcp
from .engine import audit_fd, audit_file, unreadable_report
from .paths import allowed_roots
from .skipped import HEAD_BYTES, may_run_code_fd, worth_reporting

#: Extensions audited whatever their content (a mismatch is the file's own finding).
MODEL_EXTENSIONS = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib",
                              ".npy", ".npz", ".safetensors"})
#: ``.json`` files are audited when their content is a JSON object (or code-bearing); a JSON
#: array such as sentence-transformers' ``modules.json`` is data and skipped. Index files
#: (``detect.INDEX_SUFFIX``) are audited whatever their content.
CODE_EXTENSIONS = frozenset({".py"})
#: Content formats audited whatever the file's name.
AUDITED_FORMATS = CODE_BEARING | frozenset({Format.SAFETENSORS, Format.NUMPY_NPY,
                                            Format.NUMPY_NPZ, Format.ZIP, Format.JSON})
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn"})
_SHARD_NAME = re.compile(r"-\d+-of-\d+\.[^./\\]+\Z")
_LIST_SHOWN = 5


@dataclass
class _Walk:
    files: list[str] = field(default_factory=list)          # relative paths to audit
    unreadable: dict[str, str] = field(default_factory=dict)  # relative path -> reason
    code: list[str] = field(default_factory=list)           # *.py
    skipped: list[str] = field(default_factory=list)
    #: skipped files a code-running reading may take (``skipped.may_run_code``): audited,
    #: and reported instead of skipped when the audit is worth reporting
    may_run: list[str] = field(default_factory=list)
    skipped_links: list[str] = field(default_factory=list)  # links to directories
    dcp: list[str] = field(default_factory=list)  # torch.distributed.checkpoint folders
    seen: int = 0


# --- the walk ----------------------------------------------------------------------------

def _walk(ctx: AuditContext, root: str) -> _Walk:
    out = _Walk()
    stack: list[str] = [""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(full_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.unreadable[rel_dir or "."] = e.strerror or str(e)
            continue
        subdirs: list[str] = []
        # a DCP checkpoint folder is one unit: its metadata and shards are audited together
        dcp = lists_metadata(entries)
        if dcp:
            out.dcp.append(rel_dir)
        for entry in entries:
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            out.seen += 1
            if out.seen > ctx.limits.max_files:
                ctx.limit_hit(LimitExceeded("max_files", ctx.limits.max_files,
                                            "files in the folder"))
                return out
            if dcp and (METADATA_RE.match(entry.name) or entry.name.endswith(SHARD_SUFFIX)):
                continue
            _classify(entry, rel, out, subdirs)
        stack.extend(reversed(subdirs))
    return out


def _classify(entry: os.DirEntry[str], rel: str, out: _Walk, subdirs: list[str]) -> None:
    ext = extension_of(entry.name)
    is_link = False
    try:
        is_link = entry.is_symlink()
        st = os.stat(entry.path) if is_link else entry.stat(follow_symlinks=False)
    except OSError as e:  # dangling link, loop, permission
        if ext in MODEL_EXTENSIONS or ext in CODE_EXTENSIONS or ext == ".json":
            out.unreadable[rel] = e.strerror or str(e)
        else:
            out.skipped.append(rel)
        return
    if stat.S_ISDIR(st.st_mode):
        if is_link:
            out.skipped_links.append(rel)
        elif entry.name in SKIPPED_DIRS:
            out.skipped.append(rel + "/")
        else:
            subdirs.append(rel)
        return
    if ext in CODE_EXTENSIONS:
        out.code.append(rel)
        return
    if ext in MODEL_EXTENSIONS or entry.name.lower().endswith(INDEX_SUFFIX):
        out.files.append(rel)
        return
    if not stat.S_ISREG(st.st_mode):
        out.skipped.append(rel)
        return
    sniffed = _sniff_file(entry.path)
    if isinstance(sniffed, str):
        out.unreadable[rel] = sniffed
        return
    fmt, may_run = sniffed
    if fmt in AUDITED_FORMATS:
        out.files.append(rel)
    else:
        out.skipped.append(rel)
        if may_run:
            out.may_run.append(rel)


def _sniff_file(path: str) -> tuple[Format, bool] | str:
    """The file's format from its first bytes and whether a code-running reading may take
    it (``skipped.may_run_code``, asked only when the format is not audited anyway), or
    the reason it cannot be read."""
    try:
        fd = open_readonly(path)
    except OSError as e:
        return e.strerror or str(e)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEAD_BYTES, 0)
        fmt = sniff(head, size)[0]
        return fmt, fmt not in AUDITED_FORMATS and may_run_code_fd(fd, size, head)
    except OSError as e:
        return e.strerror or str(e)
    finally:
        os.close(fd)


def _audit_may_run(path: str, walk: _Walk, *, policy: Policy, limits: Limits
                   ) -> dict[str, Report]:
    """Audit the skipped files a code-running reading may take; those worth reporting
    leave ``walk.skipped`` and are returned (the rest stay skipped)."""
    flagged: dict[str, Report] = {}
    for rel in walk.may_run:
        report = audit_file(os.path.join(path, rel), policy=policy, limits=limits)
        if worth_reporting(report):
            flagged[rel] = report
    if flagged:
        walk.skipped = [r for r in walk.skipped if r not in flagged]
    return flagged


# --- folders -----------------------------------------------------------------------------

def audit_folder(path: str, *, policy: Policy, limits: Limits) -> Report:
    """Audit a model folder: every checkpoint-like file, index files, remote code."""
    ctx = AuditContext(path, Source.from_bytes(b""), policy, limits)
    walk = _walk(ctx, path)
    reports = _audit_may_run(path, walk, policy=policy, limits=limits)
    if walk.dcp == [""] and not (walk.files or walk.code or walk.unreadable or reports
                                 or ctx.findings):
        return audit_dcp(path, policy=policy, limits=limits)  # the folder is one checkpoint
    for rel in walk.dcp:
        reports[rel or "."] = audit_dcp(os.path.join(path, rel) if rel else path,
                                        policy=policy, limits=limits)
    for rel, reason in walk.unreadable.items():
        reports[rel] = unreadable_report(os.path.join(path, rel), reason, limits)
    indexes = [r for r in walk.files if r.lower().endswith(INDEX_SUFFIX)]
    for rel in walk.files:
        if rel not in indexes:
            reports[rel] = audit_file(os.path.join(path, rel), policy=policy, limits=limits)
    for rel in indexes:
        reports[rel] = _index_report(os.path.join(path, rel), policy=policy, limits=limits,
                                     folder=path, folder_reports=reports)
    for rel in walk.code:
        ctx.add("CKG705", f"Python file '{escape(rel, 200)}' ships beside the weights: "
                "trust_remote_code=True would import and run it", member=rel,
                evidence={"file": escape(rel, 300)})
    if not reports and not walk.code:
        ctx.add("CKG001", "the folder holds no checkpoint, index or config file to audit",
                evidence={"skipped_files": str(len(walk.skipped))})
    children = tuple(reports[k] for k in sorted(reports))
    metadata = {
        "files": str(len(children)),
        "skipped_files": str(len(walk.skipped)),
        "code_files": str(len(walk.code)),
    }
    if walk.skipped:
        metadata["skipped"] = escape(", ".join(walk.skipped[:20]), 1000) + (
            ", ..." if len(walk.skipped) > 20 else "")
    if walk.skipped_links:
        metadata["skipped_dir_links"] = escape(", ".join(walk.skipped_links[:20]), 1000)
    return ctx.parent_report(Format.MODEL_FOLDER, children, metadata=metadata)


# --- sharded checkpoints -----------------------------------------------------------------

def audit_index(path: str, *, policy: Policy, limits: Limits) -> Report:
    """Audit a sharded checkpoint from its index json: the index, every shard it names
    (as children), and the cross-checks between them."""
    return _index_report(path, policy=policy, limits=limits, folder=None, folder_reports=None)


def _index_report(path: str, *, policy: Policy, limits: Limits, folder: str | None,
                  folder_reports: Mapping[str, Report] | None) -> Report:
    """``folder_reports`` (folder mode): shard reports already made, by path relative to
    ``folder``; the index report then has no children. Otherwise shards are audited here
    and become the index report's children."""
    try:
        fd = open_readonly(path)
    except OSError as e:
        return unreadable_report(path, e.strerror or str(e), limits)
    ctx = AuditContext(path, Source.from_bytes(b""), policy, limits)  # index-level findings
    try:
        base = audit_fd(path, fd, policy=policy, limits=limits)
        if base.format is not Format.JSON or any(
                f.rule_id in ("CKG010", "CKG901") for f in base.findings):
            weight_map = None
        else:
            weight_map = _read_weight_map(ctx, Source(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)
    if weight_map is None:
        if not any(f.rule_id in ("CKG701", "CKG901", "CKG010")
                   for f in base.findings + tuple(ctx.findings)):
            ctx.add("CKG701", "the index has no readable weight_map")
        findings = base.findings + tuple(ctx.findings)
        return replace(base, findings=findings,
                       verdict=combine_verdicts(findings, base.problems, ()))
    checker = _ShardCheck(ctx, path, weight_map, policy=policy, limits=limits, folder=folder,
                          folder_reports=folder_reports)
    checker.run()
    findings = base.findings + tuple(ctx.findings)
    children = tuple(checker.children[k] for k in sorted(checker.children))
    metadata = dict(base.metadata)
    metadata["index.shards"] = str(len(set(weight_map.values())))
    metadata["index.tensors"] = str(len(weight_map))
    return replace(
        base,
        findings=findings,
        verdict=combine_verdicts(findings, base.problems, children),
        children=children,
        tensors=tuple(checker.tensors) if folder_reports is None else (),
        metadata=tuple(sorted(metadata.items())),
    )


def _read_weight_map(ctx: AuditContext, source: Source) -> dict[str, str] | None:
    """The index's weight_map (read again through the audited descriptor); index-level
    findings go to ``ctx``. JSON-level defects were already reported by the JSON audit."""
    size = source.size
    if size > ctx.limits.max_header_bytes:
        return None
    data = source.read(0, size)
    try:
        parsed = parse_json(data, max_depth=ctx.limits.max_json_depth)
    except JsonError:
        return None
    value = parsed.value
    if not isinstance(value, dict) or "weight_map" not in value:
        ctx.add("CKG701", "the index json has no weight_map object")
        return None
    wm = value["weight_map"]
    if not isinstance(wm, dict):
        ctx.add("CKG701", f"weight_map is a {type(wm).__name__}, not an object")
        return None
    bad = sorted(k for k, v in wm.items() if not isinstance(v, str))
    if bad:
        ctx.add("CKG701", f"weight_map values that are not file names: "
                f"{escape(', '.join(bad[:_LIST_SHOWN]), 300)}",
                evidence={"tensors": escape(", ".join(bad[:50]), 1000)})
        return None
    empty = [k for k in wm if not k or not k.isprintable()]
    if empty:
        ctx.add("CKG701", "weight_map holds an empty or non-printable tensor name",
                evidence={"tensor": escape(empty[0], 200)})
    return {str(k): str(v) for k, v in wm.items()}


def _plain_name(name: str) -> bool:
    return (bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
            and name.isprintable() and not os.path.isabs(name) and ":" not in name)


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


class _ShardCheck:
    def __init__(self, ctx: AuditContext, index_path: str, weight_map: dict[str, str], *,
                 policy: Policy, limits: Limits, folder: str | None,
                 folder_reports: Mapping[str, Report] | None) -> None:
        self.ctx = ctx
        self.index_path = index_path
        self.index_dir = os.path.dirname(index_path) or "."
        self.weight_map = weight_map
        self.policy = policy
        self.limits = limits
        self.folder = folder
        self.folder_reports = folder_reports
        self.children: dict[str, Report] = {}
        self.tensors: list[TensorInfo] = []

    def _audit(self, full: str) -> Report:
        # a shard is audited as the file a loader opens for it: an index json named as a
        # shard is JSON holding none of its tensors (CKG704), never followed as an index
        # (no loader does; following it let an index naming itself recurse without end)
        return audit_file(full, policy=self.policy, limits=self.limits)

    def _shard_report(self, name: str, full: str) -> Report:
        if self.folder is not None and self.folder_reports is not None:
            rel = os.path.relpath(full, self.folder)
            found = self.folder_reports.get(rel)
            if found is not None:
                return found
            report = self._audit(full)
            self.children[name] = report
            return report
        report = self._audit(full)
        self.children[name] = report
        return report

    def run(self) -> None:
        add = self.ctx.add
        by_shard: dict[str, set[str]] = {}
        for tensor, shard in self.weight_map.items():
            by_shard.setdefault(shard, set()).add(tensor)
        roots = allowed_roots(self.index_dir)
        present: dict[str, set[str]] = {}   # shard -> tensor names it holds
        for shard in sorted(by_shard):
            shown = escape(shard, 200)
            if not _plain_name(shard):
                add("CKG702", f"weight_map names '{shown}', which is not a plain file name in "
                    "the checkpoint folder", evidence={"shard": shown})
                continue
            full = os.path.join(self.index_dir, shard)
            if not os.path.lexists(full):
                add("CKG703", f"shard '{shown}' named by the index is missing",
                    evidence={"shard": shown})
                continue
            if os.path.islink(full) and not _inside(os.path.realpath(full), roots):
                add("CKG702", f"shard '{shown}' is a link to a file outside the checkpoint "
                    "folder", evidence={"shard": shown,
                                        "target": escape(os.path.realpath(full), 300)})
                continue
            if os.path.isdir(full):
                add("CKG703", f"shard '{shown}' is a directory, not a file",
                    evidence={"shard": shown})
                continue
            report = self._shard_report(shard, full)
            if report.verdict is Verdict.INCOMPLETE or report.problems:
                continue  # its tensors are not fully known; the shard is INCOMPLETE anyway
            names = [t.name for t in report.tensors]
            present[shard] = set(names)
            if len(present[shard]) != len(names):
                # {"m.a": x, "m": {"a": y}} (or keys 1 and "1"): one dotted name for two
                # tensors; a loader that flattens the shard keeps one of them, which one
                # depends on the loader
                counts = Counter(names)
                dup = sorted(n for n, k in counts.items() if k > 1)
                self.ctx.add("CKG704", f"{len(dup)} name(s) stand for more than one tensor in "
                             f"'{escape(shard, 200)}' once its nesting is flattened: "
                             f"{self._names(dup)}",
                             evidence={"shard": escape(shard, 200),
                                       "tensors": escape(", ".join(dup[:50]), 1000)})
            self.tensors.extend(replace(t, file=shard) for t in report.tensors)
        self._compare(by_shard, present)
        self._unlisted_shards(by_shard)

    def _compare(self, by_shard: dict[str, set[str]], present: dict[str, set[str]]) -> None:
        add = self.ctx.add
        holders: dict[str, list[str]] = {}
        for shard in sorted(present):
            for name in present[shard]:
                holders.setdefault(name, []).append(shard)
        twice = sorted(n for n, s in holders.items() if len(s) > 1)
        if twice:
            add("CKG704", f"{len(twice)} tensor(s) are stored in more than one shard: "
                f"{self._names(twice)}",
                evidence={"tensors": escape(", ".join(twice[:50]), 1000)})
        for shard in sorted(present):
            want = by_shard.get(shard, set())
            have = present[shard]
            missing = sorted(want - have)
            if missing:
                add("CKG704", f"{len(missing)} tensor(s) the index places in "
                    f"'{escape(shard, 200)}' are not in that shard: {self._names(missing)}",
                    evidence={"shard": escape(shard, 200),
                              "tensors": escape(", ".join(missing[:50]), 1000)})
            unlisted = sorted(n for n in have - want if n not in self.weight_map)
            if unlisted:
                add("CKG704", f"{len(unlisted)} tensor(s) in '{escape(shard, 200)}' are not "
                    f"in the index: {self._names(unlisted)}",
                    evidence={"shard": escape(shard, 200),
                              "tensors": escape(", ".join(unlisted[:50]), 1000)})
            moved = sorted(n for n in have - want if n in self.weight_map)
            if moved:
                add("CKG704", f"{len(moved)} tensor(s) in '{escape(shard, 200)}' are mapped to "
                    f"another shard by the index: {self._names(moved)}",
                    evidence={"shard": escape(shard, 200),
                              "tensors": escape(", ".join(moved[:50]), 1000)})

    def _unlisted_shards(self, by_shard: dict[str, set[str]]) -> None:
        exts = {extension_of(s) for s in by_shard if _plain_name(s)}
        try:
            names = sorted(os.listdir(self.index_dir))
        except OSError:
            return
        for name in names:
            if (name not in by_shard and extension_of(name) in exts
                    and _SHARD_NAME.search(name)):
                self.ctx.add("CKG704", f"shard-like file '{escape(name, 200)}' sits beside the "
                             "index but is not in it", evidence={"file": escape(name, 200)})

    @staticmethod
    def _names(names: list[str]) -> str:
        shown = ", ".join(escape(n, 80) for n in names[:_LIST_SHOWN])
        return shown + (", ..." if len(names) > _LIST_SHOWN else "")


__all__ = ["audit_folder", "audit_index"]
