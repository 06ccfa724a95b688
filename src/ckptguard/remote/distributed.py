"""Scans spread over a Dask cluster, for registries with more files than one machine scans.

Why Dask (``distributed``) rather than Ray: the work is many independent, I/O-bound scans
that each return a small report; Dask's futures API maps them over workers and streams
results back as they finish, it is pure Python and small to install (no object store or
separate C++ runtime), a ``LocalCluster`` starts in about a second for tests, and real
clusters start with ``dask scheduler`` / ``dask worker ADDRESS`` or dask-kubernetes and
dask-jobqueue. Install with ``pip install 'ckptguard[distributed]'``.

Each worker runs :func:`ckptguard.scan_api.iter_scan` on a batch of targets (remote
files with HTTP ranges, local paths with the local engine) and returns the reports as
plain dicts; the caller rebuilds them with :meth:`Report.from_dict`. Reports are the same
as a local scan's: the engine is the same, only the place it runs changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..model import Report
from ..policy import DEFAULT_LIMITS, DEFAULT_POLICY, Limits, Policy
from ..primitives import or_default

BATCH = 16  # targets per task: amortises task overhead, keeps results flowing


_SESSIONS: dict[int, Any] = {}  # one pooled HTTP client per worker process and concurrency


def _scan_batch(targets: list[str], policy: Policy, limits: Limits, concurrency: int
                ) -> list[tuple[str, dict[str, Any]]]:
    from ..scan_api import iter_scan
    from .http import RemoteOptions, Session
    from .targets import hub_token

    sess = _SESSIONS.get(concurrency)
    if sess is None:  # kept for the worker's life: connections are reused across batches
        sess = _SESSIONS[concurrency] = Session(
            RemoteOptions(concurrency=concurrency, token=hub_token()))
    return [(t, r.to_dict()) for t, r in iter_scan(targets, policy=policy, limits=limits,
                                                   session=sess)]


class DaskAddressError(ValueError):
    """The ``--dask`` address is not one a Dask client can connect to."""


def scan_on_dask(targets: Iterable[str], *, address: str | None = None, client: Any = None,
                 policy: Policy | None = None, limits: Limits | None = None,
                 batch: int = BATCH, concurrency: int = 4, max_in_flight: int = 64
                 ) -> Iterator[tuple[str, Report]]:
    """Scan ``targets`` on a Dask cluster, yielding ``(target, report)`` as batches finish.

    Give a connected ``client``, or an ``address`` (``tcp://host:8786``; ``local`` starts a
    ``LocalCluster`` of one process per core for the duration of the scan). At most
    ``max_in_flight`` batches are submitted at once, so a list of millions streams. The
    token for hub targets is read from ``HF_TOKEN`` on the workers, never shipped in tasks.
    """
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("scans on Dask need: pip install 'ckptguard[distributed]'") from e
    policy = or_default(policy, DEFAULT_POLICY)
    limits = or_default(limits, DEFAULT_LIMITS)
    own_cluster = None
    own_client = None
    if client is None:
        if address in (None, "local"):
            own_cluster = LocalCluster(processes=True, threads_per_worker=1,
                                       dashboard_address=None)
            own_client = client = Client(own_cluster)
        else:
            try:
                own_client = client = Client(address)
            except (ValueError, TypeError) as e:  # dask's own words for a bad address
                raise DaskAddressError(f"{address!r} is not a Dask scheduler address "
                                       f"({e})") from None
    try:
        it = iter(targets)
        pending = as_completed()

        def submit() -> bool:
            chunk = [t for _, t in zip(range(batch), it, strict=False)]
            if not chunk:
                return False
            pending.add(client.submit(_scan_batch, chunk, policy, limits, concurrency,
                                      pure=False))
            return True

        for _ in range(max_in_flight):
            if not submit():
                break
        for fut in pending:
            for target, d in fut.result():
                yield target, Report.from_dict(d)
            fut.release()
            submit()
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


__all__ = ["DaskAddressError", "scan_on_dask"]
