"""Optional native accelerators (``src/ckptguard/_native/*.c``).

Every C module here only *proves* a fast case (the pure-Python path stays the reference
and the explainer), so a build that fails, a machine without a compiler, or
``CKPTGUARD_NO_NATIVE_BUILD=1`` yields a correct, slower package: the failure is a warning,
never an install error. At run time ``CKPTGUARD_PURE=1`` ignores built modules.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = Path("src") / "ckptguard" / "_native"


class OptionalBuildExt(build_ext):
    """Build what compiles; warn (never fail) for what does not."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - no compiler at all: pure-Python package
            print(f"ckptguard: native accelerators not built ({e}); the pure-Python "
                  "path is used", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - one module failed: its fallback is used
            print(f"ckptguard: native module {ext.name} not built ({e}); the "
                  "pure-Python path is used", file=sys.stderr)


def extensions() -> list[Extension]:
    if os.environ.get("CKPTGUARD_NO_NATIVE_BUILD") or sys.implementation.name != "cpython":
        return []
    flags = ["-O2", "-std=c11", "-Wall", "-Wextra", "-fno-strict-aliasing"]
    extra = os.environ.get("CKPTGUARD_NATIVE_CFLAGS", "").split()  # e.g. the ASan build
    return [
        Extension(f"ckptguard._native.{src.stem}", [str(src)],
                  depends=[str(h) for h in sorted(NATIVE.glob("*.h"))],  # slots.h
                  extra_compile_args=flags + extra, extra_link_args=extra)
        for src in sorted(NATIVE.glob("*.c"))
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
