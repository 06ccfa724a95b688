"""What a remote scan target is: an http(s) URL, one file of a hub repo, or a whole repo.

Parsed once into frozen values; nothing downstream looks at the string again. Imports
nothing heavy (the CLI calls :func:`is_remote` on every argument): ``urllib.parse`` (with
``ipaddress``, ~2.5 ms in a fresh interpreter) only where a target is parsed or shown.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..errors import ScanInputError
from ..primitives import REMOTE_SCHEMES as SCHEMES
from ..primitives import is_remote

DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint() -> str:
    """The hub's base URL: ``HF_ENDPOINT`` or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_token() -> str | None:
    """``HF_TOKEN`` (or the older ``HUGGING_FACE_HUB_TOKEN``); never printed."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


@dataclass(frozen=True)
class UrlTarget:
    """A file at an http(s) URL."""

    url: str

    @property
    def display(self) -> str:
        """The URL without user info, query or fragment (they may carry credentials)."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    @property
    def filename(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.url).path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class HubRepo:
    """Every file of one revision of a hub model repo: ``hf://ORG/NAME[@REV]``."""

    repo: str
    revision: str = "main"

    @property
    def display(self) -> str:
        return f"hf://{self.repo}@{self.revision}"

    def api_url(self, endpoint: str) -> str:
        from urllib.parse import quote

        return f"{endpoint}/api/models/{self.repo}/revision/{quote(self.revision, safe='')}"

    def file(self, filename: str, revision: str | None = None) -> HubFile:
        return HubFile(self.repo, revision or self.revision, filename)


@dataclass(frozen=True)
class HubFile:
    """One file of a hub model repo: ``hf://ORG/NAME[@REV]/PATH``."""

    repo: str
    revision: str
    filename: str

    @property
    def display(self) -> str:
        return f"hf://{self.repo}@{self.revision}/{self.filename}"

    def resolve_url(self, endpoint: str) -> str:
        from urllib.parse import quote

        return (f"{endpoint}/{self.repo}/resolve/{quote(self.revision, safe='')}/"
                f"{quote(self.filename)}")


RemoteTarget = UrlTarget | HubRepo | HubFile


#: the longest URL a scan target may be (httpx refuses 65,536 characters and more)
_MAX_URL = 8192

_USERINFO_QUERY = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/?#@]*@)?([^?#]*).*$", re.S)


def redact_target(target: str) -> str:
    """``target`` as it may be printed: without user info, query or fragment (they may
    carry credentials), even when it does not parse as a URL."""
    return _USERINFO_QUERY.sub(r"\1\2", target)


def _segment_ok(s: str) -> bool:
    return bool(s) and s not in (".", "..") and all(c.isalnum() or c in "-_." for c in s)


def parse_target(target: str) -> RemoteTarget:
    """Parse a remote target; raises :class:`ScanInputError` for a malformed one."""
    low = target[:8].lower()
    if low.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        import httpx

        shown = redact_target(target)
        if len(target) > _MAX_URL:
            raise ScanInputError(shown[:200], f"a URL longer than {_MAX_URL} characters")
        try:  # every way urllib and httpx refuse it, here, as a malformed target
            parts = urlsplit(target)
            _ = parts.port
            httpx.URL(target)
        except (ValueError, httpx.InvalidURL) as e:
            why = str(e)
            if any(c in why for c in "@?#"):  # it quotes the URL: user info or a query
                why = type(e).__name__
            raise ScanInputError(shown, f"malformed URL ({why})") from None
        if not parts.hostname:
            raise ScanInputError(shown, "a URL needs a host")
        return UrlTarget(target)
    if not low.startswith("hf://"):
        raise ScanInputError(target, "not a remote target (http://, https:// or hf://)")
    rest = target[5:]
    segs = rest.split("/")
    if len(segs) < 2:
        raise ScanInputError(target, "a hub id is hf://ORG/NAME[@REV][/FILE]")
    org, name = segs[0], segs[1]
    revision = "main"
    if "@" in name:
        name, revision = name.split("@", 1)
        if not revision:
            raise ScanInputError(target, "empty revision after '@'")
    if not (_segment_ok(org) and _segment_ok(name)):
        raise ScanInputError(target, "a hub id is hf://ORG/NAME[@REV][/FILE]")
    repo = f"{org}/{name}"
    filename = "/".join(segs[2:])
    if not filename:
        return HubRepo(repo, revision)
    if any(not s or s in (".", "..") for s in segs[2:]):
        raise ScanInputError(target, "a file path in a hub id has no empty, '.' or '..' parts")
    return HubFile(repo, revision, filename)


__all__ = ["DEFAULT_ENDPOINT", "SCHEMES", "HubFile", "HubRepo", "RemoteTarget", "UrlTarget",
           "hub_endpoint", "hub_token", "is_remote", "parse_target", "redact_target"]
