"""The report formatters on hand-built reports: golden files, schemas, escaping."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from golden_util import check_golden

from ckptguard.model import (
    Effect,
    Finding,
    Format,
    Location,
    Problem,
    Report,
    Severity,
    TensorInfo,
    Verdict,
)
from ckptguard.policy import (
    AllowEntry,
    OriginKind,
    PolicyOrigin,
    ProfileChoice,
    ProfileName,
)
from ckptguard.primitives import escape_untrusted, has_unsafe_chars
from ckptguard.report import FORMATTERS, FormatOptions, ScanResult, load_schema, render
from ckptguard.report.jsonreport import SCHEMA_VERSION
from ckptguard.report.options import TextLayout
from ckptguard.report.sarif import artifact_location, sarif_document
from ckptguard.rules import RULES, make_finding

ROOT = Path(__file__).resolve().parents[1]
DOC_SCHEMA = ROOT / "docs" / "report-schema.json"
PKG_SCHEMA = ROOT / "src" / "ckptguard" / "report" / "report-schema.json"
SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-2.1.0-subset.schema.json"
HOSTILE = "evil\x1b[31mred\x1b[0m\nline\r\u202egnp.pt"


def sarif_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def json_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads(DOC_SCHEMA.read_text(encoding="utf-8")))


def _report(path: str, verdict: Verdict, fmt: Format, findings: tuple[Finding, ...] = (),
            **kw: object) -> Report:
    return Report(path=path, format=fmt, verdict=verdict, findings=findings,
                  tool_version="0.0.0-test", **kw)  # type: ignore[arg-type]


def sample_result() -> ScanResult:
    safe = _report("models/ok.safetensors", Verdict.SAFE, Format.SAFETENSORS,
                   tensors=(TensorInfo("w", "F32", (2, 3), storage="w", nbytes=24),),
                   metadata=(("format", "pt"),))
    evil_loc = Location("models/evil.pt", "archive/data.pkl", 91)
    evil = _report("models/evil.pt", Verdict.UNSAFE, Format.TORCH_ZIP, (
        make_finding("CKG101", "STACK_GLOBAL imports posix.system: runs shell commands",
                     evil_loc, evidence={"module": "posix", "name": "system"}),
        make_finding("CKG102", "GLOBAL imports argparse.Namespace, a reviewed benign type "
                     "outside the weights-only allowlist", Location("models/evil.pt", "archive/data.pkl", 40),
                     evidence={"module": "argparse", "name": "Namespace"}),
        make_finding("CKG312", "member archive/extra is not used",
                     Location("models/evil.pt", "archive/extra", 2048)),
    ), members=("archive/data.pkl", "archive/extra"))
    empty = _report("models/empty.bin", Verdict.INCOMPLETE, Format.EMPTY,
                    (make_finding("CKG006", "the file is empty", Location("models/empty.bin")),))
    broken_loc = Location("models/broken.bin", None, 7)
    broken = _report("models/broken.bin", Verdict.INCOMPLETE, Format.PICKLE,
                     (make_finding("CKG902", "internal error while auditing", broken_loc),),
                     problems=(Problem("internal error while auditing", broken_loc),))
    hostile = _report("models/" + HOSTILE, Verdict.UNSAFE, Format.PICKLE,
                      (make_finding("CKG101", f"imports {HOSTILE}.system",
                                    Location("models/" + HOSTILE, "m\x07ember", 3)),))
    folder_child = _report("models/sharded/model-00001-of-00002.safetensors", Verdict.SAFE,
                           Format.SAFETENSORS)
    folder = _report("models/sharded", Verdict.SAFE, Format.MODEL_FOLDER,
                     children=(folder_child,))
    return ScanResult(
        reports=(safe, evil, empty, broken, hostile, folder),
        skipped=2,
        notes=("directory link not followed: models/link",),
        policy=(AllowEntry("argparse.Namespace", "hparams from our trainer",
                           PolicyOrigin(OriginKind.FILE, "policy.toml")),),
        policy_origin=PolicyOrigin(OriginKind.FILE, "policy.toml"),
        profiles=(ProfileChoice(ProfileName.HF_TRAINER, PolicyOrigin(OriginKind.FLAG, "--profile")),),
    )


def _normalise(text: str) -> str:
    from ckptguard import __version__

    return text.replace(f'"version": "{__version__}"', '"version": "<version>"').replace(
        f'"semanticVersion": "{__version__}"', '"semanticVersion": "<version>"')


def test_registry_names() -> None:
    assert set(FORMATTERS) == {"text", "json", "sarif"}
    with pytest.raises(ValueError, match="unknown report format"):
        render("xml", ScanResult())


def test_text_golden() -> None:
    out = render("text", sample_result(), FormatOptions(width=200))
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    check_golden("report.txt", out)


def test_text_verbose_golden() -> None:
    out = render("text", sample_result(), FormatOptions(width=200, verbose=True))
    assert "advice: Do not load this file." in out
    assert "hparams from our trainer" in out
    check_golden("report-verbose.txt", out)


@pytest.mark.parametrize("verbose", [False, True])
def test_text_terminal_golden_80_columns(verbose: bool) -> None:
    out = render("text", sample_result(), FormatOptions(width=80, verbose=verbose,
                                                        layout=TextLayout.TERMINAL))
    check_golden(f"report-terminal-80{'-verbose' if verbose else ''}.txt", out)
    assert max(len(ln) for ln in out.splitlines()) <= 80
    # the path is printed once: finding lines give the place inside the file
    assert out.count("models/evil.pt") == 1
    assert "at archive/data.pkl@91: STACK_GLOBAL" in out
    # a shard is listed under its folder by its own name
    assert "└ model-00001-of-00002.safetensors" in out


def test_text_lines_layout_one_line_per_file_and_finding() -> None:
    result = sample_result()
    plain = render("text", result, FormatOptions(width=40))
    verbose = render("text", result, FormatOptions(width=40, verbose=True))
    files = [r for r, _ in _walk_reports(result.reports)]
    body = plain.splitlines()[:len(files)]
    # one line per file (children included), whatever the width, with the whole path
    assert [ln.split()[0] for ln in body] == [r.verdict.value for r in files]
    for ln, r in zip(body, files):
        assert escape_untrusted(r.path, None) in ln
    # -v: one more line per finding and per problem, each holding path:member@offset
    n_findings = sum(len(r.findings) + len(r.problems) for r in files)
    assert len(verbose.splitlines()) == len(plain.splitlines()) + n_findings
    assert "  models/evil.pt:archive/data.pkl@40: CKG102 medium (blocks): " in verbose


def _walk_reports(reports: tuple[Report, ...]) -> list[tuple[Report, int]]:
    out: list[tuple[Report, int]] = []
    for r in reports:
        out.append((r, 0))
        out.extend(_walk_reports(r.children))
    return out


def test_text_rendering_is_linear_and_cheap() -> None:
    """20,000 files render in one pass: a small fraction of the ~0.1 ms each costs to scan
    (the bench measures the ratio; this only guards against a quadratic layout)."""
    import time

    safe = _report("m/ok.safetensors", Verdict.SAFE, Format.SAFETENSORS)
    small = ScanResult(reports=(safe,) * 2000)
    large = ScanResult(reports=(safe,) * 20000)
    for layout in TextLayout:
        opts = FormatOptions(width=80, layout=layout)
        # CPU time: the ratio of work, whatever else the machine (or a parallel worker) runs
        t0 = time.process_time()
        render("text", small, opts)
        t1 = time.process_time()
        out = render("text", large, opts)
        t2 = time.process_time()
        assert out.count("\n") == 20002  # a line a file, the policy line, the summary
        assert (t2 - t1) < 25 * (t1 - t0) + 0.05, layout


def test_text_colour_only_when_asked() -> None:
    plain = render("text", sample_result(), FormatOptions(width=200))
    coloured = render("text", sample_result(), FormatOptions(width=200, color=True,
                                                             layout=TextLayout.TERMINAL))
    assert "\x1b[" not in render("text", sample_result(), FormatOptions(width=200, color=True))
    assert "\x1b[" not in plain
    assert "\x1b[" in coloured
    # the hostile name's own escape sequence is still escaped in colour mode
    assert "\\x1b[31mred" in coloured
    assert "\x1b[31mred" not in coloured


def test_json_golden_and_schema() -> None:
    out = render("json", sample_result())
    doc = json.loads(out)
    json_validator().validate(doc)
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["summary"]["unsafe"] == 2 and doc["summary"]["skipped"] == 2
    assert doc["summary"]["findings"]["critical"] == 2
    assert all(c == "\n" or 0x20 <= ord(c) < 0x7F for c in out)
    check_golden("report.json", _normalise(out))


def test_json_round_trips_reports() -> None:
    doc = json.loads(render("json", sample_result()))
    again = tuple(Report.from_dict(d) for d in doc["reports"])
    assert again == sample_result().reports


def test_sarif_golden_and_schema() -> None:
    out = render("sarif", sample_result())
    doc = json.loads(out)
    sarif_validator().validate(doc)
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    for r in rules:
        assert r["name"] == RULES[r["id"]].name
        assert r["shortDescription"]["text"] == RULES[r["id"]].title
        assert r["help"]["text"] == RULES[r["id"]].advice
    res = run["results"]
    first = res[0]
    assert first["ruleId"] == "CKG101"
    assert rules[first["ruleIndex"]]["id"] == "CKG101"
    assert first["level"] == "error"
    assert first["locations"][0]["physicalLocation"]["region"]["byteOffset"] == 91
    assert first["locations"][0]["logicalLocations"][0]["name"] == "archive/data.pkl"
    assert first["properties"]["archiveMember"] == "archive/data.pkl"
    assert first["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == (
        "models/evil.pt")
    levels = {r["ruleId"]: r["level"] for r in res}
    assert levels["CKG006"] == "warning" and levels["CKG312"] == "note"
    assert all(c == "\n" or 0x20 <= ord(c) < 0x7F for c in out)
    # the child report of the folder is an artifact too
    uris = [a["location"]["uri"] for a in run["artifacts"]]
    assert "models/sharded/model-00001-of-00002.safetensors" in uris
    assert run["invocations"][0]["toolExecutionNotifications"]
    check_golden("report.sarif", _normalise(out))


def test_sarif_every_rule_level_valid() -> None:
    findings = tuple(make_finding(rid, f"message for {rid}", Location("a.bin", "m", 1))
                     for rid in RULES)
    verdict = Verdict.UNSAFE
    doc = sarif_document(ScanResult(reports=(_report("a.bin", verdict, Format.PICKLE,
                                                     findings),)))
    sarif_validator().validate(doc)
    assert len(doc["runs"][0]["results"]) == len(RULES)


def test_sarif_uris() -> None:
    assert artifact_location("a b/c.pt") == {"uri": "a%20b/c.pt", "uriBaseId": "%SRCROOT%"}
    assert artifact_location("./x.pt")["uri"] == "x.pt"
    assert artifact_location("/abs/x.pt") == {"uri": "file:///abs/x.pt"}
    bad = artifact_location("n\nl\x1b\udcff.pt")["uri"]
    assert bad == "n%0Al%1B%FF.pt"


def test_empty_result() -> None:
    for name in FORMATTERS:
        out = render(name, ScanResult())
        assert out
    assert "no files scanned" in render("text", ScanResult())
    json_validator().validate(json.loads(render("json", ScanResult())))
    sarif_validator().validate(json.loads(render("sarif", ScanResult())))


def test_interrupted_summary() -> None:
    r = ScanResult(reports=sample_result().reports[:1], interrupted=True, planned=5)
    text = render("text", r)
    assert "interrupted after 1 of 5 files" in text
    assert json.loads(render("json", r))["summary"]["interrupted"] is True
    sarif = json.loads(render("sarif", r))
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False


# --- schema files ---------------------------------------------------------------------------

def test_schema_copies_identical() -> None:
    assert DOC_SCHEMA.read_bytes() == PKG_SCHEMA.read_bytes()
    assert load_schema() == json.loads(DOC_SCHEMA.read_text(encoding="utf-8"))


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads(DOC_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_schema_enums_match_model() -> None:
    """The schema repeats closed sets of the model; keep them in step."""
    defs = json.loads(DOC_SCHEMA.read_text(encoding="utf-8"))["$defs"]
    assert defs["report"]["properties"]["format"]["enum"] == [f.value for f in Format]
    assert defs["report"]["properties"]["verdict"]["enum"] == [v.value for v in Verdict]
    assert defs["finding"]["properties"]["effect"]["enum"] == [e.value for e in Effect]
    assert defs["severity"]["enum"] == [s.name.lower() for s in Severity]
    assert set(defs["report"]["required"]) == set(
        Report("p", Format.EMPTY, Verdict.SAFE).to_dict())
    assert set(defs["tensor"]["required"]) == set(TensorInfo("t", "F32", ()).to_dict())
    assert set(defs["finding"]["required"]) == set(
        make_finding("CKG001", "m", Location("p")).to_dict())


def test_schema_rejects_bad_documents() -> None:
    doc = json.loads(render("json", sample_result()))
    doc["reports"][0]["verdict"] = "MAYBE"
    with pytest.raises(jsonschema.ValidationError):
        json_validator().validate(doc)
    doc = json.loads(render("json", sample_result()))
    doc["schema_version"] = "2"
    with pytest.raises(jsonschema.ValidationError):
        json_validator().validate(doc)


def test_sarif_subset_schema_is_strict() -> None:
    """Our offline SARIF 2.1.0 subset schema rejects what the specification forbids."""
    v = sarif_validator()
    ok = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}},
                                        "results": [{"message": {"text": "m"}, "level": "error"}]}]}
    v.validate(ok)
    run = {"tool": {"driver": {"name": "x"}}}
    for bad in ({"version": "2.0.0", "runs": [run]},
                {"version": "2.1.0", "runs": [{"tool": {"driver": {}}}]},
                {"version": "2.1.0", "runs": [{**run, "results": [{"message": {"text": "m"},
                                                                   "level": "fatal"}]}]},
                {"version": "2.1.0", "runs": [{**run, "results": [{"message": {"text": "m"},
                                                                   "bogus": 1}]}]},
                {"version": "2.1.0", "runs": [{**run, "results": [{"ruleId": "x"}]}]}):
        with pytest.raises(jsonschema.ValidationError):
            v.validate(bad)


# --- escaping -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("plain.pt", "plain.pt"),
    ("a\nb", "a\\x0ab"),
    ("\x1b[2J", "\\x1b[2J"),
    ("tab\there", "tab\\x09here"),
    ("\x7f\x9b", "\\x7f\\x9b"),
    ("rtl\u202egnp.exe", "rtl\\u202egnp.exe"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("bad\udcffbyte", "bad\\udcffbyte"),
    ("unicode-ok-模型.pt", "unicode-ok-模型.pt"),
    # the review's spoofing gaps: invisible format characters, language tags, and a name
    # that spells an escape (the backslash is escaped, so no two names print alike)
    ("model\U000e0001\U000e0020.pt", "model\\U000e0001\\U000e0020.pt"),
    ("model\u206b.pt", "model\\u206b.pt"),
    ("sign\u0600s", "sign\\u0600s"),
    ("hangul\u3164filler", "hangul\\u3164filler"),
    ("music\U0001d173.pt", "music\\U0001d173.pt"),
    ("evil_\\x1b[31m.pt", "evil_\\x5cx1b[31m.pt"),
])
def test_escape(raw: str, expected: str) -> None:
    assert escape_untrusted(raw) == expected
    # what is left unescaped is printable, and only the escapes' own backslashes remain
    assert not has_unsafe_chars(escape_untrusted(raw).replace("\\", ""))


def test_escape_is_one_to_one() -> None:
    names = ["evil_\x1b[31m.pt", "evil_\\x1b[31m.pt", "a\u200bb", "a\\u200bb", "t\U000e0041",
             "t\\U000e0041"]
    shown = [escape_untrusted(n, None) for n in names]
    assert len(set(shown)) == len(names), shown


def test_escape_truncates_keeping_tail() -> None:
    name = "d/" + "x" * 500 + "/model.pt"
    out = escape_untrusted(name)
    assert len(out) == 200
    assert out.endswith("/model.pt") and "..." in out
    assert escape_untrusted(name, None) == name
    assert len(escape_untrusted("\x1b" * 300)) == 200


def test_report_meta_reads_one_value() -> None:
    r = Report(path="m.pt", format=Format.TORCH_ZIP, verdict=Verdict.SAFE,
               metadata=(("torch.byteorder", "big"), ("torch.archive_folder", "m")))
    assert r.meta("torch.byteorder", "little") == "big"
    assert r.meta("torch.archive_folder") == "m"
    assert r.meta("torch.storage_alignment") is None
    assert r.meta("torch.storage_alignment", "64") == "64"
