"""Spreading work over Dask workers: one client helper and one per-process build cache, shared by
the GIS tiles (samkit.geo) and auto-annotation's images. Dask itself is optional
(`pip install "samkit[dask]"`) and imported only here, only when asked for."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Hashable

from ..errors import SamkitError


def dask_client(dask: Any, error: type[Exception] = SamkitError) -> tuple[Any, Callable[[], None]]:
    """(client, close function) for `dask`: a `distributed.Client` (used as it is, close does
    nothing), a scheduler address ("tcp://host:8786"), or a number of local worker processes
    (int or a string of digits), each with one thread and an equal share of the CPU cores for
    its math libraries. Bad values and an unreachable scheduler raise `error` with one line."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise error('Dask is not installed: pip install "samkit[dask]"') from exc
    if isinstance(dask, Client):
        return dask, lambda: None
    if isinstance(dask, bool) or (isinstance(dask, int) and dask < 1) or (isinstance(dask, str) and dask == "0"):
        raise error(f"dask must be a scheduler address, a Client or a number of local workers >= 1, got {dask!r}")
    if isinstance(dask, int) or (isinstance(dask, str) and dask.isdigit()):
        n = int(dask)
        threads = max(1, (os.cpu_count() or 1) // n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        client = Client(cluster)

        def close():
            client.close()
            cluster.close()

        return client, close
    if isinstance(dask, str):
        try:
            client = Client(dask, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise error(f"cannot reach the Dask scheduler at {dask}: {exc}") from exc
        return client, client.close
    raise error(f"dask must be a scheduler address, a Client or a number of local workers, got {dask!r}")


_built: dict[Hashable, Any] = {}
_lock = threading.Lock()


def built_once(key: Hashable, build: Callable[[], Any]) -> Any:
    """`build()`'s result, made once per process for `key` and kept: what a Dask worker needs
    for a model (load the checkpoint once per worker, not once per task)."""
    with _lock:
        value = _built.get(key)
        if value is None:
            value = _built[key] = build()
        return value
