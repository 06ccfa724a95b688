"""atheris target: the npy parser (input audited as 'x.npy').

    python fuzz/fuzz_npy.py fuzz/corpus/npy -max_total_time=60
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
    check(data, "x.npy")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
