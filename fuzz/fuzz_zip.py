"""atheris target: the zip parser (input audited as 'x.pt').

    python fuzz/fuzz_zip.py fuzz/corpus/zip -max_total_time=60
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from _common import check

    import ckptguard.analysis.engine
    import ckptguard.analysis.numpy
    import ckptguard.analysis.safetensors
    import ckptguard.analysis.vm
    import ckptguard.readers.zipfile  # noqa: F401


def TestOneInput(data: bytes) -> None:
    check(data, "x.pt")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
