"""``ckptguard inspect``: the tensors and metadata the audit reconstructed, without loading.

Storage sharing: tensors whose ``(file, storage)`` are equal share memory (tied weights,
views). Sharded checkpoints list the tensors of every shard (``file`` column).
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

from rich.table import Table
from rich.text import Text

from ..model import Report, TensorInfo
from ..primitives import escape_untrusted
from .jsonreport import SCHEMA_VERSION, dumps, tool_info
from .options import FormatOptions
from .text import VERDICT_STYLE, finding_text, make_console


def all_tensors(report: Report) -> list[TensorInfo]:
    out = list(report.tensors)
    for child in report.children:
        for t in all_tensors(child):
            out.append(t if t.file is not None else
                       TensorInfo(**{**_fields(t), "file": child.path}))
    return out


def _fields(t: TensorInfo) -> dict[str, Any]:
    return {k: getattr(t, k) for k in TensorInfo.__dataclass_fields__}


def sharing_groups(tensors: list[TensorInfo]) -> dict[tuple[str | None, str], list[str]]:
    """``(file, storage)`` -> names of the tensors on it, for storages with several tensors."""
    groups: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    for t in tensors:
        if t.storage is not None:
            groups[(t.file, t.storage)].append(t.name)
    return {k: v for k, v in groups.items() if len(v) > 1}


def all_metadata(report: Report) -> list[tuple[str, str, str]]:
    out = [(report.path, k, v) for k, v in report.metadata]
    for child in report.children:
        out.extend(all_metadata(child))
    return out


def inspect_document(report: Report) -> dict[str, Any]:
    tensors = all_tensors(report)
    shared = sharing_groups(tensors)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": tool_info(),
        "path": report.path,
        "format": report.format.value,
        "verdict": report.verdict.value,
        "tensors": [t.to_dict() for t in tensors],
        "shared_storages": [{"file": f, "storage": s, "tensors": names}
                            for (f, s), names in shared.items()],
        "metadata": [{"file": p, "key": k, "value": v} for p, k, v in all_metadata(report)],
        "total_bytes": sum(t.nbytes for t in tensors),
        "report": report.to_dict(),
    }


def _size(n: int) -> str:
    return f"{n:,}"


def format_inspect_text(report: Report, options: FormatOptions) -> str:
    buf = io.StringIO()
    console = make_console(buf, options)
    tensors = all_tensors(report)
    shared = sharing_groups(tensors)
    shares: dict[str, str] = {}
    for names in shared.values():
        for n in names:
            others = [o for o in names if o != n]
            shares[n] = ", ".join(escape_untrusted(o, 60) for o in others[:3]) + (
                f" (+{len(others) - 3})" if len(others) > 3 else "")
    head = Text(escape_untrusted(report.path), style="bold")
    head.append(f"  {report.format.value}  ")
    head.append(report.verdict.value, style=VERDICT_STYLE[report.verdict])
    console.print(head)
    multi_file = any(t.file is not None for t in tensors)
    if tensors:
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("Tensor", overflow="fold")
        table.add_column("Dtype", no_wrap=True)
        table.add_column("Shape", no_wrap=True)
        table.add_column("Bytes", justify="right", no_wrap=True)
        table.add_column("Storage", overflow="fold")
        table.add_column("Shares storage with", overflow="fold")
        if multi_file:
            table.add_column("File", overflow="fold")
        for t in tensors:
            row = [Text(escape_untrusted(t.name)), Text(escape_untrusted(t.dtype, 40)),
                   Text("(" + ", ".join(str(d) for d in t.shape) + ")"),
                   Text(_size(t.nbytes)), Text(escape_untrusted(t.storage or "-", 80)),
                   Text(shares.get(t.name, ""))]
            if multi_file:
                row.append(Text(escape_untrusted(t.file or "", 80)))
            table.add_row(*row)
        console.print(table)
    else:
        console.print(Text("no tensors reconstructed", style="dim"))
    meta = all_metadata(report)
    if meta:
        console.print(Text("metadata:", style="bold"))
        for path, k, v in meta:
            prefix = f"{escape_untrusted(path, 80)}: " if path != report.path else ""
            console.print(Text(f"  {prefix}{escape_untrusted(k, 80)} = {escape_untrusted(v)}"))
    total = sum(t.nbytes for t in tensors)
    console.print(Text(f"{len(tensors)} tensors, {_size(total)} bytes, "
                       f"{len(shared)} shared storages"))
    for f in report.top_findings(5):
        line = Text("  ")
        line.append_text(finding_text(f))
        line.append(" (" + escape_untrusted(str(f.location)) + ")")
        console.print(line)
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())


def format_inspect_json(report: Report, options: FormatOptions) -> str:
    return dumps(inspect_document(report))


__all__ = ["all_tensors", "format_inspect_json", "format_inspect_text", "inspect_document",
           "sharing_groups"]
