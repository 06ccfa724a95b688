"""Errors ckptguard raises. Hostile *content* never raises from ``scan()``: it becomes a
finding. These errors are for misuse (a missing path, a bad policy) and for refusing to
load what was not proven safe."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Report


class CkptGuardError(Exception):
    """Base class of every error ckptguard raises on purpose."""


class ScanInputError(CkptGuardError, OSError):
    """The path to scan cannot be used at all (missing, permission denied, ...)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class PolicyError(CkptGuardError, ValueError):
    """A policy (file or object) is invalid, e.g. it tries to allow a CRITICAL primitive."""

    def __init__(self, message: str, *, source: str | None = None,
                 entry: str | None = None) -> None:
        self.source = source
        self.entry = entry
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{message}")


class UnsafeCheckpointError(CkptGuardError):
    """Raised by the loaders when a checkpoint's verdict is not SAFE. Carries the report."""

    def __init__(self, report: Report, message: str | None = None) -> None:
        self.report = report
        super().__init__(message or _describe(report))


class TensorInvariantError(UnsafeCheckpointError):
    """A tensor the loader rebuilt breaks an invariant torch does not check (sparse indices
    out of bounds, bad quantization parameters, a nested tensor outside its buffer). The
    report carries the finding (CKG420-CKG423) and verdict UNSAFE; nothing was handed out."""


class IncompleteScanError(UnsafeCheckpointError):
    """The audit could not decide (verdict INCOMPLETE); the file is not loaded."""


class FileChangedError(CkptGuardError):
    """The file changed between the audit and the load (same-bytes check failed)."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(
            f"{path}: the file changed between audit and load ({what}); nothing was loaded. "
            "Re-run the load: it audits the new content."
        )


class LoaderError(CkptGuardError, RuntimeError):
    """The audited file cannot be loaded as asked (inconsistent records, bad arguments)."""


class UnauditedLoadError(LoaderError):
    """torch's internal loader was reached without an audit while the torch.load gate is
    active (a direct call to ``torch.serialization._load``), or the gate cannot be enabled
    so that it covers every caller. Nothing was unpickled."""


class UnsupportedFormatError(LoaderError):
    """The file is SAFE but ckptguard has no loader for its format (e.g. a raw pickle)."""

    def __init__(self, report: Report, message: str | None = None) -> None:
        self.report = report
        super().__init__(
            message
            or f"{report.path}: {report.format.value} files cannot be loaded by ckptguard "
            "(loadable: torch zip, legacy torch, safetensors, sharded index json)"
        )


class LoaderUnavailableError(CkptGuardError, ImportError):
    """Loading needs an optional dependency that is missing (``pip install 'ckptguard[torch]'``)."""


def _describe(report: Report) -> str:
    from .model import Effect, Severity, Verdict
    from .policy.profiles import profiles_covering

    head = f"{report.path}: verdict {report.verdict.value}"
    lines = [head + (" (not loaded)" if report.verdict is not Verdict.SAFE else "")]
    for f in report.top_findings(3):
        lines.append(f"  [{f.rule_id} {f.severity.name}] {f.message} ({f.location})")
    for p in report.problems[:2]:
        lines.append(f"  [problem] {p.message} ({p.location})")
    if report.verdict is not Verdict.UNSAFE:
        return "\n".join(lines)
    blocking = [f for f in report.all_findings() if f.effect is Effect.BLOCKS]
    worst = max((f.severity for f in blocking), default=Severity.INFO)
    if worst is Severity.CRITICAL:
        lines.append("  It reaches a code-execution primitive: do not load it; no policy "
                     "can allow that.")
        return "\n".join(lines)
    if worst is Severity.HIGH:
        lines.append("  It holds content ckptguard cannot show to be harmless (HIGH): do not "
                     "load it unless you made it yourself.")
        return "\n".join(lines)
    # Only MEDIUM blockers: advice that fits, and only when a policy can really allow them.
    if not all(f.rule_id in _ALLOWABLE_RULES for f in blocking):
        return "\n".join(lines)
    benign = sorted({g for f in blocking if f.rule_id == "CKG102"
                     and (g := f.evidence_dict.get("global"))})
    if not benign:
        return "\n".join(lines)
    covering = profiles_covering(benign)
    if covering:
        name = covering[0].value
        lines.append(
            f"  These are reviewed benign types that the '{name}' profile allows. If you "
            f"trust this file, choose it on purpose: guard_torch_load(profiles=[\"{name}\"]), "
            f"safe_load(..., profiles=[\"{name}\"]) or `ckptguard scan --profile {name}`.")
    entries = ", ".join(f'{{ global = "{g}", reason = "..." }}' for g in benign[:5])
    lines.append(
        "  " + ("Or allow" if covering else "If you trust this file, allow") + " these "
        "reviewed benign types on purpose (with a reason) in a --policy file:\n"
        f"    allow = [{entries}]\n"
        "  or in Python: Policy().allow(module, name, reason=...).")
    if report.tensors and not covering:
        lines.append("  With that policy, `ckptguard convert --policy FILE SRC DST.safetensors` "
                     "writes a weights-only copy that needs none.")
    return "\n".join(lines)


#: MEDIUM rules a policy entry for a BENIGN global makes go away.
_ALLOWABLE_RULES = frozenset({"CKG102", "CKG111"})


__all__ = [
    "CkptGuardError",
    "FileChangedError",
    "IncompleteScanError",
    "LoaderError",
    "LoaderUnavailableError",
    "PolicyError",
    "ScanInputError",
    "TensorInvariantError",
    "UnauditedLoadError",
    "UnsafeCheckpointError",
    "UnsupportedFormatError",
]
