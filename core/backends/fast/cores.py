"""When the fast backend's steps use both cores, and the one owner of OpenBLAS's thread count.

Both cores only pay off while the second one is free: with another process on it, threads that
wait for each other make a step about 2x slower. `CoreGovernor` watches the machine and allows the
two-core path only while nothing else runs (another process, or a second request in this one).

OpenBLAS's thread count is process-wide, so `CoreLease` makes changing it safe: steps on one core
share the lease (the count stays 1), and a two-core step holds it alone, sets the count per product,
and puts 1 back before letting go. Concurrent requests therefore never see each other's count.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .openblas import BLAS, two_cores

TWO_CORES_ENV = "SAMPLING_LAB_TWO_CORES"


class CoreLease:
    """Shared (one OpenBLAS thread) or exclusive (two) use of numpy's OpenBLAS by the fast backend."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        if BLAS is not None:
            BLAS.threads(1)  # once, at load: shared steps rely on it

    @contextmanager
    def hold(self, two: bool) -> Iterator[None]:
        """Run a step on one core (shared with other one-core steps) or, with two=True, on two (alone)."""
        with self._cond:
            while self._exclusive or (two and self._shared):
                self._cond.wait()
            if two:
                self._exclusive = True
            else:
                self._shared += 1
        token = two_cores.set(two)
        try:
            yield
        finally:
            two_cores.reset(token)
            if two and BLAS is not None:
                BLAS.threads(1)
            with self._cond:
                if two:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


def cpu_times() -> list[int] | None:
    """All CPUs' tick counters from /proc/stat (user nice system idle iowait irq softirq steal ...),
    or None off Linux."""
    try:
        with open("/proc/stat", "rb") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _read_proc() -> tuple[int, int, int] | None:
    """(busy ticks of all CPUs, all ticks of all CPUs, ticks this process ran), or None off Linux."""
    fields = cpu_times()
    if fields is None:
        return None
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    after_name = stat[stat.rindex(b")") + 2:].split()
    own = int(after_name[11]) + int(after_name[12])  # utime + stime
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8]), own


class CoreGovernor:
    """Decides, per decode step, whether the two-core path may run.

    Yes only if this machine has two or more cores, no other generation in this process stepped
    within `recent_s` (or is reading its prompt), and other processes left two cores free (on 2
    cores: they used less than `busy_cores` of a core), measured from /proc over the last
    `window_s`..2x`window_s` (off Linux the answer is no). A request's first window is its prompt's
    forward pass, measured from `begin`; a step before `window_s` has passed runs on one core.
    $SAMPLING_LAB_TWO_CORES = on / off overrides the machine check; the default is auto.
    """

    def __init__(self, window_s: float = 0.1, busy_cores: float = 0.25, recent_s: float = 0.5,
                 read: Callable[[], tuple[int, int, int] | None] = _read_proc,
                 clock: Callable[[], float] = time.monotonic, mode: str | None = None) -> None:
        mode = (os.environ.get(TWO_CORES_ENV, "auto") if mode is None else mode).strip().lower() or "auto"
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"{TWO_CORES_ENV} must be auto, on or off, got {mode!r}")
        self.mode = mode
        self.cpus = os.cpu_count() or 1  # os.cpu_count() costs ~20 us: read once
        self.window_s, self.busy_cores, self.recent_s = window_s, busy_cores, recent_s
        self._read, self._clock = read, clock
        self._lock = threading.Lock()
        self._last_step: dict[int, float] = {}  # request id -> time of its last step
        self._base: tuple[float, tuple[int, int, int]] | None = None  # where the current window starts
        self._base_at_begin = False  # the base was read by `begin`: a window of any length is current
        self._checked = 0.0
        self._machine_free = False
        self.others_busy: float | None = None  # cores' worth other processes used, last measured

    def allow(self, request: int) -> bool:
        """Record a step of `request` and say whether it may use both cores."""
        if self.mode == "off" or self.cpus < 2:
            return False
        now = self._clock()
        with self._lock:
            self._last_step[request] = now
            for other, t in list(self._last_step.items()):
                if now - t > self.recent_s:
                    del self._last_step[other]
            alone = len(self._last_step) == 1
            return alone and (self.mode == "on" or self._free(now))

    def begin(self, request: int) -> None:
        """Count `request` as running until its first step (a long prompt's forward pass takes a core),
        and start measuring the machine: the prompt's forward pass is the first window."""
        with self._lock:
            self._last_step[request] = float("inf")
            if self.mode == "auto" and self.cpus >= 2:
                reading = self._read()
                self._base = None if reading is None else (self._clock(), reading)
                self._base_at_begin, self._machine_free = True, False

    def finish(self, request: int) -> None:
        with self._lock:
            self._last_step.pop(request, None)

    def _free(self, now: float) -> bool:
        base = self._base
        if base is None or (now - base[0] > 4 * self.window_s and not self._base_at_begin):
            reading = self._read()  # nothing recent to compare with
            self._base = None if reading is None else (now, reading)
            self._machine_free = False
            return False
        if now - base[0] < self.window_s or now - self._checked < self.window_s / 2:
            return self._machine_free
        reading = self._read()
        if reading is None:
            self._machine_free = False
            return False
        (busy0, total0, own0), (busy1, total1, own1) = base[1], reading
        elapsed = (total1 - total0) / self.cpus  # ticks of wall time
        if elapsed > 0:
            self.others_busy = max(0, (busy1 - busy0) - (own1 - own0)) / elapsed
            # our two threads need two cores: the free ones beyond the first two must absorb the rest
            self._machine_free = self.others_busy < self.cpus - 2 + self.busy_cores
        self._checked = now
        if now - base[0] >= 2 * self.window_s:
            self._base, self._base_at_begin = (now, reading), False
        return self._machine_free


GOVERNOR = CoreGovernor()
LEASE = CoreLease()
