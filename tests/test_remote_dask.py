"""Scans mapped over a real Dask cluster (a LocalCluster the test starts) give the same
reports as scans on this process, for URLs on a local nginx and for local paths."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nginx_server import NGINX, NginxServer, serve_fixtures

import ckptguard
from ckptguard.model import Verdict

pytest.importorskip("dask.distributed", reason="dask[distributed] is not installed")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    srv = serve_fixtures(tmp_path_factory.mktemp("www"), FIXTURES)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.slow
def test_dask_scan_equals_local_scan(server: NginxServer, client: object) -> None:
    from ckptguard.remote.distributed import scan_on_dask

    entries = MANIFEST["fixtures"]
    urls = [f"{server.base}/files/{e['path']}" for e in entries]
    paths = [str(FIXTURES / e["path"]) for e in entries[:20]]
    got = dict(scan_on_dask(urls + paths, client=client, batch=8, max_in_flight=4))
    assert set(got) == set(urls + paths)
    for e, url in zip(entries, urls, strict=True):
        local = ckptguard.scan(FIXTURES / str(e["path"]))
        assert got[url].verdict is local.verdict, url
        assert got[url].verdict.value == e["verdict"]
        assert got[url].rule_ids() == local.rule_ids(), url
    for p in paths:
        assert got[p].to_dict()["verdict"] == ckptguard.scan(p).verdict.value


@pytest.mark.slow
def test_cli_from_file_on_dask_local_cluster(server: NginxServer, tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    safe = f"{server.base}/files/benign/linear.pt"
    bad = f"{server.base}/files/hostile/global_reduce_posix_system.pkl"
    lst.write_text(f"{safe}\n{bad}\n")
    out = subprocess.run([sys.executable, "-m", "ckptguard", "scan", "--from-file", str(lst),
                          "--dask", "local"], capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 1, out.stderr[-2000:]
    rows = {r["target"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert rows[safe]["verdict"] == Verdict.SAFE.value
    assert rows[bad]["verdict"] == Verdict.UNSAFE.value and "CKG101" in rows[bad]["rules"]
