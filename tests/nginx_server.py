"""A real nginx (Debian's package) on 127.0.0.1 for the remote-scan tests and bench.

``NginxServer(www).start()`` writes a config into a private temp folder and runs
``nginx -g 'daemon off;'`` in the foreground as a child, on a free loopback port; ``stop()``
ends it. Locations:

- ``/files/...``     static files with byte ranges and strong ETags (nginx's defaults)
- ``/norange/...``   the same files with ranges switched off (``max_ranges 0``)
- ``/redirect/...``  a 302 to ``/files/...``; ``/loop/...`` redirects forever
- ``/ORG/NAME/resolve/REV/FILE`` and ``/api/models/ORG/NAME/revision/REV``: a hub layout
  (the listing is a static JSON file); repos under the ``gated`` org answer 401 unless
  the request carries ``Authorization: Bearer <token>``
- every request is logged with its status and body bytes, so tests can count transfers
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
TOKEN = "test-token-5f2c"

_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 256; }}
http {{
    log_format xfer '$request_method $uri $status $body_bytes_sent';
    access_log {tmp}/access.log xfer;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location /norange/ {{ max_ranges 0; alias {www}/files/; }}
        location /redirect/ {{ rewrite ^/redirect/(.*)$ /files/$1 redirect; }}
        location /loop/ {{ rewrite ^/loop/(.*)$ /loop/$1 redirect; }}
        location /api/ {{
            default_type application/json;
            if ($uri ~ "^/api/models/gated/") {{ set $gate 1; }}
            if ($http_authorization = "Bearer {token}") {{ set $gate 0; }}
            if ($gate = 1) {{ return 401; }}
        }}
        location /gated/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxServer:
    def __init__(self, www: Path) -> None:
        self.www = Path(www)
        self.tmp = Path(tempfile.mkdtemp(prefix="ckg-nginx-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NginxServer:
        assert NGINX, "nginx is not installed"
        self.port = _free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.tmp / "nginx.conf"
        conf.write_text(_CONF.format(tmp=self.tmp, user=user, port=self.port, www=self.www,
                                     token=TOKEN))
        self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(self.tmp),
                                      "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_lines(self) -> list[tuple[str, str, int, int]]:
        """(method, uri, status, body bytes) of every request so far."""
        out = []
        p = self.tmp / "access.log"
        if p.exists():
            for line in p.read_text().splitlines():
                m, uri, status, sent = line.split(" ")
                out.append((m, uri, int(status), int(sent)))
        return out

    def bytes_sent(self) -> int:
        return sum(r[3] for r in self.log_lines())


def hub_repo(www: Path, org_repo: str, files: dict[str, Path], *, revision: str = "main",
             commit: str = "0123456789abcdef0123456789abcdef01234567") -> None:
    """Lay out a hub-style repo: resolve/<revision>/ and resolve/<commit>/ hold the files,
    api/models/<repo>/revision/<revision> is the listing."""
    import json

    for rev in {revision, commit}:
        for name, src in files.items():
            dst = www / org_repo / "resolve" / rev / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():  # a copy: a hard link would give the source a 2nd link
                shutil.copyfile(src, dst)
    listing = {"id": org_repo, "sha": commit,
               "siblings": [{"rfilename": n} for n in sorted(files)]}
    api = www / "api" / "models" / org_repo / "revision" / revision
    api.parent.mkdir(parents=True, exist_ok=True)
    api.write_text(json.dumps(listing))


def serve_fixtures(www: Path, fixtures: Path) -> NginxServer:
    """nginx serving a copy of ``fixtures`` under ``/files/`` (scripts and docs left out),
    started; the caller stops it."""
    shutil.copytree(fixtures, www / "files", ignore=shutil.ignore_patterns("*.py", "*.md"))
    return NginxServer(www).start()
