"""Remote reads against loopback servers that stall or change the file (no nginx needed).

``max_seconds`` bounds every network wait of a remote scan, not only the body: a server that
trickles its status line and headers a byte at a time (each byte resets httpx's per-phase
timeout) is cut off at the deadline, on the first request and on a later range, and the
retry loop never sleeps past it. A later 206 whose ``Last-Modified`` (the validator sent as
``If-Range`` when there is no strong ETag) differs is a changed file: CKG911.
"""

from __future__ import annotations

import socket
import threading
import time
import typing
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import ckptguard
from ckptguard.model import Verdict
from ckptguard.policy import DEFAULT_LIMITS
from ckptguard.remote.http import Failure, RemoteOptions, Session
from ckptguard.remote.scan import scan_remote

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LINEAR = (FIXTURES / "benign/linear.pt").read_bytes()  # a SAFE torch zip of 1,893 bytes
FIRST = 200            # the servers answer the first range with only this many bytes,
                       # so the audit has to ask for later ranges
TRICKLE_EVERY = 0.3    # seconds between two bytes of a trickled status line / headers
TRICKLE_FOR = 10.0     # a trickle ends (connection closed) after this long: without the
                       # bound the tests fail on time instead of hanging
BUDGET = 2             # max_seconds in these tests
LOCAL_ONLY = {"CKG010"}


def _failures(report: ckptguard.Report) -> set[str]:
    return {str(f.evidence_dict.get("failure")) for f in report.findings}


def _messages(report: ckptguard.Report) -> str:
    return " ".join(f.message for f in report.findings)


# --- a raw loopback server: full control of every byte, threads joined at the end -----------

Handler = Callable[["_RawServer", socket.socket, bytes], bool]


class _RawServer:
    """A TCP server on 127.0.0.1: each request head (up to the blank line) on each
    connection is passed to ``handle(server, conn, head)``, which answers it and returns
    whether the connection stays open for another request."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.heads: list[bytes] = []
        self.stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.2)
            buf = b""
            try:
                while not self.stop.is_set():
                    try:
                        more = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not more:
                        return
                    buf += more
                    while b"\r\n\r\n" in buf:
                        head, _, buf = buf.partition(b"\r\n\r\n")
                        self.heads.append(head)
                        if not self.handle(self, conn, head):
                            return
            except OSError:
                return  # the client hung up

    def trickle(self, conn: socket.socket, data: bytes) -> None:
        """Send ``data`` a byte every TRICKLE_EVERY s, then close (after TRICKLE_FOR s at
        most, or when the test ends)."""
        end = time.monotonic() + TRICKLE_FOR
        for i in range(len(data)):
            if self.stop.is_set() or time.monotonic() > end:
                return
            conn.sendall(data[i:i + 1])
            self.stop.wait(TRICKLE_EVERY)

    def close(self) -> None:
        self.stop.set()
        self._sock.close()
        self._acceptor.join(5)
        for t in self._threads:
            t.join(5)
        assert not self._acceptor.is_alive()
        assert not any(t.is_alive() for t in self._threads)


@pytest.fixture()
def raw_server() -> Iterator[Callable[[Handler], _RawServer]]:
    servers: list[_RawServer] = []

    def start(handle: Handler) -> _RawServer:
        servers.append(_RawServer(handle))
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


def _range(head: bytes) -> tuple[int, int]:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"range":
            start, _, end = value.strip().removeprefix(b"bytes=").partition(b"-")
            return int(start), int(end)
    raise AssertionError(head)


# A status line and headers that never end: one padding header, a byte at a time.
ENDLESS_HEAD = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/10\r\n"
                b"X-Padding: " + b"a" * 10_000)


def _trickle_every_head(srv: _RawServer, conn: socket.socket, head: bytes) -> bool:
    srv.trickle(conn, ENDLESS_HEAD)
    return False


def _trickle_later_heads(srv: _RawServer, conn: socket.socket, head: bytes) -> bool:
    _, end = _range(head)
    if len(srv.heads) > 1:  # a later range: its headers never finish
        srv.trickle(conn, ENDLESS_HEAD)
        return False
    end = min(end, FIRST - 1)
    conn.sendall(b"HTTP/1.1 206 Partial Content\r\n"
                 + f"Content-Range: bytes 0-{end}/{len(LINEAR)}\r\n".encode()
                 + f"Content-Length: {end + 1}\r\n".encode()
                 + b'ETag: "v1"\r\n\r\n' + LINEAR[:end + 1])
    return True


def _unavailable(srv: _RawServer, conn: socket.socket, head: bytes) -> bool:
    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    return True


def _scan_timed(url: str, options: RemoteOptions) -> tuple[ckptguard.Report, float]:
    t = time.monotonic()
    report = scan_remote(url + "/m.bin", limits=DEFAULT_LIMITS.replace(max_seconds=BUDGET),
                         options=options)
    return report, time.monotonic() - t


def test_trickled_headers_cannot_outlast_max_seconds(
        raw_server: Callable[[Handler], _RawServer]) -> None:
    """The first response's status line and headers arrive a byte every 0.3 s; httpx's
    per-phase timeout stays at its 30 s default (and retries at 3), so only the deadline
    can end the wait."""
    srv = raw_server(_trickle_every_head)
    options = RemoteOptions()
    assert options.timeout == 30 and options.retries == 3
    r, took = _scan_timed(srv.url, options)
    assert took < 8, took
    assert r.verdict is Verdict.INCOMPLETE and r.rule_ids() == {"CKG910"}, sorted(r.rule_ids())
    assert _failures(r) == {Failure.TIMEOUT.name}
    assert "max_seconds" in _messages(r), _messages(r)
    assert len(srv.heads) == 1  # no retry once the budget is spent


def test_trickled_headers_of_a_later_range_cannot_outlast_max_seconds(
        raw_server: Callable[[Handler], _RawServer]) -> None:
    """The first range arrives at once (200 of 1,893 bytes); the next range request's
    headers trickle: the deadline set when the file was opened bounds it too."""
    srv = raw_server(_trickle_later_heads)
    r, took = _scan_timed(srv.url, RemoteOptions())
    assert took < 8, took
    assert len(srv.heads) == 2, srv.heads
    assert r.verdict is Verdict.INCOMPLETE and "CKG910" in r.rule_ids(), sorted(r.rule_ids())
    assert Failure.TIMEOUT.name in _failures(r)
    assert "max_seconds" in _messages(r), _messages(r)


@pytest.mark.parametrize(("backoff", "tries"), [(3.0, 1), (0.4, 3)])
def test_retries_stop_at_max_seconds(raw_server: Callable[[Handler], _RawServer],
                                     backoff: float, tries: int) -> None:
    """503 at once, forever, with retries to spare: no back-off sleep runs past the
    deadline (3 s: not even the first one; 0.4 s: tries at 0, 0.4 and 1.2 s, and the
    next back-off, 1.6 s, would end past 2 s, where a fifth try was allowed)."""
    srv = raw_server(_unavailable)
    r, took = _scan_timed(srv.url, RemoteOptions(retries=4, backoff=backoff))
    assert took < BUDGET + 0.5, took
    assert r.verdict is Verdict.INCOMPLETE and r.rule_ids() == {"CKG910"}, sorted(r.rule_ids())
    assert _failures(r) == {Failure.TIMEOUT.name}
    assert "max_seconds" in _messages(r) and "HTTP 503" in _messages(r), _messages(r)
    if tries == 1:
        assert len(srv.heads) == 1
    else:  # each try costs a little on a loaded machine: at least two, never a fourth
        assert 2 <= len(srv.heads) <= tries, len(srv.heads)


def test_per_phase_timeout_is_still_its_own_message(
        raw_server: Callable[[Handler], _RawServer]) -> None:
    """The control: a server that sends nothing hits the per-phase timeout (0.3 s) long
    before max_seconds; the finding names the phase timeout, not the budget."""
    def silent(srv: _RawServer, conn: socket.socket, head: bytes) -> bool:
        srv.stop.wait(3)
        return False

    srv = raw_server(silent)
    r, took = _scan_timed(srv.url, RemoteOptions(timeout=0.3, retries=0))
    assert took < BUDGET, took
    assert r.verdict is Verdict.INCOMPLETE and r.rule_ids() == {"CKG910"}
    assert _failures(r) == {Failure.TIMEOUT.name}
    assert "per phase" in _messages(r) and "max_seconds" not in _messages(r), _messages(r)


def test_the_session_routes_every_connection_through_the_deadline() -> None:
    """The bound rests on httpx internals (the transport's pool's network backend): the
    session installs it at construction, on the default transport and every mount."""
    with Session(RemoteOptions()) as sess:
        client = sess._client
        pools = [client._transport, *(t for t in client._mounts.values() if t is not None)]
        for transport in pools:
            backend = transport._pool._network_backend  # type: ignore[attr-defined]
            assert type(backend).__qualname__ == "_deadline_backend.<locals>.Backend"


def test_an_httpx_without_the_backend_attribute_fails_at_construction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """If httpx moves the pool's backend, the session refuses to exist rather than scan
    without the max_seconds bound."""
    import httpx

    real = httpx.HTTPTransport.__init__

    def renamed(self: httpx.HTTPTransport, *a: typing.Any, **k: typing.Any) -> None:
        real(self, *a, **k)
        del self._pool._network_backend

    monkeypatch.setattr(httpx.HTTPTransport, "__init__", renamed)
    with pytest.raises(RuntimeError, match="max_seconds"):
        Session(RemoteOptions())


# --- validators on later ranges: Last-Modified, weak ETags ----------------------------------

class _Versioned(BaseHTTPRequestHandler):
    """Serves linear.pt by ranges (the first one short, so later ranges are needed) and
    ignores If-Range, like a cache that does. ``mode`` says which validators the first
    response and the later ones carry."""

    mode = "lm-stable"
    seen: typing.ClassVar[list[dict[str, str | None]]] = []

    def log_message(self, *a: object) -> None:
        pass

    def _validators(self, first: bool) -> dict[str, str]:
        old, new = "Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 02 Jan 2024 00:00:00 GMT"
        return {
            "lm-stable": {"Last-Modified": old},
            "lm-changed": {"Last-Modified": old if first else new},
            "lm-dropped": {"Last-Modified": old} if first else {},
            "etag-stable": {"ETag": '"v1"', "Last-Modified": old},
            "etag-weakened": {"ETag": '"v1"'} if first else {"ETag": 'W/"v1"'},
            "etag-dropped": {"ETag": '"v1"', "Last-Modified": old} if first else
                            {"Last-Modified": old},
        }[self.mode]

    def do_GET(self) -> None:
        type(self).seen.append({"range": self.headers.get("Range"),
                                "if-range": self.headers.get("If-Range")})
        start, _, end = self.headers.get("Range", "").removeprefix("bytes=").partition("-")
        s, e = int(start), min(int(end), len(LINEAR) - 1)
        first = len(type(self).seen) == 1
        if first:
            e = min(e, FIRST - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {s}-{e}/{len(LINEAR)}")
        self.send_header("Content-Length", str(e - s + 1))
        for name, value in self._validators(first).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(LINEAR[s : e + 1])


def _scan_versioned(mode: str) -> tuple[ckptguard.Report, list[dict[str, str | None]]]:
    seen: list[dict[str, str | None]] = []
    handler = type("V", (_Versioned,), {"mode": mode, "seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        r = scan_remote(f"http://127.0.0.1:{httpd.server_address[1]}/linear.pt",
                        options=RemoteOptions(timeout=5, retries=0))
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)
    return r, seen


@pytest.mark.parametrize("mode", ["lm-stable", "etag-stable"])
def test_stable_validators_give_the_local_verdict(mode: str) -> None:
    """The control: the same server with validators that do not move scans like the
    local file (SAFE, the same rules), through more than one range request."""
    local = ckptguard.scan(FIXTURES / "benign/linear.pt")
    r, seen = _scan_versioned(mode)
    assert len(seen) >= 2, seen
    assert local.verdict is Verdict.SAFE
    assert r.verdict is local.verdict, sorted(r.rule_ids())
    assert r.rule_ids() - LOCAL_ONLY == local.rule_ids() - LOCAL_ONLY


@pytest.mark.parametrize(("mode", "word"), [("lm-changed", "Last-Modified changed"),
                                            ("lm-dropped", "Last-Modified changed"),
                                            ("etag-weakened", "ETag changed"),
                                            ("etag-dropped", "ETag changed")])
def test_a_later_range_of_another_version_is_a_changed_file(mode: str, word: str) -> None:
    """The first response's validator (Last-Modified without a strong ETag) goes out as
    If-Range; a later 206 with another or no Last-Modified, or whose strong ETag became
    weak or went missing, is a range of another version: INCOMPLETE, CKG911."""
    r, seen = _scan_versioned(mode)
    assert len(seen) >= 2, seen
    sent = '"v1"' if mode.startswith("etag") else "Mon, 01 Jan 2024 00:00:00 GMT"
    assert seen[1]["if-range"] == sent, seen
    assert r.verdict is Verdict.INCOMPLETE, sorted(r.rule_ids())
    assert "CKG911" in r.rule_ids(), sorted(r.rule_ids())
    assert Failure.CHANGED.name in _failures(r)
    assert word in _messages(r), _messages(r)


def test_a_trickled_hub_listing_cannot_outlast_max_seconds(
        raw_server: Callable[[Handler], _RawServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """``hf://org/name`` first asks the hub for the repository's file listing: its headers
    trickling a byte every 0.3 s end at the listing's own max_seconds, as a file's do."""
    srv = raw_server(_trickle_every_head)
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    t = time.monotonic()
    r = scan_remote("hf://org/model", limits=DEFAULT_LIMITS.replace(max_seconds=BUDGET),
                    options=RemoteOptions())
    assert time.monotonic() - t < 8
    assert r.verdict is Verdict.INCOMPLETE and r.rule_ids() == {"CKG910"}, sorted(r.rule_ids())
    assert _failures(r) == {Failure.TIMEOUT.name}
    assert "max_seconds" in _messages(r), _messages(r)
