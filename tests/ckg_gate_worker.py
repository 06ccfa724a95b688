"""Functions run in worker processes by the gate tests (importable by spawned children)."""

from __future__ import annotations


def load_in_worker(path: str) -> str:
    """``torch.load(path, weights_only=False)`` in this process: "loaded", or the error's
    class name and rule IDs."""
    import torch

    try:
        torch.load(path, weights_only=False)
    except Exception as e:
        report = getattr(e, "report", None)
        rules = sorted({f.rule_id for f in report.all_findings()}) if report is not None else []
        return f"{type(e).__name__} {' '.join(rules)}".strip()
    return "loaded"


def guarded_in_worker() -> bool:
    import ckptguard.guard

    return ckptguard.guard.is_torch_load_guarded()
