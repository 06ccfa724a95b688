"""Remote scans: http(s) URLs and ``hf://`` hub ids, read with HTTP range requests.

Importing this package imports no HTTP client; httpx loads on the first remote read.
"""

from __future__ import annotations

from .targets import HubFile, HubRepo, RemoteTarget, UrlTarget, is_remote, parse_target

__all__ = ["HubFile", "HubRepo", "RemoteTarget", "UrlTarget", "is_remote", "parse_target"]
