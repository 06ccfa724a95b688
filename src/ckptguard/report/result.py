"""``ScanResult``: what one ``ckptguard scan`` run produced, as the formatters see it.

Pure data. The CLI builds it (reports in input order, the count of files skipped as
non-model content, notes such as directory links not followed, whether the run was
interrupted); every formatter renders the same value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..model import Format, Report, Severity, Verdict
from ..policy import AllowEntry, PolicyOrigin, ProfileChoice
from ..policy.provenance import DEFAULT_ORIGIN


@dataclass(frozen=True)
class ScanResult:
    """The outcome of scanning a set of paths. Counts are of files: an index and each of
    its shards count once each, a folder report does not count (its files do)."""

    reports: tuple[Report, ...] = ()
    skipped: int = 0
    notes: tuple[str, ...] = ()
    interrupted: bool = False
    planned: int | None = None
    policy: tuple[AllowEntry, ...] = field(default_factory=tuple)
    #: where the policy came from and which shipped profiles were chosen (and how)
    policy_origin: PolicyOrigin = DEFAULT_ORIGIN
    profiles: tuple[ProfileChoice, ...] = field(default_factory=tuple)

    def policy_source(self) -> dict[str, Any]:
        """Which policy and profiles applied and where they came from (every format)."""
        return {
            "origin": self.policy_origin.to_dict(),
            "profiles": [{"name": c.name.value, "origin": c.origin.to_dict()}
                         for c in self.profiles],
        }
    #: where relative report paths start (SARIF ``%SRCROOT%``); the CLI sets the cwd
    source_root: str | None = None
    #: the Hugging Face cache that was scanned, if any (SARIF ``HF_HUB_CACHE``)
    hf_cache: str | None = None

    def files(self) -> list[Report]:
        """Every file's report once: the reports and, under them, their children (the
        shards of an index), without folder reports (a folder is not a file)."""
        out: list[Report] = []
        stack = list(reversed(self.reports))
        while stack:
            r = stack.pop()
            if r.format is not Format.MODEL_FOLDER:
                out.append(r)
            stack.extend(reversed(r.children))
        return out

    def verdict_counts(self) -> dict[str, int]:
        counts = Counter(r.verdict for r in self.files())
        return {v.value.lower(): counts.get(v, 0) for v in Verdict}

    def severity_counts(self) -> dict[str, int]:
        counts = Counter(f.severity for r in self.reports for f in r.all_findings())
        return {s.name.lower(): counts.get(s, 0) for s in sorted(Severity, reverse=True)}

    def summary(self) -> dict[str, Any]:
        """The summary block shared by the JSON and SARIF outputs and the text summary line."""
        files = len(self.files())
        return {
            "files": files,
            **self.verdict_counts(),
            "skipped": self.skipped,
            "planned": files if self.planned is None else max(files, self.planned),
            "interrupted": self.interrupted,
            "findings": self.severity_counts(),
        }


def summary_line(result: ScanResult) -> str:
    """One line for people: ``3 files scanned: 1 SAFE, 1 UNSAFE, 1 INCOMPLETE; 2 skipped``."""
    s = result.summary()
    n = s["files"]
    if n == 0 and not result.interrupted:
        text = "no files scanned"
    else:
        text = (f"{n} file{'s' if n != 1 else ''} scanned: {s['safe']} SAFE, "
                f"{s['unsafe']} UNSAFE, {s['incomplete']} INCOMPLETE")
    if result.skipped:
        text += f"; {result.skipped} skipped (not model files)"
    if result.interrupted:
        text += f"; interrupted after {n} of {s['planned']} files"
    return text


__all__ = ["ScanResult", "summary_line"]
