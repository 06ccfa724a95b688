"""Folder walks ask the engine about every file they would skip (analysis/skipped.py).

pickle.load and torch.load(weights_only=False) take any file whatever its name says. A
folder scan (``ckptguard.scan(folder)``, ``ckptguard scan FOLDER``, ``--hf-cache``,
``--skip-non-models``) used to skip a file that is not a model by name or by sniffed
content -- so a pickle that dodges the sniffer under a resume-file name
(``model_best.pth.tar``) left the folder SAFE. The generator below builds each hostile
file opcode by opcode from fixtures/generate.py's payloads over

- a DODGE: how the pickle escapes ``detect.sniff`` (a leading literal longer than the
  sniffer's 4096-byte window, in every literal opcode; another format's magic that is
  also an opcode prefix: GGUF's ``G`` is BINFLOAT and swallows 8 bytes),
- a NAME that is no model name (``.pth.tar``, ``.ckpt.old``, none, ``.txt``, ``.json``),
- a LAYOUT: plain folder, nested subfolder, Hugging Face cache (snapshot link -> blob),

and checks the folder is UNSAFE with CKG011 and the payload's CKG101 on that file, in
the library and in the CLI (exit 1), while the ordinary files beside it stay skipped and
are counted. A control runs every generated program under pickle.load and
torch.load(weights_only=False) in a subprocess: the marker file appears. A negative table
proves ordinary non-model files (including ones starting with an opcode byte) stay
skipped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from ckg_families import generate_module, load_for_real, reached
from cli_helpers import safetensors_bytes
from click.testing import CliRunner

import ckptguard
from ckptguard.analysis.folder import AUDITED_FORMATS
from ckptguard.cli import cli
from ckptguard.detect import sniff
from ckptguard.model import Format, Report, Severity, Verdict

G = generate_module()
op = G.op
PAYLOADS: dict[str, Callable[[], bytes]] = G.PAYLOADS
MARKER: str = G.MARKER
#: the global each payload imports first (what the unpickler reaches)
PAYLOAD_GLOBAL = {"global_reduce": "posix.system", "exec": "builtins.exec",
                  "stack_global": "builtins.exec", "inst": "posix.system",
                  "obj": "posix.system"}

#: longer than the sniffer's window (detect.sniff sees 4096 bytes)
LONG = 4500


def _long_literal(opcode: bytes, width: str) -> Callable[[], bytes]:
    def make() -> bytes:
        return opcode + struct.pack(width, LONG) + b"A" * LONG + op.POP
    return make


#: dodge -> the opcodes put before the payload (each leaves the stack as it found it)
DODGES: dict[str, Callable[[], bytes]] = {
    "binunicode": lambda: op.BINUNICODE("A" * LONG) + op.POP,
    "binbytes": lambda: op.BINBYTES(b"A" * LONG) + op.POP,
    "binstring": _long_literal(b"T", "<i"),
    "binunicode8": _long_literal(b"\x8d", "<Q"),
    "binbytes8": _long_literal(b"\x8e", "<Q"),
    "bytearray8": _long_literal(b"\x96", "<Q"),
    "string": lambda: op.STRING("A" * LONG) + op.POP,
    "unicode": lambda: op.UNICODE("A" * LONG) + op.POP,
    # a protocol-0 INT line past the window (under CPython's 4300-digit int limit)
    "int_line": lambda: b"I" + b"1" * 4200 + b"\n" + op.POP,
    "mark_binunicode": lambda: op.MARK + op.BINUNICODE("A" * LONG) + op.POP_MARK,
    # GGUF magic + version 3: 'G' is BINFLOAT, which takes "GUF", the version and one more
    # byte (here NONE's) as its 8-byte float
    "gguf_magic": lambda: b"GGUF" + struct.pack("<I", 3) + op.NONE + op.POP,
}
NAMES = ("model_best.pth.tar", "checkpoint.ckpt.old", "resume", "notes.txt", "weights.json")
LAYOUTS = ("plain", "nested", "hf_cache")
REV = "0123456789abcdef0123456789abcdef01234567"
SHOWN_REV = f"org/name@main ({REV[:7]})"


#: Dodges whose reading the engine judges "cannot be ruled out" (SECURITY.md, Every
#: reader): the byte-0 reading's VM stops on the long protocol-0 STRING literal before the
#: global, so the file is UNSAFE by CKG011 alone -- CRITICAL when the GLOBAL/INST names a
#: denied callable (test_uncertain_reading_names_the_denied_global).
UNCERTAIN = frozenset({"string"})


def expected_rules(dodge: str) -> set[str]:
    """CKG011 (the pickle reading) and the payload's own CKG101."""
    return {"CKG011"} if dodge in UNCERTAIN else {"CKG011", "CKG101"}


def hostile(dodge: str, payload: str) -> bytes:
    return DODGES[dodge]() + PAYLOADS[payload]()


def payload_of(dodge: str, name: str) -> str:
    """Each (dodge, name) takes the next payload, so every dodge meets all five."""
    k = list(DODGES).index(dodge) + NAMES.index(name)
    return sorted(PAYLOADS)[k % len(PAYLOADS)]


def _put(layout: str, root: Path, rel: str, data: bytes) -> Path:
    """Write ``rel`` in the layout; returns the folder a library scan is pointed at."""
    if layout == "hf_cache":
        repo = root / "hub" / "models--org--name"
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / blob).write_bytes(data)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(REV)
        link = repo / "snapshots" / REV / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (rel.count("/") + 2), "blobs", blob))
        return repo / "snapshots" / REV
    folder = root / "model"
    target = folder / ("sub/dir/" + rel if layout == "nested" else rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return folder


def build_variant(layout: str, dodge: str, root: Path) -> Path:
    """A model folder in ``layout``: a SAFE safetensors model, README.md and config.json
    (ordinary files) and one hostile file under each of NAMES (payloads rotated).
    Returns the folder a library scan is pointed at."""
    _put(layout, root, "model.safetensors", safetensors_bytes())
    _put(layout, root, "README.md", b"# toy model\n\nWeights for tests.\n")
    _put(layout, root, "config.json", b'{"model_type": "toy"}\n')
    for name in NAMES:
        folder = _put(layout, root, name, hostile(dodge, payload_of(dodge, name)))
    return folder


def _rules(r: Report) -> set[str]:
    return {f.rule_id for f in r.findings}


def _by_name(report: Report) -> dict[str, Report]:
    return {os.path.basename(c.path): c for c in report.children}


# --- the generator's own guarantees --------------------------------------------------------

@pytest.mark.parametrize(("dodge", "payload"), list(itertools.product(DODGES, sorted(PAYLOADS))))
def test_each_variant_dodges_the_sniffer_and_reaches_its_global(dodge: str, payload: str,
                                                                  tmp_path: Path) -> None:
    """Else the folder tests would pass for another reason: the file is one a folder walk
    skipped (its sniffed format is not audited by content), pickle.load reaches the
    payload's global from byte 0, and on its own the file is UNSAFE with CKG011 + CKG101."""
    data = hostile(dodge, payload)
    fmt, _ = sniff(data[:4096], len(data))
    assert fmt in (Format.UNKNOWN, Format.WRAPPED) and fmt not in AUDITED_FORMATS
    assert reached(data) == PAYLOAD_GLOBAL[payload]
    path = tmp_path / "resume"
    path.write_bytes(data)
    report = ckptguard.scan(path)
    assert report.verdict is Verdict.UNSAFE
    assert expected_rules(dodge) <= _rules(report)


@pytest.mark.parametrize(("dodge", "payload"),
                         list(itertools.product(sorted(UNCERTAIN), sorted(PAYLOADS))))
def test_uncertain_reading_names_the_denied_global(dodge: str, payload: str,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "resume"
    path.write_bytes(hostile(dodge, payload))
    (f,) = [f for f in ckptguard.scan(path).findings if f.rule_id == "CKG011"]
    if payload == "stack_global":  # STACK_GLOBAL's name is on the stack: not read here
        assert f.severity is Severity.HIGH
    else:
        assert f.severity is Severity.CRITICAL
        assert dict(f.evidence)["globals"] == PAYLOAD_GLOBAL[payload]


# --- the library: ckptguard.scan(folder) ----------------------------------------------------

@pytest.mark.parametrize(("layout", "dodge"), list(itertools.product(LAYOUTS, DODGES)))
def test_folder_scan_reports_hostile_non_model_files(layout: str, dodge: str,
                                                     tmp_path: Path) -> None:
    folder = build_variant(layout, dodge, tmp_path)
    report = ckptguard.scan(folder)
    assert report.verdict is Verdict.UNSAFE
    kids = _by_name(report)
    for name in NAMES:
        assert kids[name].verdict is Verdict.UNSAFE, name
        assert expected_rules(dodge) <= _rules(kids[name]), (name, _rules(kids[name]))
    assert kids["model.safetensors"].verdict is Verdict.SAFE
    meta = dict(report.metadata)
    assert meta["skipped_files"] == "1" and meta["skipped"] == (
        "sub/dir/README.md" if layout == "nested" else "README.md")
    assert meta["files"] == str(len(NAMES) + 2)  # + model.safetensors, config.json


# --- the CLI: ckptguard scan FOLDER / --hf-cache ------------------------------------------

def _cli_json(*args: str) -> tuple[int, dict[str, object]]:
    res = CliRunner().invoke(cli, ["scan", "--format", "json", *args], catch_exceptions=False)
    return res.exit_code, json.loads(res.stdout)


@pytest.mark.parametrize(("layout", "dodge"), list(itertools.product(LAYOUTS, DODGES)))
def test_cli_scan_reports_hostile_non_model_files(layout: str, dodge: str,
                                                  tmp_path: Path) -> None:
    folder = build_variant(layout, dodge, tmp_path)
    args = ["--hf-cache", str(tmp_path / "hub")] if layout == "hf_cache" else [str(folder)]
    code, doc = _cli_json(*args)
    assert code == 1
    reports = {str(r["path"]): r for r in doc["reports"]}
    for name in NAMES:
        if layout == "hf_cache":
            shown = f"{SHOWN_REV}/{name}"
        else:
            shown = str(folder / ("sub/dir/" + name if layout == "nested" else name))
        r = reports[shown]
        assert r["verdict"] == "UNSAFE", shown
        rules = {f["rule_id"] for f in r["findings"]}
        assert expected_rules(dodge) <= rules, (shown, rules)
    assert sum(r["verdict"] == "SAFE" for r in reports.values()) == 1  # model.safetensors
    assert doc["summary"]["skipped"] == 2  # README.md, config.json


@pytest.mark.parametrize("dodge", list(DODGES))
def test_skip_non_models_keeps_named_hostile_files(dodge: str, tmp_path: Path) -> None:
    """The pre-commit hook's filter: a hostile file named on the command line is scanned."""
    name = NAMES[list(DODGES).index(dodge) % len(NAMES)]
    evil = tmp_path / name
    evil.write_bytes(hostile(dodge, payload_of(dodge, name)))
    readme = tmp_path / "README.md"
    readme.write_bytes(b"# notes\n")
    code, doc = _cli_json("--skip-non-models", str(evil), str(readme))
    assert code == 1
    (r,) = doc["reports"]
    assert r["path"] == str(evil) and r["verdict"] == "UNSAFE"
    assert expected_rules(dodge) <= {f["rule_id"] for f in r["findings"]}
    assert doc["summary"]["skipped"] == 1


def test_text_followed_by_a_zip_is_reported(tmp_path: Path) -> None:
    """A zip reader that looks from the end (zipfile, torch.jit.load's miniz) opens a text
    file that ends in a torch archive: the folder reports it (CKG005 + the payload)."""
    import io
    import zipfile

    data = G.build_zip(G.torch_entries(G.raw(G.exec_code()), seed="notes"),
                       prefix=b"# notes\n\nSee below.\n")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # control: the archive is there
        assert reached(zf.read("archive/data.pkl")) == "builtins.exec"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(data)
    (folder / "model.safetensors").write_bytes(safetensors_bytes())
    report = ckptguard.scan(folder)
    assert report.verdict is Verdict.UNSAFE
    assert {"CKG005", "CKG101"} <= _rules(_by_name(report)["notes.txt"])
    code, doc = _cli_json(str(folder))
    assert code == 1 and doc["summary"]["skipped"] == 0


# --- ordinary files stay skipped --------------------------------------------------------------

#: (name, bytes): no loader runs any of them. Several start with an opcode byte (so the
#: engine is asked and must clear them): 'M' BININT2, 'i' INST, 'G' BINFLOAT, 'C'
#: SHORT_BINBYTES, '\x89' NEWFALSE, 'g' GET, 'S' STRING, 'V' UNICODE, '(' MARK. (Text
#: starting with a lowercase 'c' is GLOBAL: the unpickler imports the module its first
#: line names, so the engine judges it, and it is not in this table.)
ORDINARY: tuple[tuple[str, bytes], ...] = (
    ("README.md", b"# toy\n\nWeights for tests.\n"),
    ("card.md", b"---\nlicense: mit\n---\n# toy\n"),
    ("LICENSE", b"MIT License\n\nCopyright (c) 2024 Someone\n\nPermission is granted.\n"),
    ("NOTICE", b"Copyright 2024 The Authors. All rights reserved.\n"),
    ("modules.json", b'[{"idx": 0, "name": "0", "type": "Transformer"}]\n'),
    ("run_model", b"import torch\nimport os\n\nprint(torch.__version__)\n"),
    ("notes.txt", b"if x:\n    y = 1\n"),
    ("install.txt", b"install:\n  pip install toy\n"),
    ("latest", b"global_step1000"),
    ("summary.txt", b"Some notes about the model\nline two\n"),
    ("VERSION", b"Version 2 of the weights\n"),
    ("aside.txt", b"(see the model card)\n"),
    ("vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n"),
    ("merges.txt", b"#version: 0.2\nt h\n"),
    (".gitattributes", b"*.bin filter=lfs diff=lfs merge=lfs -text\n"),
    ("tokenizer.model", b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02"),
    ("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10"
                 b"\x08\x06\x00\x00\x00"),
    ("anim.gif", b"GIF89a\x10\x00\x10\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!"),
    ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"),
    ("empty.txt", b""),
)


@pytest.mark.parametrize(("name", "data"), ORDINARY, ids=[n for n, _ in ORDINARY])
def test_ordinary_files_stay_skipped(name: str, data: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / name).write_bytes(data)
    (folder / "model.safetensors").write_bytes(safetensors_bytes())
    report = ckptguard.scan(folder)
    assert report.verdict is Verdict.SAFE
    assert [os.path.basename(c.path) for c in report.children] == ["model.safetensors"]
    assert dict(report.metadata)["skipped_files"] == "1"
    code, doc = _cli_json(str(folder))
    assert code == 0
    assert [os.path.basename(str(r["path"])) for r in doc["reports"]] == [
        "model.safetensors"]
    assert doc["summary"]["skipped"] == 1


# --- control: every generated program runs under the loaders that take any file ----------



@pytest.mark.slow
def test_every_variant_fires_under_pickle_and_torch_load(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    jobs = []
    for i, (dodge, payload) in enumerate(itertools.product(DODGES, sorted(PAYLOADS))):
        name = NAMES[i % len(NAMES)]
        for loader in ("pickle", "torch"):
            d = tmp_path / f"{dodge}-{payload}-{loader}"
            d.mkdir()
            (d / name).write_bytes(hostile(dodge, payload))
            jobs.append((str(d / name), loader))
    got = load_for_real(jobs, MARKER)
    assert len(got) == len(jobs) == len(DODGES) * len(PAYLOADS) * 2
    for path, _ in jobs:
        fired, err = got[path]
        assert fired, (path, err)
