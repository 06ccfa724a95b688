"""The CLI on hostile input (review round 8): no hang on a FIFO where a small file is read
whole (an index json, a Hugging Face ref, a policy), a clear error and the documented exit
code for malformed URLs, list files, Dask addresses and limits, never an internal error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ckptguard
from ckptguard.errors import ScanInputError
from ckptguard.policy import DEFAULT_LIMITS

ROOT = Path(__file__).resolve().parents[1]
LINEAR = ROOT / "fixtures" / "benign" / "linear.pt"


def cli(*args: str, stdin: bytes | None = None, timeout: int = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckptguard", *args], input=stdin and
                          stdin.decode("latin-1"), capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=ROOT)


def _flat(reports: list[dict[str, object]]) -> list[dict[str, object]]:
    out = []
    for r in reports:
        out.append(r)
        out.extend(_flat(r.get("children", [])))  # type: ignore[arg-type]
    return out


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


@needs_fifo
def test_a_fifo_named_like_an_index_does_not_hang(tmp_path: Path) -> None:
    shutil.copy(LINEAR, tmp_path / "model.bin")
    os.mkfifo(tmp_path / "pytorch_model.bin.index.json")
    r = cli("scan", "--format", "json", str(tmp_path), timeout=60)
    assert r.returncode == 2, r.stderr  # INCOMPLETE: the FIFO (CKG010)
    rules = {f["rule_id"] for res in _flat(json.loads(r.stdout)["reports"])
             for f in res["findings"]}
    assert "CKG010" in rules, r.stdout[:2000]


@needs_fifo
def test_a_fifo_as_a_hub_cache_ref_does_not_hang(tmp_path: Path) -> None:
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "models--org--name" / "snapshots" / rev
    snap.mkdir(parents=True)
    shutil.copy(LINEAR, snap / "pytorch_model.bin")
    refs = tmp_path / "models--org--name" / "refs"
    refs.mkdir()
    os.mkfifo(refs / "main")
    r = cli("scan", "--hf-cache", str(tmp_path), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_fifo
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "too-big"])
def test_a_policy_that_is_no_small_regular_file_is_a_clear_error(tmp_path: Path,
                                                                 kind: str) -> None:
    p = tmp_path / "policy.toml"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev-zero":
        p = Path("/dev/zero")
    else:
        p.write_bytes(b"#" * (17 << 20))
    r = cli("scan", "--policy", str(p), str(LINEAR), timeout=60)
    assert r.returncode == 2 and "cannot read policy" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr


@pytest.mark.parametrize("url", ["http://[::1", "http://a:99999/x.pt", "http://a:x/x.pt",
                                 "https://[zz]/x", "http://\uff45\uff58\uff41.com/x",
                                 "http://a/" + "x" * 70_000])
def test_a_malformed_url_is_one_failed_target(url: str) -> None:
    with pytest.raises(ScanInputError, match="URL"):
        ckptguard.scan(url)
    r = cli("scan", "--format", "json", "fixtures/hostile/pip_main.pkl", url)
    assert r.returncode == 1, r.stderr  # the UNSAFE file decides, as with any failed target
    doc = json.loads(r.stdout)
    verdicts = [res["verdict"] for res in doc["reports"]]
    assert verdicts == ["UNSAFE", "INCOMPLETE"], verdicts
    assert "internal error" not in r.stderr


def test_list_file_errors_are_usage_errors(tmp_path: Path) -> None:
    r = cli("scan", "--from-file", str(tmp_path / "missing.txt"))
    assert r.returncode == 2 and "--from-file" in r.stderr, r.stderr
    lst = tmp_path / "list.txt"
    lst.write_bytes(str(LINEAR).encode() + b"\n" + str(tmp_path).encode() + b"/\xff.pt\n")
    r = cli("scan", "--from-file", str(lst))
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2  # the undecodable name does not exist: INCOMPLETE
    r = cli("scan", "--from-file", "-", stdin=b"\xff\n")
    assert "internal error" not in r.stderr and r.returncode == 2, r.stderr


@pytest.mark.parametrize("address", ["", "tcp://["])
def test_a_bad_dask_address_is_a_usage_error(tmp_path: Path, address: str) -> None:
    pytest.importorskip("dask.distributed")
    lst = tmp_path / "list.txt"
    lst.write_text(f"{LINEAR}\n")
    r = cli("scan", "--from-file", str(lst), "--dask", address)
    assert r.returncode == 2 and "--dask" in r.stderr and "internal error" not in r.stderr, \
        r.stderr


@pytest.mark.parametrize("value", ["max_seconds=nan", "max_seconds=inf", "max_seconds=1e400",
                                   "max_objects=99999999999999999999999999999",
                                   "max_objects=0", "max_seconds=-1"])
def test_limits_that_switch_a_bound_off_are_refused(value: str) -> None:
    r = cli("scan", "--limit", value, str(LINEAR))
    assert r.returncode == 2 and "--limit" in r.stderr, r.stderr


@pytest.mark.parametrize("change", [{"max_seconds": float("nan")},
                                    {"max_seconds": float("inf")},
                                    {"max_objects": 1 << 80}, {"max_objects": -1},
                                    {"max_tensors": True}])
def test_the_library_refuses_such_limits_too(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="limit"):
        DEFAULT_LIMITS.replace(**change)


def test_the_time_limit_message_names_the_limit(tmp_path: Path) -> None:
    """CKG901 for max_seconds said 'max_seconds=<the monotonic deadline>'."""
    import pickle

    p = tmp_path / "big.pkl"
    p.write_bytes(pickle.dumps(list(range(300_000)), protocol=2))
    r = ckptguard.scan(p, limits=DEFAULT_LIMITS.replace(max_seconds=1e-6))
    msgs = [f.message for f in r.findings if f.rule_id == "CKG901"]
    assert msgs and "max_seconds=1e-06 reached" in msgs[0], msgs


def test_a_malformed_url_never_prints_its_credentials() -> None:
    url = "https://alice:S3CRETPASS@127.0.0.1:99999/m.bin?token=QSECRET"
    with pytest.raises(ScanInputError) as e:
        ckptguard.scan(url)
    assert "S3CRET" not in str(e.value) and "QSECRET" not in str(e.value)
    assert "Port out of range" in str(e.value)
    r = cli("scan", "--format", "json", url)
    assert "S3CRET" not in r.stdout + r.stderr and "QSECRET" not in r.stdout + r.stderr
