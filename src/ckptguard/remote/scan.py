"""Scan before you download: audit remote files through HTTP range requests.

``scan_remote("https://host/model.bin")``, ``scan_remote("hf://org/name@rev/file")`` and
``scan_remote("hf://org/name@rev")`` (every file of that revision) return the same
:class:`~ckptguard.model.Report` a local scan does; the engine is the local one, reading
through :class:`~ckptguard.remote.http.HttpSource`. A server that fails, refuses or changes
the file mid-read gives a finding (CKG910-913) and INCOMPLETE, never an exception and never
SAFE. Nothing here imports torch. Loading stays local: ``safe_load`` audits a downloaded
file again from its own bytes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from ..analysis.engine import audit_source
from ..analysis.folder import AUDITED_FORMATS, CODE_EXTENSIONS
from ..analysis.skipped import HEAD_BYTES, may_run_code, worth_reporting
from ..context import AuditContext, Source, SourceError
from ..detect import extension_of, sniff
from ..errors import ScanInputError
from ..model import Format, Location, Report, decide
from ..policy import DEFAULT_LIMITS, DEFAULT_POLICY, Limits, Policy
from ..primitives import escape_untrusted, or_default
from ..rules import make_finding
from .http import Failure, HttpSource, RemoteError, RemoteOptions, Session
from .targets import (
    HubFile,
    HubRepo,
    RemoteTarget,
    UrlTarget,
    hub_endpoint,
    hub_token,
    parse_target,
    redact_target,
)

MAX_LISTING_BYTES = 16 << 20   # a repo's file listing (JSON)
MAX_REPO_FILES = 10_000


def scan_remote(target: str, *, policy: Policy | None = None, limits: Limits | None = None,
                options: RemoteOptions | None = None, session: Session | None = None) -> Report:
    """Audit one remote target. Raises :class:`ScanInputError` only for a malformed target."""
    parsed = parse_target(target)
    policy = or_default(policy, DEFAULT_POLICY)
    limits = or_default(limits, DEFAULT_LIMITS)
    options = options or RemoteOptions(token=hub_token())
    own = session is None
    sess = session or Session(options)
    try:
        return _scan(parsed, policy, limits, sess)
    finally:
        if own:
            sess.close()


def _scan(parsed: RemoteTarget, policy: Policy, limits: Limits, sess: Session) -> Report:
    if isinstance(parsed, UrlTarget):
        return _scan_file(sess, parsed.url, parsed.display, parsed.filename, policy, limits,
                          auth=False)
    endpoint = hub_endpoint()
    if isinstance(parsed, HubFile):
        return _scan_file(sess, parsed.resolve_url(endpoint), parsed.display, parsed.filename,
                          policy, limits, auth=True)
    return _scan_repo(sess, parsed, endpoint, policy, limits)


def _error_report(display: str, err: RemoteError | SourceError, limits: Limits,
                  fmt: Format = Format.UNKNOWN) -> Report:
    ctx = AuditContext(display, Source.from_bytes(b""), Policy(), limits)
    src = err.as_source_error() if isinstance(err, RemoteError) else err
    ctx.add(src.rule_id, src.message, evidence=src.evidence)
    return _report(ctx, fmt, bytes_read=0)


def _report(ctx: AuditContext, fmt: Format, *, bytes_read: int,
            metadata: dict[str, str] | None = None, children: tuple[Report, ...] = ()) -> Report:
    return ctx.parent_report(fmt, children, metadata=metadata, bytes_read=bytes_read)


def _open(sess: Session, url: str, display: str, limits: Limits, *, auth: bool) -> HttpSource:
    """The file's source; its wall-time budget (``max_seconds``) starts now, before the
    first response is read (the audit keeps the earlier deadline)."""
    return HttpSource(sess, url, display, auth=auth,
                      stream_cap=limits.max_remote_stream_bytes,
                      deadline=time.monotonic() + limits.max_seconds)


def _scan_file(sess: Session, url: str, display: str, filename: str, policy: Policy,
               limits: Limits, *, auth: bool) -> Report:
    try:
        src = _open(sess, url, display, limits, auth=auth)
    except RemoteError as e:
        return _error_report(display, e, limits)
    report = _audit_remote(src, display, filename, policy, limits)
    assert report is not None
    return report


def _audit_remote(src: HttpSource, display: str, filename: str, policy: Policy,
                  limits: Limits, *, unless: Callable[[Report], bool] | None = None
                  ) -> Report | None:
    """The audit of ``src`` with the transfer's findings; None when ``unless`` says the
    engine's own report is not worth one (a repository's file that is no model file)."""
    report = audit_source(display, src, policy=policy, limits=limits, name=filename)
    if unless is not None and unless(report):
        return None
    extra = _transfer_metadata(src)
    findings = report.findings
    if src.validator is None and src.fetches > 1:
        findings += (make_finding("CKG913", f"{src.fetches} range requests and no ETag or "
                                  "Last-Modified from the server: the ranges cannot be proven "
                                  "to come from one version of the file", Location(display)),)
    return dataclasses.replace(
        report, findings=findings, verdict=decide(findings, report.problems),
        bytes_read=src.bytes_read,
        metadata=tuple(sorted({**dict(report.metadata), **extra}.items())))


def _transfer_metadata(src: HttpSource) -> dict[str, str]:
    meta = {"remote_size": str(src.size), "bytes_transferred": str(src.bytes_read),
            "byte_ranges": "yes" if src.ranges else "no", "requests": str(src.fetches)}
    if src.etag:
        meta["etag"] = escape_untrusted(src.etag, 200)
    return meta


def _scan_repo(sess: Session, repo: HubRepo, endpoint: str, policy: Policy,
               limits: Limits) -> Report:
    display = repo.display
    ctx = AuditContext(display, Source.from_bytes(b""), policy, limits)
    try:
        # the listing has its own max_seconds, as each file does
        raw = sess.get_bytes(repo.api_url(endpoint), display, cap=MAX_LISTING_BYTES, auth=True,
                             deadline=time.monotonic() + limits.max_seconds)
    except RemoteError as e:
        return _error_report(display, e, limits, Format.MODEL_FOLDER)
    files, commit = _parse_listing(raw)
    if files is None:
        ctx.add("CKG910", f"{display}: the hub's file listing is not the expected JSON",
                evidence={"failure": "BAD_RESPONSE", "url": display})
        return _report(ctx, Format.MODEL_FOLDER, bytes_read=len(raw))
    # pin every file to the commit the listing names, so all come from one revision
    pinned = commit or repo.revision
    code = [f for f in files if extension_of(f) in CODE_EXTENSIONS]
    for rel in code:
        ctx.add("CKG705", f"Python file '{escape_untrusted(rel, 200)}' ships beside the "
                "weights: trust_remote_code=True would import and run it", member=rel,
                evidence={"file": escape_untrusted(rel, 300)})
    candidates = [f for f in files if f not in code]
    if len(candidates) > MAX_REPO_FILES:
        # the files past the cap are not audited: never a silent SAFE for the repo
        ctx.add("CKG901", f"audit stopped: the repository lists {len(candidates)} files; "
                f"only the first {MAX_REPO_FILES} (by name) are audited",
                evidence={"limit": "max_repo_files"})
        candidates = candidates[:MAX_REPO_FILES]
    children: list[Report] = []
    skipped: list[str] = []

    def one(rel: str) -> Report | None:
        hub_file = repo.file(rel, pinned)
        shown = HubFile(repo.repo, repo.revision, rel).display
        try:
            src = _open(sess, hub_file.resolve_url(endpoint), shown, limits, auth=True)
        except RemoteError as e:
            return _error_report(shown, e, limits)
        try:  # a later range can fail too: that file's report, not the repo's crash
            head = src.read(0, HEAD_BYTES)
            fmt, _ = sniff(head, src.size)
            runs = fmt in AUDITED_FORMATS or extension_of(rel) == ".safetensors" or \
                may_run_code(src, head)
        except SourceError as e:
            return _error_report(shown, e, limits)
        if fmt not in AUDITED_FORMATS and extension_of(rel) != ".safetensors":
            # no model file, unless a loader that takes any file would run it (the local
            # folder walks' decision, analysis/skipped.py: at most one more range request)
            if not runs:
                return None
            return _audit_remote(src, shown, rel, policy, limits,
                                 unless=lambda r: not worth_reporting(r))
        return _audit_remote(src, shown, rel, policy, limits)

    for rel, rep in bounded_map(one, candidates, sess.options.concurrency):
        if rep is None:
            skipped.append(rel)
        else:
            children.append(rep)
    children.sort(key=lambda r: r.path)
    if not children and not code:
        ctx.add("CKG001", "the repository holds no checkpoint, index or config file to audit",
                evidence={"skipped_files": str(len(skipped))})
    meta = {"files": str(len(children)), "skipped_files": str(len(skipped)),
            "code_files": str(len(code)), "revision": pinned}
    total = len(raw) + sum(c.bytes_read for c in children)
    return _report(ctx, Format.MODEL_FOLDER, bytes_read=total, metadata=meta,
                   children=tuple(children))


def _parse_listing(raw: bytes) -> tuple[list[str] | None, str | None]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict) or not isinstance(doc.get("siblings"), list):
        return None, None
    files = []
    for s in doc["siblings"]:
        name = s.get("rfilename") if isinstance(s, dict) else None
        if isinstance(name, str) and name and not any(
                p in ("", ".", "..") for p in name.split("/")):
            files.append(name)
    sha = doc.get("sha")
    commit = sha if isinstance(sha, str) and len(sha) == 40 and all(
        c in "0123456789abcdef" for c in sha) else None
    return sorted(set(files)), commit


def bounded_map(fn: Callable[[str], Report | None], items: Iterable[str], concurrency: int
                 ) -> Iterator[tuple[str, Report | None]]:
    """``fn`` over ``items`` with at most ``concurrency`` calls in flight, results as they
    finish (a window of futures, never one future per item up front)."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        pending: dict[Future[Report | None], str] = {}
        for item in it:
            pending[pool.submit(fn, item)] = item
            if len(pending) >= concurrency:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                yield item, fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(fn, nxt)] = nxt


def scan_target(target: str, policy: Policy, limits: Limits, sess: Session) -> Report:
    """One remote target's report through ``sess``; a malformed target becomes a CKG910
    report (never an exception)."""
    try:
        return _scan(parse_target(target), policy, limits, sess)
    except ScanInputError as e:
        shown = redact_target(target)
        return _error_report(shown, RemoteError(Failure.BAD_TARGET, shown, e.reason), limits)


__all__ = ["bounded_map", "scan_remote", "scan_target"]
