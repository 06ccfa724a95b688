"""atheris target: the safetensors parser (input audited as 'x.safetensors').

    python fuzz/fuzz_safetensors.py fuzz/corpus/safetensors -max_total_time=60
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
    check(data, "x.safetensors")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
