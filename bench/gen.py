#!/usr/bin/env python3

"""Deterministic benchmark checkpoints (fixed seeds; never committed).

Run under a Python with torch + safetensors (run.py uses bench/.venvs/torch):

    python bench/gen.py --out bench/out/ckpts [--big-gb 4] [--series 1000,2500,...]

Writes, each as torch zip (``.bin``) and as ``.safetensors``:
  small   ~50 MB, 100 fp32 tensors (seeded random)
  big     ~BIG_GB GB, 300 LLM-like bf16 tensors (zeros with a cheap per-tensor pattern)
  s<N>    N tiny tensors (the scaling series; s50000 is "many": a multi-MB data.pkl)
  size<G>g the big layout (300 bf16 tensors) at G GB: with big, the file-size series
  legacy  the small checkpoint in torch's legacy (non-zip) format (.bin only)
A file already present with the size recorded in manifest.json is not rewritten.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

SERIES = (1000, 2500, 5000, 10000, 20000, 50000)
# the same 300-tensor LLM layout at smaller sizes: with big, the file-size series
SIZES = (0.05, 0.5)


def small_sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    sd = {}
    # 100 tensors, 12.5M fp32 values = 50 MB
    for i in range(25):
        for kind, shape in (
            ("q", (256, 256)),
            ("k", (256, 256)),
            ("mlp_up", (256, 640)),
            ("mlp_down", (640, 256)),
        ):
            n = f"encoder.layer.{i}.{kind}.weight"
            sd[n] = torch.randn(*shape, generator=g)
    total = sum(t.numel() for t in sd.values())
    # pad the last tensor so the file is ~50 MB
    sd["encoder.layer.24.mlp_down.weight"] = torch.randn(
        640 + (12_500_000 - total) // 256, 256, generator=g
    )
    return sd


def big_sd(gb: float) -> dict[str, torch.Tensor]:
    # 33 decoder layers x 9 tensors + embed + final norm + lm_head = 300 tensors, bf16.
    layers, vocab = 33, 32000
    target = gb * 1e9 / 2  # elements
    # 4h^2 (attn) + 3*h*i (mlp, i = 8/3 h) = 12 h^2 per layer; + 2*vocab*h
    a, b = layers * 12.0, 2.0 * vocab
    h = int((-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)) // 64 * 64
    i = (8 * h // 3) // 64 * 64
    sd: dict[str, torch.Tensor] = {}

    def t(*shape: int, k: int) -> torch.Tensor:
        x = torch.zeros(*shape, dtype=torch.bfloat16)
        x.view(-1)[:64] = float(k % 97) / 97.0  # cheap deterministic pattern
        return x

    k = 0
    sd["model.embed_tokens.weight"] = t(vocab, h, k=k)
    for L in range(layers):
        p = f"model.layers.{L}."
        for name, shape in (
            ("self_attn.q_proj.weight", (h, h)),
            ("self_attn.k_proj.weight", (h, h)),
            ("self_attn.v_proj.weight", (h, h)),
            ("self_attn.o_proj.weight", (h, h)),
            ("mlp.gate_proj.weight", (i, h)),
            ("mlp.up_proj.weight", (i, h)),
            ("mlp.down_proj.weight", (h, i)),
            ("input_layernorm.weight", (h,)),
            ("post_attention_layernorm.weight", (h,)),
        ):
            k += 1
            sd[p + name] = t(*shape, k=k)
    sd["model.norm.weight"] = t(h, k=k + 1)
    sd["lm_head.weight"] = t(vocab, h, k=k + 2)
    return sd


def many_sd(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    sd = {}
    per_layer = 10
    for j in range(n):
        L, m = divmod(j, per_layer)
        shape = (4, 4) if m % 2 == 0 else (16,)
        sd[f"blocks.{L}.sub_{m}.{'weight' if m % 2 == 0 else 'bias'}"] = torch.randn(
            *shape, generator=g
        )
    return sd


def _write(path: Path, fn, manifest: dict, force: bool) -> float:
    rec = manifest.get(path.name)
    if not force and rec and path.exists() and path.stat().st_size == rec["size"]:
        return 0.0
    t0 = time.perf_counter()
    tmp = path.with_suffix(path.suffix + ".tmp")
    fn(tmp)
    os.replace(tmp, path)
    manifest[path.name] = {"size": path.stat().st_size}
    return time.perf_counter() - t0


def generate(
    out: Path,
    big_gb: float,
    series: tuple[int, ...],
    force: bool = False,
    legacy: bool = True,
    sizes: tuple[float, ...] = SIZES,
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("_big_gb") != big_gb:
        for n in ("big.bin", "big.safetensors"):
            manifest.pop(n, None)
        manifest["_big_gb"] = big_gb
    jobs: list[tuple[str, object]] = [("small", small_sd)]
    if big_gb > 0:
        jobs.append(("big", lambda: big_sd(big_gb)))
    jobs += [(f"size{g:g}g", (lambda g=g: big_sd(g))) for g in sizes]
    jobs += [(f"s{n}", (lambda n=n: many_sd(n))) for n in series]
    spent = {}
    for name, mk in jobs:
        pb, ps = out / f"{name}.bin", out / f"{name}.safetensors"
        need = [
            p
            for p in (pb, ps)
            if not (
                manifest.get(p.name) and p.exists() and p.stat().st_size == manifest[p.name]["size"]
            )
            or force
        ]
        if name == "small" and legacy:
            pl = out / "legacy.bin"
            if (
                not (
                    manifest.get(pl.name)
                    and pl.exists()
                    and pl.stat().st_size == manifest[pl.name]["size"]
                )
                or force
            ):
                need.append(pl)
        if not need:
            continue
        t0 = time.perf_counter()
        sd = mk()  # type: ignore[operator]
        for p in need:
            if p.name == "legacy.bin":
                _write(
                    p,
                    lambda f, sd=sd: torch.save(sd, f, _use_new_zipfile_serialization=False),
                    manifest,
                    True,
                )
            elif p.suffix == ".bin":
                _write(p, lambda f, sd=sd: torch.save(sd, f), manifest, True)
            else:
                _write(
                    p,
                    lambda f, sd=sd: save_file(sd, str(f), metadata={"format": "pt"}),
                    manifest,
                    True,
                )
        manifest[f"_{name}_tensors"] = len(sd)
        spent[name] = round(time.perf_counter() - t0, 1)
        del sd
        mpath.write_text(json.dumps(manifest, indent=1))
    mpath.write_text(json.dumps(manifest, indent=1))
    return {"generated": spent, "manifest": manifest}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "ckpts"))
    ap.add_argument("--big-gb", type=float, default=4.0)
    ap.add_argument("--series", default=",".join(map(str, SERIES)))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    series = tuple(int(x) for x in a.series.split(",") if x)
    sizes = tuple(float(x) for x in a.sizes.split(",") if x)
    r = generate(Path(a.out), a.big_gb, series, a.force, sizes=sizes)
    print(json.dumps(r["generated"]))


if __name__ == "__main__":
    main()
