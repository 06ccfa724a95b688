"""SARIF 2.1.0 output for code-scanning tools (GitHub, Azure DevOps, ...).

* rule metadata (id, name, descriptions, help, default level, security-severity) comes from
  the rule registry (:mod:`ckptguard.rules`), every rule listed, in registry order, so
  ``ruleIndex`` values are stable;
* a result's physical location is the scanned file, as a URI that resolves: relative to
  ``%SRCROOT%`` for relative paths, to ``HF_HUB_CACHE`` for Hugging Face cache files (the
  path inside the cache, not the ``org/name@ref`` display name), ``file://`` otherwise; the
  run's ``originalUriBaseIds`` says where both bases are. Every result has a byte
  ``region`` (one byte at the finding's file offset, else the whole file); the archive
  member is a logical location (``kind: "member"``) and ``properties.archiveMember``;
* ``partialFingerprints`` identify a finding across runs (rule, file, member, offset).
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from typing import Any

from ..model import Effect, Finding, Report, Severity
from ..primitives import escape_untrusted
from ..rules import RULES, Rule
from .jsonreport import dumps, tool_info
from .options import FormatOptions
from .result import ScanResult

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/ckptguard/ckptguard"
#: the rule table (every rule ID with its severity, effect and meaning)
RULES_URI = INFORMATION_URI + "/blob/main/SECURITY.md#rules"

#: GitHub reads ``security-severity`` (0-10) to rank security results.
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.8",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}

_RULE_INDEX = {rule_id: i for i, rule_id in enumerate(RULES)}


def level_of(effect: Effect, severity: Severity) -> str:
    """SARIF level: blocking findings are errors, undecided ones warnings, notes notes."""
    if effect is Effect.BLOCKS:
        return "error"
    if effect is Effect.UNDECIDED:
        return "warning"
    return "note"


def rule_descriptor(r: Rule) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "shortDescription": {"text": r.title},
        "fullDescription": {"text": r.title},
        "help": {"text": r.advice},
        "helpUri": RULES_URI,
        "defaultConfiguration": {"level": level_of(r.effect, r.severity)},
        "properties": {
            "tags": ["security"],
            "precision": "very-high",
            "problem.severity": "error" if r.effect is Effect.BLOCKS else (
                "warning" if r.effect is Effect.UNDECIDED else "recommendation"),
            "security-severity": SECURITY_SEVERITY[r.severity],
            "severity": str(r.severity),
            "effect": r.effect.value,
        },
    }


#: ``uriBaseId`` of files in the Hugging Face cache (``originalUriBaseIds`` gives its place)
HF_CACHE_BASE = "HF_HUB_CACHE"
SRCROOT = "%SRCROOT%"
HF_FILE_KEY = "hf_cache.file"


def _quote(raw: bytes) -> str:
    return urllib.parse.quote(raw, safe="/")


def artifact_location(path: str, cache_file: str | None = None) -> dict[str, Any]:
    """A URI for ``path`` that resolves: a file in the Hugging Face cache is relative to
    ``HF_HUB_CACHE`` (its path inside the cache, ``cache_file``), a relative path is
    relative to ``%SRCROOT%`` (the folder the scan ran in), an absolute one is a ``file://``
    URI. Undecodable bytes and control characters are percent-encoded."""
    if cache_file is not None:
        return {"uri": _quote(os.fsencode(cache_file)), "uriBaseId": HF_CACHE_BASE}
    raw = os.fsencode(path)
    if os.path.isabs(path):
        return {"uri": "file://" + _quote(raw)}
    if raw.startswith(b"./"):
        raw = raw[2:]
    return {"uri": _quote(raw), "uriBaseId": SRCROOT}


def _report_location(report: Report, path: str) -> dict[str, Any]:
    meta = dict(report.metadata)
    return artifact_location(path, meta.get(HF_FILE_KEY) if path == report.path else None)


def _region(offset: int | None, report: Report) -> dict[str, Any]:
    """A byte region: one byte at the finding's offset, else the whole file (SARIF wants
    both ends; a consumer with no offset shows the artifact)."""
    if offset is not None:
        return {"byteOffset": offset, "byteLength": 1}
    size = report.identity.size if report.identity is not None else 0
    return {"byteOffset": 0, "byteLength": size}


def original_uri_bases(root: str | None, hf_cache: str | None) -> dict[str, Any]:
    """``originalUriBaseIds``: where ``%SRCROOT%`` and ``HF_HUB_CACHE`` are (absolute
    ``file://`` URIs ending in ``/``), when the CLI says."""
    out: dict[str, Any] = {}
    for name, folder in ((SRCROOT, root), (HF_CACHE_BASE, hf_cache)):
        if folder:
            uri = "file://" + _quote(os.fsencode(os.path.abspath(folder))).rstrip("/") + "/"
            out[name] = {"uri": uri}
    return out


def _fingerprint(f: Finding) -> str:
    loc = f.location
    key = "\0".join([f.rule_id, loc.path, loc.member or "", str(loc.offset)])
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _result(f: Finding, report: Report) -> dict[str, Any]:
    loc = f.location
    physical: dict[str, Any] = {"artifactLocation": _report_location(report, loc.path),
                                "region": _region(loc.offset, report)}
    location: dict[str, Any] = {"physicalLocation": physical}
    if loc.member is not None:
        location["logicalLocations"] = [{"name": loc.member, "kind": "member"}]
    props: dict[str, Any] = {
        "severity": str(f.severity),
        "effect": f.effect.value,
        "verdict": report.verdict.value,
        "format": report.format.value,
        "location": str(loc),
    }
    if loc.member is not None:
        props["archiveMember"] = loc.member
    if f.evidence:
        props["evidence"] = dict(f.evidence)
    out: dict[str, Any] = {
        "ruleId": f.rule_id,
        "level": level_of(f.effect, f.severity),
        # a message is for display (viewers print it): the location's member and path are
        # the file's own bytes, and so may be text a message quotes
        "message": {"text": escape_untrusted(f"{f.message} ({loc})", None)},
        "locations": [location],
        "partialFingerprints": {"ckptguardFinding/v1": _fingerprint(f)},
        "properties": props,
    }
    if f.rule_id in _RULE_INDEX:
        out["ruleIndex"] = _RULE_INDEX[f.rule_id]
    return out


def _flatten(reports: tuple[Report, ...]) -> list[Report]:
    out: list[Report] = []
    for r in reports:
        out.append(r)
        out.extend(_flatten(r.children))
    return out


def sarif_document(result: ScanResult) -> dict[str, Any]:
    reports = _flatten(result.reports)
    results = [_result(f, r) for r in reports for f in r.findings]
    notifications: list[dict[str, Any]] = []
    for r in reports:
        for p in r.problems:
            notifications.append({
                "level": "error",
                "message": {"text": escape_untrusted(f"{p.message} ({p.location})", None)},
                "locations": [{"physicalLocation": {
                    "artifactLocation": _report_location(r, p.location.path)}}],
            })
    for note in result.notes:
        notifications.append({"level": "note", "message": {"text": note}})
    tool = tool_info()
    invocation: dict[str, Any] = {
        "executionSuccessful": not result.interrupted,
        "properties": {"summary": result.summary()},
    }
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    run: dict[str, Any] = {
        "tool": {"driver": {
            "name": tool["name"],
            "version": tool["version"],
            "semanticVersion": tool["version"],
            "informationUri": INFORMATION_URI,
            "rules": [rule_descriptor(r) for r in RULES.values()],
        }},
        "invocations": [invocation],
        "artifacts": [{"location": _report_location(r, r.path),
                       "properties": {"verdict": r.verdict.value, "format": r.format.value}}
                      for r in reports],
        "results": results,
        "columnKind": "unicodeCodePoints",
        **({"originalUriBaseIds": bases} if (bases := original_uri_bases(
            result.source_root, result.hf_cache)) else {}),
        "properties": {
            "policy": [{"global": e.full_path, "reason": e.reason, "source": e.source}
                       for e in result.policy],
            "policySource": result.policy_source(),
        },
    }
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


def format_sarif(result: ScanResult, options: FormatOptions) -> str:
    return dumps(sarif_document(result))


__all__ = ["SARIF_VERSION", "artifact_location", "format_sarif", "level_of", "sarif_document"]
