"""Decoding on both cores of a small CPU, with logits bit-identical to the one-core path.

A one-token decode step is a chain of matrix-vector products bound by memory bandwidth, and MKL
runs each one on a single core however many threads torch has (bench/: 2 threads, same speed).
Here each weight is viewed as two column halves and one batched matmul computes both halves, one
per core: about 1.3x faster steps. Every output is still the same dot product summed in the same
order, so the logits do not change by a single bit (tests/test_parallel.py).

The switch to two threads is torch.set_num_threads on the calling thread, for one op. A thread that
starts meanwhile copies torch's process-wide count (2) on its first op, so code that runs the model
on many threads pins the count at the start of each one (core.runtime.configure_threads; app.py
does it on every run).

Both cores only pay off while the second one is free: with another process on it, threads that
wait for each other make a step about 2x slower. `CoreGovernor` watches the machine and allows the
two-core path only while nothing else runs (another process, or a second generation in this one).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ALIGN = 16  # halves a multiple of 16 floats wide: at odd widths MKL rounded some columns differently
TWO_CORES_ENV = "SAMPLING_LAB_TWO_CORES"

_two_way: ContextVar[bool] = ContextVar("sampling_lab_two_way", default=False)


def split_padding(out_features: int) -> int:
    """Spare elements a column-major (in, out) weight needs after its end to be viewed as two halves."""
    return 2 * _half(out_features) - out_features


def _half(out_features: int) -> int:
    h = -(-out_features // 2)
    return -(-h // ALIGN) * ALIGN


@dataclass(frozen=True)
class Halves:
    """A weight's two column halves as one (2, in, h) view, and its bias padded to (2, 1, h)."""

    weight: Tensor
    bias: Tensor | None


def two_way_view(weight: Tensor) -> Tensor | None:
    """A (2, in, h) view of an (out, in) weight's column halves, for `torch.bmm`; None if its layout
    can't be split without a copy. Column-major weights (stored (in, out)) need `split_padding`
    spare elements in their storage: the second half's last columns read them and are dropped."""
    if weight.dim() != 2 or weight.device.type != "cpu":
        return None
    out, inn = weight.shape
    if weight.stride() == (1, out):  # column-major: stored (in, out)
        h = _half(out)
        end = weight.storage_offset() + inn * out + 2 * h - out
        if end * weight.element_size() > weight.untyped_storage().nbytes():
            return None
        return weight.as_strided((2, inn, h), (h, out, 1))
    if weight.is_contiguous() and out % (2 * ALIGN) == 0:  # row-major: rows split in two
        return weight.view(2, out // 2, inn).transpose(1, 2)
    return None


def split(weight: Tensor, bias: Tensor | None = None) -> Halves | None:
    """`Halves` for the two-core path, or None if the weight can't be split without a copy."""
    halves = two_way_view(weight)
    if halves is None:
        return None
    padded = None
    if bias is not None:  # added inside the matmul (baddbmm), as addmm does: same rounding
        h = halves.shape[-1]
        padded = bias.detach().new_zeros(2 * h)
        padded[:bias.shape[0]] = bias.detach()
        padded = padded.view(2, 1, h)
    return Halves(halves, padded)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, halves: Halves | None = None) -> Tensor:
    """F.linear, with a shorter path for one row (a decode step), which inside `two_way(True)`
    runs on two cores when `halves` is given. Same bits on every path."""
    if x.numel() != x.shape[-1]:
        return F.linear(x, weight, bias)
    out = weight.shape[0]
    row = x.reshape(1, -1)
    if halves is None or not _two_way.get():
        y = torch.mm(row, weight.t()) if bias is None else torch.addmm(bias, row, weight.t())
        return y.view(*x.shape[:-1], out)
    pair = row.expand(2, 1, -1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # for this one op; other threads keep theirs (but see the module docstring)
    try:  # (2, 1, h): the column halves side by side
        y = torch.bmm(pair, halves.weight) if halves.bias is None else torch.baddbmm(halves.bias, pair, halves.weight)
    finally:
        torch.set_num_threads(before)
    return y.view(-1)[:out].view(*x.shape[:-1], out)


@contextmanager
def two_way(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread only), one-row `linear` calls use both cores."""
    token = _two_way.set(enabled)
    try:
        yield
    finally:
        _two_way.reset(token)


# ---------------------------------------------------------------- when to use both cores

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
    `window_s`..2x`window_s` (off Linux the answer is no). After an idle spell the first `window_s`
    runs on one core while it measures. $SAMPLING_LAB_TWO_CORES = on / off overrides the machine
    check; the default is auto.
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
        """Count `request` as running until its first step (a long prompt's forward pass takes a core)."""
        with self._lock:
            self._last_step[request] = float("inf")

    def finish(self, request: int) -> None:
        with self._lock:
            self._last_step.pop(request, None)

    def _free(self, now: float) -> bool:
        base = self._base
        if base is None or now - base[0] > 4 * self.window_s:  # nothing recent to compare with
            reading = self._read()
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
            self._base = (now, reading)
        return self._machine_free


GOVERNOR = CoreGovernor()
