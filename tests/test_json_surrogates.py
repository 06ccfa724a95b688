"""Lone surrogates in JSON output (review round 8). A pickle's UTF-8 is decoded with
``surrogatepass``, so a real ``torch.save({'\\ud800weight': t})`` checkpoint (SAFE: torch
loads it) has a tensor name with a lone surrogate, and a file name's undecodable byte is
one too (``surrogateescape``). ``json.dumps`` wrote them as lone ``\\udXXX`` escapes, which
strict parsers (jq, serde_json) refuse. Every JSON document now spells them as text; the
surrogate pairs of real astral characters stay as they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ckptguard.report.jsonreport import lone_surrogates_as_text

torch = pytest.importorskip("torch")


def _strings(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for k, x in v.items() for s in (*_strings(k), *_strings(x))]
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return []


def _strict(text: str) -> Any:
    """json.loads, then refuse what a strict parser refuses: a lone surrogate."""
    doc = json.loads(text)
    for s in _strings(doc):
        s.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
    return doc


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    p = tmp_path / "lone.pt"
    torch.save({"\ud800weight": torch.ones(2), "emoji\U0001f600": torch.zeros(1)}, p)
    assert set(torch.load(p, weights_only=True)) == {"\ud800weight", "emoji\U0001f600"}
    return p


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ckptguard", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(("cmd", "names"), [
    (["scan", "--format", "json"], True), (["scan", "--format", "sarif"], False),
    (["inspect", "--format", "json"], True)])
def test_documents_hold_no_lone_surrogate(checkpoint: Path, cmd: list[str],
                                          names: bool) -> None:
    r = _cli(*cmd, str(checkpoint))
    assert r.returncode == 0, r.stderr
    doc = _strict(r.stdout)
    if names:  # (SARIF lists no tensor of a SAFE file)
        text = json.dumps(doc)
        assert "\\\\ud800weight" in text  # the name, spelled as text
        assert "emoji\\ud83d\\ude00" in text  # a real pair is unchanged


def test_sarif_of_a_finding_on_such_a_name(tmp_path: Path) -> None:
    """A finding whose message or location carries the name (an UNSAFE pickle global)."""
    import pickle

    p = tmp_path / "g.pkl"
    p.write_bytes(b"\x80\x02c" + "os\ud800\nsystem\n".encode("utf-8", "surrogatepass")
                  + b")R.")
    with pytest.raises((ModuleNotFoundError, UnicodeDecodeError)):  # nothing runs
        pickle.loads(p.read_bytes())
    for fmt in ("json", "sarif"):
        r = _cli("scan", "--format", fmt, str(p))
        assert r.returncode == 1, r.stderr  # UNSAFE: the name is not UTF-8 (CKG202)
        doc = _strict(r.stdout)
        assert "CKG202" in json.dumps(doc)


def test_json_lines_hold_no_lone_surrogate(tmp_path: Path, checkpoint: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text(f"{checkpoint}\n")
    r = _cli("scan", "--from-file", str(lst))
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        _strict(line)


@pytest.mark.parametrize(("text", "expected"), [
    ('"\\ud800w"', '"\\\\ud800w"'),                # a lone high surrogate
    ('"a\\udcffb"', '"a\\\\udcffb"'),              # a lone low one (undecodable byte)
    ('"\\ud83d\\ude00"', '"\\ud83d\\ude00"'),      # a pair: unchanged
    ('"\\\\ud800"', '"\\\\ud800"'),                # already text: unchanged
    ('"\\\\\\ud800"', '"\\\\\\\\ud800"'),          # an escaped backslash, then a lone one
    ('"\\ude00\\ud83d"', '"\\\\ude00\\\\ud83d"'),  # reversed: two lone ones
    ('"plain"', '"plain"'),
])
def test_the_rewrite_table(text: str, expected: str) -> None:
    out = lone_surrogates_as_text(text)
    assert out == expected
    _strict(out)
