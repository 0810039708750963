"""The ``dask`` executor: one Dask task per experiment point, each needing ``tcpinc=1``.

Workers are started with ``--nthreads 1 --resources tcpinc=1`` so a machine runs one
emulation point at a time (a neighbouring point would disturb its timing). At connect the
driver asks every such worker who it is (``executors.worker_identity``) and refuses, in
one line, a worker that runs other project code, lacks root, or does not know an
experiment; workers that disagree on the kernel or link backend are allowed and flagged
(metadata ``worker_mismatch``, the report).
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from experiments.executors import (
    RESOURCE,
    Outcome,
    PointFailure,
    PointResult,
    PointTask,
    code_identity,
    run_point_task,
    worker_identity,
)
from testbed.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client, Future

    from experiments.runner import RunContext

ADDRESS = re.compile(r"^(tcp|tls)://[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")
HOST = re.compile(r"^[A-Za-z0-9._\-@]+$")


def check_address(text: str) -> str:
    if not ADDRESS.match(text):
        raise ConfigError(f"bad scheduler address {text!r}",
                          "write it as tcp://HOST:PORT, e.g. tcp://10.0.0.1:8786")
    return text


def ssh_hosts(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']: every host runs a worker, the first also the scheduler."""
    hosts = [h.strip() for h in text.split(",")]
    if not hosts or not all(HOST.match(h) for h in hosts):
        raise ConfigError(f"bad --ssh host list {text!r}",
                          "give host names separated by commas, e.g. --ssh lab1,lab2")
    if len(set(hosts)) != len(hosts):
        raise ConfigError(f"--ssh names a host twice: {text!r}", "name each host once")
    return hosts


def ssh_cluster_options(hosts: list[str], python: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``distributed.SSHCluster``: its first host is the scheduler,
    the others workers, so the first host is listed twice to run a worker as well. Each
    remote machine runs the same Python (the project's venv at the same path)."""
    return {
        "hosts": [hosts[0], *hosts],
        "scheduler_options": {"port": 8786, "dashboard_address": ":8787"},
        "worker_options": {"nthreads": 1, "resources": {RESOURCE: 1}},
        "remote_python": python or sys.executable,
    }


class DaskExecutor:
    """Points as Dask tasks; results come back to the driver, which writes the run dir."""

    def __init__(self, client: Client, retries: int = 2, cluster: Any = None) -> None:
        self.client, self.retries, self.cluster = client, retries, cluster
        self.identities: dict[str, dict[str, Any]] = {}
        self.token = uuid.uuid4().hex[:8]

    @classmethod
    def connect(cls, scheduler: str | None, ssh: str | None, *, retries: int = 2,
                timeout_s: float = 10.0) -> DaskExecutor:
        from distributed import Client

        cluster = None
        if ssh:
            from distributed import SSHCluster

            try:
                cluster = SSHCluster(**ssh_cluster_options(ssh_hosts(ssh)))
            except (OSError, RuntimeError) as exc:
                raise ConfigError(f"cannot start the Dask cluster over ssh on {ssh}: "
                                  f"{_first_line(exc)}",
                                  "check ssh access (keys, root) and the project on each host"
                                  ) from None
            address = cluster.scheduler_address
        else:
            address = check_address(scheduler or "")
        try:
            client = Client(address, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {address}: "
                              f"{_first_line(exc)}",
                              "start `dask scheduler` there, or check the address and port"
                              ) from None
        return cls(client, retries, cluster)

    def check(self, experiments: list[str], link_backend: str, needs_root: bool,
              timeout_s: float = 10.0, eno_datapath: str = "auto") -> None:
        """Ask each worker that offers ``tcpinc`` who it is; refuse what cannot run."""
        try:
            self.client.wait_for_workers(1, timeout=timeout_s)
        except TimeoutError:
            raise ConfigError(f"no Dask worker joined {self.client.scheduler.address} "
                              f"within {timeout_s:.0f} s",
                              f"start workers: dask worker ADDRESS --nthreads 1 "
                              f"--resources {RESOURCE}=1") from None
        info = self.client.scheduler_info()["workers"]
        usable = [a for a, w in info.items() if w.get("resources", {}).get(RESOURCE)]
        if not usable:
            raise ConfigError(f"no Dask worker offers the resource {RESOURCE}",
                              f"start workers with --nthreads 1 --resources {RESOURCE}=1")
        try:
            found = self.client.run(worker_identity, link_backend, tuple(experiments),
                                    eno_datapath, workers=usable)
        except Exception as exc:  # noqa: BLE001 - any remote failure means "cannot run"
            raise ConfigError(f"a Dask worker cannot run the project: {_first_line(exc)}",
                              "install the project (make setup) on every worker") from None
        mine = code_identity()
        for address, ident in found.items():
            where = f"worker {ident['host']} ({address})"
            if ident["code"] != mine:
                raise ConfigError(f"{where} runs {ident['code']}, this driver {mine}",
                                  "install the same commit on every machine")
            if needs_root and not ident["root"]:
                raise ConfigError(f"{where} does not run as root",
                                  "start `dask worker` as root (namespaces need it)")
            unknown = sorted(set(experiments) - set(ident["experiments"]))
            if unknown:
                raise ConfigError(f"{where} does not know experiment(s) {', '.join(unknown)}",
                                  "install the driver's commit on every worker")
            if str(ident["link_backend"]).startswith("unavailable"):
                raise ConfigError(f"{where}: link backend {ident['link_backend']}",
                                  "fix that machine or choose another --link-backend")
            if str(ident["eno_datapath"]).startswith("unavailable"):
                raise ConfigError(f"{where}: ENO datapath {ident['eno_datapath']}",
                                  "fix that machine or choose another --eno-datapath")
        self.identities = {a: {**found[a], "address": a,
                               "nthreads": info[a].get("nthreads"),
                               "resources": info[a].get("resources")} for a in found}

    def workers(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in ident.items() if k != "experiments"}
                for ident in self.identities.values()]

    def _submit(self, task: PointTask, index: int, attempt: int) -> Future:
        # Earlier points first (as a local run orders them); a retry goes to the front.
        priority = 1_000_000 if attempt > 1 else -index
        return self.client.submit(run_point_task, task, resources={RESOURCE: 1}, pure=False,
                                  priority=priority,
                                  key=f"tcpinc-{task.experiment}-{index}-{self.token}-{attempt}")

    def run(self, tasks: list[PointTask], ctx: RunContext) -> Iterator[Outcome]:
        from distributed import as_completed

        pending: dict[Any, tuple[int, int]] = {}  # future key -> (point index, attempt)
        queue = as_completed()
        for index, task in enumerate(tasks):
            future = self._submit(task, index, 1)
            pending[future.key] = (index, 1)
            queue.add(future)
        for future in queue:
            index, attempt = pending.pop(future.key)
            outcome = self._outcome(future, tasks[index], attempt)
            future.release()
            if outcome is None:
                retry = self._submit(tasks[index], index, attempt + 1)
                pending[retry.key] = (index, attempt + 1)
                queue.add(retry)
            else:
                yield outcome

    def _outcome(self, future: Future, task: PointTask, attempt: int) -> Outcome | None:
        """The point's result, a failure, or None when it is to be submitted again."""
        from distributed import KilledWorker

        if future.status == "finished":
            result: PointResult = future.result()
            result.attempts = attempt
            return result
        exc = future.exception()
        if isinstance(exc, KilledWorker) and attempt <= self.retries:
            return None
        last = getattr(getattr(exc, "last_worker", None), "address", None)
        return PointFailure(task.point, f"{type(exc).__name__}: {_first_line(exc)}", attempt,
                            [str(last)] if last else [])

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
