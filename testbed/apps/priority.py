"""Scheduling priority of the measured endpoints (the workload's client and server).

A host's time on a flight (testbed/net/timesplit.py) is meant to be what its implementation
costs. On a machine that also runs other work, a CFS-scheduled endpoint loses the CPU in the
middle of a flight: a ``sendall`` that wakes the SCHED_FIFO delay line is preempted, and the
scheduler may then hand the CPU to any other runnable process for a whole time slice before
the endpoint gets it back (measured on the loaded development VM: a 64-byte ``sendall`` of
the TLS client took 0.09 ms of CPU and up to 6 ms of wall time). That is the machine's load,
not the design, and it made the same commit measure differently on two machines.

So the experiments run both endpoints (and, on the nfqueue datapath, each host's ENO hook,
which holds every handshake segment) under SCHED_FIFO at ``ENDPOINT_RT_PRIORITY``, below the
delay line's priority 10 (testbed/net/delayline_c/main.c), whose release timing stays first.
The endpoints block between flights and run for well under a millisecond per flight, so they
take little from the rest of the machine; the kernel's RT throttling
(``kernel.sched_rt_runtime_us``) bounds them anyway. Threads the process creates afterwards
inherit the policy (so would child processes; the apps start none: SCHED_RESET_ON_FORK is not
used because it also resets new threads). Where the kernel refuses (no privilege, an RT-less
cgroup) the process keeps its policy and says why in its records.
"""

from __future__ import annotations

import os

ENDPOINT_RT_PRIORITY = 5


def current_policy() -> str:
    """This thread's scheduling policy as records name it (``SCHED_FIFO:5``, ``SCHED_OTHER``)."""
    policy = os.sched_getscheduler(0)
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR",
             os.SCHED_BATCH: "SCHED_BATCH", os.SCHED_IDLE: "SCHED_IDLE"}
    name = names.get(policy, str(policy))
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        return f"{name}:{os.sched_getparam(0).sched_priority}"
    return name


def raise_priority(priority: int) -> str:
    """Put the calling thread under SCHED_FIFO at ``priority`` (0: leave it as it is); returns
    the policy it has afterwards, with the kernel's reason when it refused."""
    if priority == 0:
        return current_policy()
    if not os.sched_get_priority_min(os.SCHED_FIFO) <= priority \
            <= os.sched_get_priority_max(os.SCHED_FIFO):
        raise ValueError(f"SCHED_FIFO priority {priority} outside 1..99")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        return f"{current_policy()} (SCHED_FIFO:{priority}: {exc.strerror})"
    return current_policy()


def raise_process(pid: int, priority: int) -> str:
    """``raise_priority`` for every thread of another process (a helper already started,
    such as the ENO hook); threads it starts later inherit the policy."""
    policy = f"SCHED_FIFO:{priority}"
    try:
        for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except (ProcessLookupError, FileNotFoundError):  # it exited meanwhile
        return f"gone (pid {pid})"
    except OSError as exc:
        return f"unchanged ({policy}: {exc.strerror})"
    return policy
