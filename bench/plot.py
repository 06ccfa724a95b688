# ruff: noqa: B905 - bench scripts: long report strings, return codes checked by hand
"""Fits and plot for run.py; runs under the bench "tools" venv (numpy, matplotlib).

    python plot.py OUT/results.json OUT

Writes OUT/fits.json (scaling exponents: numpy.polyfit of log time on log tensor count /
log file size) and OUT/scan_scaling.png (scan time vs tensor count, every tool).
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

TOOLS = [
    "ckptguard",
    "ckptguard(console)",
    "ckptguard.scan",
    "picklescan",
    "modelscan",
    "modelaudit",
    "fickling",
    "torch.unsafe_globals",
]


def series(runs, tool, files, field):
    xs, ys, lo, hi = [], [], [], []
    for x, f in files:
        v = [
            r[field]
            for r in runs
            if r["phase"] == "scan"
            and r["tool"] == tool
            and r["file"] == f
            and r.get("ok")
            and r.get(field) is not None
        ]
        if v:
            xs.append(x)
            ys.append(statistics.median(v))
            lo.append(min(v))
            hi.append(max(v))
    return xs, ys, lo, hi


def slope(xs, ys):
    if len(xs) < 2:
        return "–"
    k, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return round(float(k), 2)


def main() -> None:
    d = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    runs, man = d["runs"], d["manifest"]
    ser_bin = [(n, f"s{n}.bin") for n in d["series"]]
    ser_st = [(n, f"s{n}.safetensors") for n in d["series"]]
    sizes = [f"size{g:g}g" for g in d["sizes"]] + ["big"]
    ser_size = [(man[f"{s}.bin"]["size"], f"{s}.bin") for s in sizes if f"{s}.bin" in man]
    fits: dict = {"tensors": {}, "tensors_st": {}, "size": {}}
    for tool in TOOLS:
        for key, files in (("tensors", ser_bin), ("tensors_st", ser_st), ("size", ser_size)):
            f = {}
            for field in ("wall", "op", "inproc"):
                xs, ys, _, _ = series(runs, tool, files, field)
                if len(xs) >= 2:
                    f[field] = slope(xs, ys)
                if key != "size" and field == "op":
                    # upper half of the series: constant per-file costs matter less there
                    hi = [(x, y) for x, y in zip(xs, ys) if x >= 5000]
                    if len(hi) >= 2:
                        f["op_ge5k"] = slope([x for x, _ in hi], [y for _, y in hi])
            if f:
                fits[key][tool] = f
    (out / "fits.json").write_text(json.dumps(fits, indent=1))

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    for ax, field, title in (
        (axes[0], "wall", "whole-process wall (incl. interpreter start)"),
        (axes[1], "op", "scan call only (in-process)"),
    ):
        for ti, tool in enumerate(TOOLS):
            if field == "op" and tool == "ckptguard(console)":
                continue
            color = plt.get_cmap("tab10")(ti)
            for files, style in ((ser_bin, "-o"), (ser_st, ":s")):
                xs, ys, lo, hi = series(runs, tool, files, field)
                if not xs:
                    continue
                fmt = ".bin" if files is ser_bin else ".safetensors"
                e = (
                    fits["tensors" if files is ser_bin else "tensors_st"]
                    .get(tool, {})
                    .get(field, "–")
                )
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[np.subtract(ys, lo), np.subtract(hi, ys)],
                    fmt=style,
                    color=color,
                    capsize=2,
                    ms=4,
                    lw=2 if tool.startswith("ckptguard") else 1,
                    label=f"{tool} {fmt} (slope {e})",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tensors in checkpoint")
        ax.set_ylabel("seconds (median, min-max bars)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    m = d["machine"]
    fig.suptitle(
        f"Scan time vs tensor count — {m.get('cpu', '?')}, {m.get('cpus')} CPUs, "
        f"load avg {d['loadavg_start']}, {d['date']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "scan_scaling.png", dpi=80)


if __name__ == "__main__":
    main()
