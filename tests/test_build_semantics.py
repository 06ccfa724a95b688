"""BUILD as the loaders apply it (a second review round's findings).

- A second BUILD on one object: CPython (and torch's weights-only unpickler) apply it on top
  of the first -- a dict state updates the instance's ``__dict__`` -- while the VM kept only
  the last state. In DCP metadata a first BUILD could set ``transform_descriptors`` (a
  stream transform, whose decoded bytes torch.loads unaudited) and a second leave it out:
  SAFE. Now the states merge as they merge there, the file is CKG204, and the fast paths
  decline (they agree with the VM on every variant, natively and pure).
- BUILD with a tuple on ``torch.Tensor()``: ``Tensor.__setstate__`` runs ``set_`` and the
  load holds a tensor the audit has no record of: CKG408.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest

import ckptguard
from ckptguard.model import Verdict

torch = pytest.importorskip("torch")


def _with_data_pkl(src: Path, out: Path, data_pkl: bytes) -> Path:
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(out, "w") as zo:
        for n in z.namelist():
            zo.writestr(n, data_pkl if n.endswith("/data.pkl") else z.read(n))
    return out


def _u(s: str) -> bytes:
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


# --- a second BUILD ------------------------------------------------------------------------

#: (first state, second state) as pickle bytes of dicts: the metadata keys an OrderedDict's
#: BUILD may carry, in several splits
_SPLITS = {
    "same-key": (b"}" + _u("_metadata") + b"}s", b"}" + _u("_metadata") + b"}s"),
    "other-key-first": (b"}" + _u("version") + b"K\x01s", b"}" + _u("_metadata") + b"}s"),
    "empty-second": (b"}" + _u("_metadata") + b"}s", b"}"),
}


@pytest.mark.parametrize("pure", [False, True])
@pytest.mark.parametrize("split", sorted(_SPLITS))
def test_second_build_on_an_ordered_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         split: str, pure: bool) -> None:
    if pure:
        monkeypatch.setenv("CKPTGUARD_PURE", "1")
    first, second = _SPLITS[split]
    src = tmp_path / "src.pt"
    torch.save(OrderedDict(), src)
    prog = b"\x80\x02ccollections\nOrderedDict\n)R" + first + b"b" + second + b"b."
    got = pickle.loads(prog)  # the loaders apply both states, merged
    assert isinstance(got, OrderedDict) and hasattr(got, "_metadata")
    p = _with_data_pkl(src, tmp_path / "twice.pt", prog)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG204" in r.rule_ids(), sorted(r.rule_ids())
    assert any("BUILD applied twice" in f.message for f in r.findings)


def test_one_build_on_an_ordered_dict_stays_safe(tmp_path: Path) -> None:
    """The control: torch.save's own form, one BUILD."""
    sd = OrderedDict(w=torch.zeros(2))
    sd._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    p = tmp_path / "once.pt"
    torch.save(sd, p)
    assert ckptguard.scan(p).verdict is Verdict.SAFE


def _dcp_with_hidden_transform(folder: Path) -> bytes:
    """A DCP checkpoint whose _StorageInfo is built twice: the first BUILD sets
    ``transform_descriptors`` (a zstd stream), the second is the plain state."""
    import warnings

    import torch.distributed.checkpoint as dcp

    warnings.filterwarnings("ignore")
    dcp.save({"w": torch.arange(4.0)}, checkpoint_id=str(folder))
    raw = (folder / ".metadata").read_bytes()
    data = pickle.dumps(pickle.loads(raw), protocol=2)
    i = data.find(b"_StorageInfo")
    k = data.find(b"\x81", i)  # its NEWOBJ: BUILD our state right after it
    extra = (b"}" + _u("transform_descriptors") + b"]" + _u("stream.zstd/1") + b"asb")
    new = data[:k + 1] + extra + data[k + 1:]
    (folder / ".metadata").write_bytes(new)
    return new


def test_dcp_metadata_built_twice_shows_the_transform(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.checkpoint")
    folder = tmp_path / "ckpt"
    new = _dcp_with_hidden_transform(folder)
    # what torch reads: the merged state carries the transform
    (info,) = pickle.loads(new).storage_data.values()
    assert info.transform_descriptors == ["stream.zstd/1"]
    r = ckptguard.scan(folder)
    assert r.verdict is Verdict.UNSAFE, sorted(r.rule_ids())
    rules = r.rule_ids() | {x for c in r.children for x in c.rule_ids()}
    assert {"CKG204", "CKG805"} <= rules, sorted(rules)


# --- BUILD with set_ arguments on torch.Tensor() --------------------------------------------

_STORAGE = (b"(" + _u("storage") + b"ctorch\nFloatStorage\n" + _u("0") + _u("cpu")
            + b"K\x06tQ")


@pytest.mark.parametrize("args", [
    b"K\x00K\x06\x85K\x01\x85",          # the whole storage
    b"K\x02K\x02\x85K\x01\x85",          # a view inside it
    b"K\x00K\x02K\x03\x86K\x03K\x01\x86",  # 2 x 3
    b"K\x00K\x00\x85K\x01\x85",          # empty
])
def test_build_with_set_arguments_on_a_tensor(tmp_path: Path, args: bytes) -> None:
    src = tmp_path / "src.pt"
    torch.save({"w": torch.arange(6.0)}, src)
    prog = b"\x80\x02ctorch\nTensor\n)R(" + _STORAGE + args + b"tb."
    p = _with_data_pkl(src, tmp_path / "set.pt", prog)
    built = torch.load(p, weights_only=True)  # torch really builds it (set_)
    assert isinstance(built, torch.Tensor)
    r = ckptguard.scan(p)
    assert r.verdict is Verdict.UNSAFE and "CKG408" in r.rule_ids(), sorted(r.rule_ids())
