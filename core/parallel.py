"""Decode-step matrix-vector products on one or both cores, with the same bits either way.

A one-token decode step is a chain of matrix-vector products (GEMVs) bound by memory bandwidth.
Torch's BLAS (MKL) runs each on one core and, on this project's AMD CPU, streams weights at about
14 GB/s; the OpenBLAS that ships inside numpy's wheel streams them at about 18 GB/s on one core, and
splits one GEMV across two cores (bench/RESULTS.md). So one-row products (`linear` in torch's
forward, `row_product` in core.numpy_step) go to OpenBLAS through numpy, on zero-copy views of the
weights: one thread, or two inside `two_way(True)`. Both threads compute every output as the same
dot product in the same order, so the logits do not change by a single bit; `prepare` checks that
once per weight shape, and keeps a shape whose split would round differently on one thread. Where
numpy's BLAS is not OpenBLAS, or its thread count can't be set, `prepare` returns None and torch
runs the GEMV on one core.

OpenBLAS's thread count is process-wide, so `row_product` sets the count it needs before each call.
Several rows (a batch's decode step) go through the weight slice by slice (`Gemv.chunk`, about 4 MiB),
all rows per slice: the rows after the first read it from cache. A 3-row SmolLM2 step took ~40 ms on
two cores this way, against ~70 ms for torch's batched forward on one.

Both cores only pay off while the second one is free: with another process on it, threads that
wait for each other make a step about 2x slower. `CoreGovernor` watches the machine and allows the
two-core path only while nothing else runs (another process, or a second generation in this one).
"""
from __future__ import annotations

import ctypes
import glob
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ALIGN = 32  # padded output width: an odd split (GPT-2's 50,257) rounded some outputs differently
TWO_CORES_ENV = "SAMPLING_LAB_TWO_CORES"

_two_way: ContextVar[bool] = ContextVar("sampling_lab_two_way", default=False)


# ---------------------------------------------------------------- numpy's OpenBLAS

class OpenBlas:
    """numpy's OpenBLAS, found among the libraries this process has loaded, and its thread count."""

    # (set threads, get threads, config) as exported by numpy >= 2 (scipy-openblas), numpy 1.x, plain builds
    _NAMES = [(f"{p}openblas_set_num_threads{s}", f"{p}openblas_get_num_threads{s}", f"{p}openblas_get_config{s}")
              for p in ("scipy_", "") for s in ("64_", "", "_64")]

    def __init__(self, lib: ctypes.CDLL) -> None:
        for set_name, get_name, config_name in self._NAMES:
            if all(hasattr(lib, n) for n in (set_name, get_name, config_name)):
                break
        else:
            raise OSError("no openblas_set_num_threads in this library")
        self._set, self._get = getattr(lib, set_name), getattr(lib, get_name)
        self._set.argtypes, self._set.restype, self._get.restype = [ctypes.c_int], None, ctypes.c_int
        config = getattr(lib, config_name)
        config.restype = ctypes.c_char_p
        self.config: str = config().decode(errors="replace").strip()

    def threads(self, n: int) -> int:
        """Set the process-wide thread count; returns the previous one."""
        before = self._get()
        if before != n:
            self._set(n)
        return before

    @classmethod
    def find(cls) -> "OpenBlas | None":
        """The OpenBLAS numpy loaded (the very copy numpy calls), or None if there is none."""
        paths = []
        try:
            with open("/proc/self/maps") as f:
                paths = [line.split(maxsplit=5)[-1].strip() for line in f if "openblas" in line.lower()]
        except OSError:
            pass
        here = os.path.dirname(np.__file__)
        paths += glob.glob(os.path.join(here, "..", "numpy.libs", "*openblas*")) + \
            glob.glob(os.path.join(here, ".dylibs", "*openblas*"))
        for path in dict.fromkeys(p for p in paths if os.path.isfile(p)):
            try:
                return cls(ctypes.CDLL(path))
            except OSError:
                continue
        return None


BLAS = OpenBlas.find()


@dataclass(frozen=True)
class Gemv:
    """A weight (out, in) seen by numpy for row products: `matrix` is (in, width) for a
    column-major weight (x @ matrix) or (width, in) for a row-major one (matrix @ x); width >= out
    counts the zero padding after the real outputs."""

    matrix: np.ndarray
    column_major: bool
    two_threads: bool = False  # splitting it across two threads gives the same bits (checked in `prepare`)
    chunk: int = 0  # outputs per slice in `dot_rows` (a multiple of ALIGN); 0: the whole matrix per row

    @property
    def width(self) -> int:
        return self.matrix.shape[1 if self.column_major else 0]

    def part(self, start: int, stop: int) -> np.ndarray:
        """The matrix's outputs start:stop, a view."""
        return self.matrix[:, start:stop] if self.column_major else self.matrix[start:stop]

    def dot(self, x: np.ndarray, out: np.ndarray, part: np.ndarray | None = None) -> None:
        """out = the product with the row x (of `part`, a `part(...)` view, if given), on OpenBLAS's
        current thread count."""
        if part is None:
            if self.column_major:
                np.dot(x, self.matrix, out=out)
            else:
                np.dot(self.matrix, x, out=out)
        elif self.column_major:  # matmul: np.dot copies a strided slice first, matmul hands OpenBLAS its stride
            np.matmul(x, part, out=out)
        else:
            np.matmul(part, x, out=out)

    def dot_rows(self, x: np.ndarray, out: np.ndarray) -> None:
        """out[i] = the product with row x[i], for x (b, in). With `chunk`, slice by slice, every row
        in turn, so the rows after the first read the slice from cache, not from memory (as one GEMM,
        OpenBLAS packed the weights and ran ~2x slower than separate rows)."""
        if not self.chunk:
            for row, y in zip(x, out):
                self.dot(row, y)
            return
        for start in range(0, self.width, self.chunk):
            part = self.part(start, start + self.chunk)
            for row, y in zip(x, out):
                self.dot(row, y[start:start + self.chunk], part)


def padded_width(out_features: int) -> int:
    return -(-out_features // ALIGN) * ALIGN


def prepare(weight: Tensor) -> Gemv | None:
    """The `Gemv` of a float32 CPU weight, a view that shares its memory; None where OpenBLAS is
    missing or the layout needs a copy (torch then runs the product on one core)."""
    if BLAS is None or weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    out, inn = weight.shape
    if weight.stride(0) == 1 and weight.stride(1) >= out:  # column-major, stored (in, ld)
        ld = weight.stride(1)
        fits = (weight.storage_offset() + inn * ld) * 4 <= weight.untyped_storage().nbytes()
        stored = weight.t().as_strided((inn, ld), (ld, 1)) if fits else weight.t()
        matrix, column_major = stored.numpy(), True
    elif weight.is_contiguous():
        matrix, column_major = weight.numpy(), False
    else:
        return None
    return _checked(Gemv(matrix, column_major))


CHUNK_BYTES = 4 << 20  # a slice of weights that stays in cache while the rows after the first read it

_CHECKED: dict[tuple[tuple[int, ...], tuple[int, ...], bool], tuple[bool, int]] = {}


def _checked(gemv: Gemv) -> Gemv:
    """`gemv` with `two_threads` and `chunk` set where they keep OpenBLAS's bits: a product on two
    threads, or slice by slice, must give what one thread gives for the whole matrix. How OpenBLAS
    splits the work depends on the shape and layout only, so one check per shape is enough."""
    m = gemv.matrix
    key = (m.shape, m.strides, gemv.column_major)
    if key not in _CHECKED:
        inn = m.shape[0 if gemv.column_major else 1]
        x = np.random.default_rng(0).standard_normal((1, inn)).astype(np.float32)
        chunk = max(ALIGN, CHUNK_BYTES // (4 * inn) // ALIGN * ALIGN)
        sliced = replace(gemv, chunk=chunk) if chunk < gemv.width else None

        def products() -> list[np.ndarray]:  # the whole matrix's, then slice by slice
            out = [np.empty((1, gemv.width), np.float32) for _ in range(1 if sliced is None else 2)]
            gemv.dot(x[0], out[0][0])
            if sliced is not None:
                sliced.dot_rows(x, out[1])
            return out

        before = BLAS.threads(1)
        try:
            one = products()
            BLAS.threads(2)
            two = products()
        finally:
            BLAS.threads(before)
        agree = bool(np.array_equal(one[0], two[0]))
        # slices must give one thread's bits for the whole matrix on every thread count they run on
        runs = one[1:] + (two[1:] if agree else [])
        keep = sliced is not None and all(np.array_equal(one[0], r) for r in runs)
        _CHECKED[key] = agree, chunk if keep else 0
    agree, chunk = _CHECKED[key]
    return replace(gemv, two_threads=agree, chunk=chunk)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, gemv: Gemv | None = None) -> Tensor:
    """F.linear, with a shorter path for one row (a decode step): OpenBLAS on one thread, or on two
    inside `two_way(True)`, when `gemv` is given. The same bits on one thread or two."""
    if x.numel() != x.shape[-1]:
        return F.linear(x, weight, bias)
    out = weight.shape[0]
    if gemv is None or x.dtype != torch.float32 or x.requires_grad:
        row = x.reshape(1, -1)
        y = torch.mm(row, weight.t()) if bias is None else torch.addmm(bias, row, weight.t())
        return y.view(*x.shape[:-1], out)
    y = row_product(gemv, x.numpy().reshape(-1), out, None if bias is None else bias.detach().numpy())
    return torch.from_numpy(y).view(*x.shape[:-1], out)


def row_product(gemv: Gemv, x: np.ndarray, out: int, bias: np.ndarray | None = None) -> np.ndarray:
    """The weight times the float32 row x (in,), or each row of x (b, in), (+ bias): a new (out,) or
    (b, out) array, each row with the bits a row alone gets. On OpenBLAS's one thread, or on two
    inside `two_way(True)` where the split gives the same bits."""
    y = np.empty((*x.shape[:-1], gemv.width), np.float32)
    # set before every product, not put back after: another thread may have changed it meanwhile
    BLAS.threads(2 if gemv.two_threads and _two_way.get() else 1)
    if x.ndim == 1 or len(x) == 1:  # one row: the whole matrix at once, the fastest for a single pass
        gemv.dot(x.reshape(-1), y.reshape(-1))
    else:
        gemv.dot_rows(x, y)
    y = y if gemv.width == out else y[..., :out]
    if bias is not None:
        # numpy's float32 add rounds as torch's does, without a torch dispatch (~5 us after a GEMV)
        np.add(y, bias, out=y)
    return y


@contextmanager
def two_way(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread only), one-row `linear` calls use both cores."""
    token = _two_way.set(enabled)
    try:
        yield
    finally:
        _two_way.reset(token)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Within this block, torch's intra-op threads are held at one (process-wide; put back after).

    A decode step's torch ops (softmax, filters, topk over the vocabulary) gain nothing from a
    second thread, and the OpenMP worker that spins after each of them takes the core the next
    step's second OpenBLAS thread needs. With torch on its default two threads (a notebook that
    never calls core.runtime.configure_threads), a SmolLM2 token took 31-36 ms against 22 ms.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
