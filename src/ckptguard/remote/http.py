"""Reading a remote file with HTTP range requests, as a :class:`~ckptguard.context.Source`.

The audit asks for byte ranges (the zip directory, the local headers it needs, the pickle);
:class:`HttpSource` turns each into one ``Range`` request (at least ``MIN_FETCH`` bytes,
kept in a small cache), so a 4 GB checkpoint is judged from well under a megabyte.

One version of the file, or none: the first response's ``ETag`` (or ``Last-Modified``) is
sent as ``If-Range`` with every later request; a server that answers with the whole file
(``200``), another validator, a different total size or a body of the wrong length has
changed the file under us, and the read fails with CKG911 (INCOMPLETE, never SAFE).

The HTTP client is httpx: timeouts per phase, redirects followed within a limit (and the
``Authorization`` header dropped when a redirect leaves the origin, so a hub token never
reaches a CDN), streamed bodies that can be abandoned unread, a thread-safe pooled client.

One wall-time budget per file (``max_seconds``): httpx's timeouts are per phase and a
server that trickles its status line, headers or body a byte at a time resets them with
every byte. So every socket the client opens goes through :func:`_deadline_backend`, an
httpcore network backend that clamps each connect, TLS handshake, read and write to the
time left before the calling thread's deadline (set by :meth:`Session.open` and
:func:`_read_capped` for the duration of one request) and fails it once that deadline has
passed. The retry loop stops at the deadline too, back-off sleep included.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..context import Source, SourceError
from ..errors import CkptGuardError

if TYPE_CHECKING:
    import ssl

    import httpcore
    import httpx

MIN_FETCH = 4096           # bytes: the smallest range asked for (headers are tiny)
CACHE_BYTES = 64 << 20     # fetched ranges kept for re-reads, all spans together
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)\s*$")


class Failure(enum.Enum):
    """Why a remote read failed: each maps to one rule and one piece of advice."""

    NOT_FOUND = "not found (404)"
    DENIED = "access denied (401/403: private or gated; set HF_TOKEN)"
    RANGE_REFUSED = "range not satisfiable (416)"
    HTTP_STATUS = "unexpected HTTP status"
    TIMEOUT = "timed out"
    CONNECTION = "connection failed"
    REDIRECTS = "too many redirects"
    CHANGED = "the file changed between two range requests"
    INCONSISTENT = "the server's sizes contradict each other"
    TOO_BIG_WITHOUT_RANGES = "no byte ranges, and the file exceeds the streaming cap"
    BAD_RESPONSE = "malformed response"
    BAD_TARGET = "malformed target"

    @property
    def rule_id(self) -> str:
        if self in (Failure.CHANGED, Failure.INCONSISTENT):
            return "CKG911"
        if self is Failure.TOO_BIG_WITHOUT_RANGES:
            return "CKG912"
        return "CKG910"


class RemoteError(CkptGuardError):
    """A remote read failed; ``failure`` says why, ``url`` is safe to print."""

    def __init__(self, failure: Failure, url: str, detail: str = "") -> None:
        self.failure = failure
        self.url = url
        self.detail = detail
        super().__init__(f"{url}: {failure.value}" + (f" ({detail})" if detail else ""))

    def as_source_error(self) -> SourceError:
        return SourceError(self.failure.rule_id, str(self),
                           {"failure": self.failure.name, "url": self.url})


@dataclass(frozen=True)
class RemoteOptions:
    """How remote scans talk to servers."""

    timeout: float = 30.0          # seconds per connect / read phase
    retries: int = 3               # extra tries on connection errors, 429 and 5xx
    backoff: float = 0.25          # seconds before the first retry; doubles each time
    max_redirects: int = 5
    concurrency: int = 4           # files fetched at once
    token: str | None = field(default=None, repr=False)  # bearer token for hub requests
    user_agent: str = "ckptguard"


_BUDGET_SPENT = "the scan's wall-time budget (max_seconds) ran out"


class _Budget(threading.local):
    """The calling thread's deadline for the request in progress (``time.monotonic()``;
    None: only httpx's per-phase timeouts apply) and whether a network wait hit it. Per
    thread: one :class:`Session` serves many worker threads, each on its own connection."""

    deadline: float | None = None
    hit: bool = False


_BUDGET = _Budget()


@contextlib.contextmanager
def _bounded(deadline: float | None) -> Iterator[None]:
    """Every network wait of this thread inside the block ends by ``deadline``."""
    saved = (_BUDGET.deadline, _BUDGET.hit)
    _BUDGET.deadline, _BUDGET.hit = deadline, False
    try:
        yield
    finally:
        _BUDGET.deadline, _BUDGET.hit = saved


def _spent(deadline: float | None) -> bool:
    """Has the budget run out (a clamped wait hit it, or the clock is past it)?"""
    return deadline is not None and (_BUDGET.hit or time.monotonic() >= deadline)


def _clamp(timeout: float | None, expired: type[Exception]) -> tuple[float | None, bool]:
    """``timeout`` cut to the time left before this thread's deadline (and whether it was
    cut); ``expired`` (an httpcore timeout) once no time is left."""
    deadline = _BUDGET.deadline
    if deadline is None:
        return timeout, False
    left = deadline - time.monotonic()
    if left <= 0:
        _BUDGET.hit = True
        raise expired(_BUDGET_SPENT)
    if timeout is None or left < timeout:
        return left, True
    return timeout, False


def _deadline_backend(inner: httpcore.NetworkBackend) -> httpcore.NetworkBackend:
    """``inner`` (httpcore's SyncBackend) with every wait clamped to the thread's deadline:
    connect (``create_connection``'s timeout covers the whole connect), the TLS handshake
    (CPython bounds the whole handshake by the socket timeout), each read and each write
    (``sendall``: the whole buffer)."""
    import httpcore

    def waiting(call: Any, timeout: float | None, expired: type[Exception],
                *args: Any, **kwargs: Any) -> Any:
        t, cut = _clamp(timeout, expired)
        try:
            return call(*args, timeout=t, **kwargs)
        except httpcore.TimeoutException:
            if cut:
                _BUDGET.hit = True
            raise

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner: httpcore.NetworkStream) -> None:
            self._inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            data: bytes = waiting(self._inner.read, timeout, httpcore.ReadTimeout, max_bytes)
            return data

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            waiting(self._inner.write, timeout, httpcore.WriteTimeout, buffer)

        def close(self) -> None:
            self._inner.close()

        def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                      timeout: float | None = None) -> httpcore.NetworkStream:
            return Stream(waiting(self._inner.start_tls, timeout, httpcore.ConnectTimeout,
                                  ssl_context, server_hostname=server_hostname))

        def get_extra_info(self, info: str) -> Any:
            return self._inner.get_extra_info(info)

    class Backend(httpcore.NetworkBackend):
        def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                        local_address: str | None = None,
                        socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
            return Stream(waiting(inner.connect_tcp, timeout, httpcore.ConnectTimeout,
                                  host, port, local_address=local_address,
                                  socket_options=socket_options))

        def connect_unix_socket(self, path: str, timeout: float | None = None,
                                socket_options: Iterable[Any] | None = None
                                ) -> httpcore.NetworkStream:
            return Stream(waiting(inner.connect_unix_socket, timeout, httpcore.ConnectTimeout,
                                  path, socket_options=socket_options))

        def sleep(self, seconds: float) -> None:
            t, _ = _clamp(seconds, httpcore.ConnectTimeout)
            inner.sleep(seconds if t is None else t)

    return Backend()


def _install_deadline_backend(client: httpx.Client) -> None:
    """Route every connection ``client`` opens (direct, and through the proxies httpx took
    from the environment) through :func:`_deadline_backend`. httpx has no public hook for
    a network backend: its transports keep httpcore's pool at ``_pool`` and the pool its
    backend at ``_network_backend`` (httpx 0.28, httpcore 1.0). If a later version moves
    them, refuse to build the session rather than scan without the ``max_seconds`` bound."""
    import httpcore
    import httpx

    def unsupported() -> RuntimeError:
        return RuntimeError(
            f"ckptguard cannot bound remote reads by max_seconds with httpx {httpx.__version__}"
            f" / httpcore {httpcore.__version__}: the network backend is no longer at "
            "HTTPTransport._pool._network_backend (checked with httpx 0.28, httpcore 1.0)")

    mounts = getattr(client, "_mounts", None)
    if not isinstance(mounts, dict):
        raise unsupported()
    transports = [getattr(client, "_transport", None)]
    transports += [t for t in mounts.values() if t is not None]  # None: the default transport
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(transport, httpx.HTTPTransport) or \
                not isinstance(backend, httpcore.NetworkBackend):
            raise unsupported()
        pool._network_backend = _deadline_backend(backend)  # type: ignore[union-attr]


@functools.lru_cache(maxsize=4)
def _tls_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """The context httpx builds for ``verify=True`` (certifi's bundle, or SSL_CERT_FILE /
    SSL_CERT_DIR, passed in as the cache key), built once per process: loading the CA
    bundle costs ~17 ms of CPU, which every Session paid again."""
    import httpx

    return httpx.create_ssl_context()


class Session:
    """One pooled, thread-safe httpx client with retries and typed failures."""

    def __init__(self, options: RemoteOptions | None = None) -> None:
        import httpx

        self.options = options or RemoteOptions()
        self.requests = 0
        self._client = httpx.Client(
            verify=_tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")),
            follow_redirects=True,
            max_redirects=self.options.max_redirects,
            timeout=httpx.Timeout(self.options.timeout),
            headers={"User-Agent": self.options.user_agent, "Accept-Encoding": "identity"},
            limits=httpx.Limits(max_connections=max(4, self.options.concurrency * 2)),
        )
        try:
            _install_deadline_backend(self._client)
        except BaseException:
            self._client.close()
            raise

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, auth: bool, extra: dict[str, str]) -> dict[str, str]:
        h = dict(extra)
        if auth and self.options.token:
            h["Authorization"] = f"Bearer {self.options.token}"
        return h

    def open(self, url: str, display: str, headers: dict[str, str], *,
             auth: bool, deadline: float | None = None) -> httpx.Response:
        """Send a GET and return the streamed response (status < 400), retrying transient
        failures with exponential back-off; the caller closes it. ``deadline``
        (``time.monotonic()``): every network wait (connect, TLS, status line, headers) ends
        by then, and no retry (nor its back-off) runs past it: TIMEOUT, naming the budget."""
        import httpx

        delay = self.options.backoff
        cause = ""
        for attempt in range(self.options.retries + 1):
            last = attempt == self.options.retries
            if _spent(deadline):
                raise RemoteError(Failure.TIMEOUT, display,
                                  f"{_BUDGET_SPENT} before the request{cause}")
            self.requests += 1
            with _bounded(deadline):
                try:
                    req = self._client.build_request(
                        "GET", url, headers=self._headers(auth, headers),
                        timeout=self._timeout(deadline))
                    resp = self._client.send(req, stream=True)
                except httpx.TooManyRedirects as e:
                    raise RemoteError(Failure.REDIRECTS, display,
                                      f"more than {self.options.max_redirects}") from e
                except httpx.TimeoutException as e:
                    if _spent(deadline):
                        raise RemoteError(Failure.TIMEOUT, display,
                                          f"{_BUDGET_SPENT} while waiting for the response "
                                          f"({type(e).__name__})") from e
                    if last:
                        raise RemoteError(Failure.TIMEOUT, display,
                                          f"{self.options.timeout:g} s per phase") from e
                    cause = f" (last try: {type(e).__name__})"
                except httpx.TransportError as e:
                    if last:
                        raise RemoteError(Failure.CONNECTION, display, type(e).__name__) from e
                    cause = f" (last try: {type(e).__name__})"
                else:
                    code = resp.status_code
                    if code < 400:
                        return resp
                    resp.close()
                    if code in (429, 500, 502, 503, 504) and not last:
                        cause = f" (last try: HTTP {code})"  # transient: retry
                    elif code == 404:
                        raise RemoteError(Failure.NOT_FOUND, display)
                    elif code in (401, 403):
                        raise RemoteError(Failure.DENIED, display, f"HTTP {code}")
                    elif code == 416:
                        raise RemoteError(Failure.RANGE_REFUSED, display)
                    else:
                        raise RemoteError(Failure.HTTP_STATUS, display, f"HTTP {code}")
            if deadline is not None and time.monotonic() + delay >= deadline:
                # the back-off would end past the budget: no time for another try
                raise RemoteError(Failure.TIMEOUT, display,
                                  f"{_BUDGET_SPENT} before the next retry{cause}")
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _timeout(self, deadline: float | None) -> httpx.Timeout:
        """The request's per-phase timeouts, none longer than the time left (this bounds
        the wait for a free pooled connection too, which is no network wait)."""
        import httpx

        t = self.options.timeout
        if deadline is not None:
            t = max(0.0, min(t, deadline - time.monotonic()))
        return httpx.Timeout(t)

    def get_bytes(self, url: str, display: str, *, cap: int, auth: bool,
                  deadline: float | None = None) -> bytes:
        """A whole (small) response body, refused past ``cap`` bytes (and, with a
        ``deadline``, once it passes)."""
        resp = self.open(url, display, {}, auth=auth, deadline=deadline)
        try:
            return _read_capped(resp, cap, display, deadline=deadline)
        finally:
            resp.close()


def _read_capped(resp: httpx.Response, cap: int, display: str,
                 failure: Failure = Failure.TOO_BIG_WITHOUT_RANGES, *,
                 deadline: float | None = None) -> bytes:
    """The body, refused (``failure``) once it passes ``cap`` bytes: never read further.
    ``deadline`` (``time.monotonic()``): a body still arriving then is refused (TIMEOUT),
    however steadily its bytes trickle in (each one resets httpx's per-phase timeout), and
    no read waits past it.
    The chunks go into one buffer that becomes the result without a second copy."""
    declared = resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise RemoteError(failure, display, f"{int(declared)} bytes > {cap}")
    import httpx

    buf = io.BytesIO()
    got = 0
    with _bounded(deadline):  # a stalled body waits no longer than the budget either
        try:
            for chunk in resp.iter_raw():
                got += len(chunk)
                if got > cap:
                    raise RemoteError(failure, display, f"more than {cap} bytes")
                if deadline is not None and time.monotonic() > deadline:
                    raise RemoteError(Failure.TIMEOUT, display,
                                      f"{_BUDGET_SPENT} while the body was still arriving")
                buf.write(chunk)
        except httpx.TimeoutException as e:  # the body stalled: a failed read, not a crash
            if _spent(deadline):
                raise RemoteError(Failure.TIMEOUT, display,
                                  f"{_BUDGET_SPENT} while the body was still arriving "
                                  f"({type(e).__name__})") from None
            raise RemoteError(Failure.TIMEOUT, display,
                              f"while reading the body ({e})") from None
        except httpx.HTTPError as e:  # cut short, reset, malformed: a failed read
            raise RemoteError(Failure.CONNECTION, display,
                              f"while reading the body ({type(e).__name__}: {e})") from None
    return buf.getvalue()


def _origin(url: str) -> tuple[str, str, int | None]:
    import httpx

    u = httpx.URL(url)
    return u.scheme, u.host, u.port


class HttpSource(Source):
    """Random-access reads of one remote file through range requests."""

    def __init__(self, session: Session, url: str, display: str, *, auth: bool,
                 stream_cap: int, deadline: float | None = None) -> None:
        super().__init__(-1, 0, deadline=deadline)
        self.session = session
        self.url = url            # becomes the final URL after the first redirect chain
        self.display = display
        self.auth = auth
        self.validator: str | None = None   # strong ETag or Last-Modified
        self.etag: str | None = None
        self.ranges = True
        self.fetches = 1          # GET requests made for this file (the first included)
        self._spans: list[tuple[int, bytes]] = []
        self._cached = 0
        self._first(stream_cap)

    # -- set-up ---------------------------------------------------------------------------
    def _first(self, stream_cap: int) -> None:
        asked = MIN_FETCH * 16
        resp = self._get({"Range": f"bytes=0-{asked - 1}"}, allow_416=True)
        try:
            final = str(resp.url)
            if self.auth and _origin(final) != _origin(self.url):
                # a redirect to another origin: httpx dropped the token on that hop, and
                # every later range request goes straight there: never send it again
                self.auth = False
            self.url = final
            self.etag = resp.headers.get("ETag")
            if self.etag and self.etag.startswith("W/"):
                self.etag = None  # weak validators cannot guard a range (RFC 9110 13.1.5)
            self.validator = self.etag or resp.headers.get("Last-Modified")
            if resp.status_code == 416:
                m = _UNSATISFIED.match(resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != 0:
                    raise RemoteError(Failure.RANGE_REFUSED, self.display)
                self.size = 0
                return
            if resp.status_code == 200:
                # the server ignores ranges: take the whole body, up to the cap
                self.ranges = False
                data = _read_capped(resp, stream_cap, self.display, deadline=self.deadline)
                self.size = len(data)
                self.bytes_read += len(data)
                self._keep(0, data)
                return
            if resp.status_code != 206:
                raise RemoteError(Failure.HTTP_STATUS, self.display, f"HTTP {resp.status_code}")
            start, end, total = self._content_range(resp)
            if start != 0 or total is None:
                raise RemoteError(Failure.INCONSISTENT, self.display,
                                  "first range does not start at 0 or has no total size")
            if end >= asked:  # never more than was asked for: the body is read into memory
                raise RemoteError(Failure.INCONSISTENT, self.display,
                                  f"asked bytes 0-{asked - 1}, got 0-{end}")
            self.size = total
            data = self._body(resp, end - start + 1)
            self.bytes_read += len(data)
            self._keep(0, data)
        finally:
            resp.close()

    def _get(self, headers: dict[str, str], *, allow_416: bool = False) -> httpx.Response:
        try:
            return self.session.open(self.url, self.display, headers, auth=self.auth,
                                     deadline=self.deadline)
        except RemoteError as e:
            if allow_416 and e.failure is Failure.RANGE_REFUSED:
                # an empty file: ask again without a range to learn its size
                return self.session.open(self.url, self.display, {}, auth=self.auth,
                                         deadline=self.deadline)
            raise

    def _same_version(self, resp: httpx.Response) -> None:
        """A later 206 carries the validator the first response had, or the file changed
        (a server or cache that ignores ``If-Range`` answers a range of the new version).
        A strong ETag decides alone (a weak or missing one is a change); without one, the
        ``Last-Modified`` sent as ``If-Range`` must come back unchanged. A first response
        with neither (or only a weak ETag) leaves nothing to compare: when more than one
        range was read, CKG913 says so (remote/scan.py)."""
        if self.etag:
            if resp.headers.get("ETag") != self.etag:
                raise RemoteError(Failure.CHANGED, self.display, "ETag changed")
        elif self.validator is not None and resp.headers.get("Last-Modified") != self.validator:
            raise RemoteError(Failure.CHANGED, self.display, "Last-Modified changed")

    def _content_range(self, resp: httpx.Response) -> tuple[int, int, int | None]:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m:
            raise RemoteError(Failure.BAD_RESPONSE, self.display, "206 without Content-Range")
        start, end = int(m.group(1)), int(m.group(2))
        total = None if m.group(3) == "*" else int(m.group(3))
        if end < start or (total is not None and end >= total):
            raise RemoteError(Failure.INCONSISTENT, self.display,
                              f"Content-Range {start}-{end}/{total}")
        return start, end, total

    def _body(self, resp: httpx.Response, expected: int) -> bytes:
        data = _read_capped(resp, expected, self.display, Failure.INCONSISTENT,
                            deadline=self.deadline)
        if len(data) != expected:
            raise RemoteError(Failure.INCONSISTENT, self.display,
                              f"body of {len(data)} bytes for a range of {expected}")
        return data

    # -- cache ----------------------------------------------------------------------------
    def _keep(self, offset: int, data: bytes) -> None:
        if not data:
            return
        self._spans.append((offset, data))
        self._cached += len(data)
        while self._cached > CACHE_BYTES and len(self._spans) > 1:
            _, old = self._spans.pop(0)
            self._cached -= len(old)

    def _cached_read(self, offset: int, length: int) -> bytes | None:
        for start, data in reversed(self._spans):
            if start <= offset and offset + length <= start + len(data):
                return data[offset - start : offset - start + length]
        return None

    # -- Source ---------------------------------------------------------------------------
    def read(self, offset: int, length: int, *, record: bool = False) -> bytes:
        length = self._clip(offset, length)
        if length == 0:
            return b""
        data = self._cached_read(offset, length)
        if data is None:
            try:
                data = self._fetch(offset, length)
            except RemoteError as e:
                raise e.as_source_error() from e
        if record:
            self._record(offset, data)
        return data

    def _fetch(self, offset: int, length: int) -> bytes:
        self.check_time()
        want = min(max(length, MIN_FETCH), self.size - offset)
        headers = {"Range": f"bytes={offset}-{offset + want - 1}"}
        if self.validator:
            headers["If-Range"] = self.validator
        resp = self._get(headers)
        self.fetches += 1
        try:
            if resp.status_code == 200:
                raise RemoteError(Failure.CHANGED, self.display,
                                  "the server answered a range with the whole file "
                                  "(If-Range did not match)" if self.validator else
                                  "the server stopped serving ranges")
            if resp.status_code != 206:
                raise RemoteError(Failure.HTTP_STATUS, self.display, f"HTTP {resp.status_code}")
            self._same_version(resp)
            start, end, total = self._content_range(resp)
            if total is not None and total != self.size:
                raise RemoteError(Failure.INCONSISTENT, self.display,
                                  f"size {total} after {self.size}")
            if start != offset or end != offset + want - 1:
                raise RemoteError(Failure.INCONSISTENT, self.display,
                                  f"asked {offset}-{offset + want - 1}, got {start}-{end}")
            data = self._body(resp, want)
        finally:
            resp.close()
        self.bytes_read += len(data)
        self._keep(offset, data)
        return data[:length]


__all__ = ["CACHE_BYTES", "MIN_FETCH", "Failure", "HttpSource", "RemoteError", "RemoteOptions",
           "Session"]
