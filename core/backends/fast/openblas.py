"""numpy's OpenBLAS for the fast backend's one-row products: one core or two, with the same bits either way.

A one-token decode step is a chain of matrix-vector products (GEMVs) bound by memory bandwidth.
The OpenBLAS inside numpy's wheel streams weights faster than torch's MKL on one core, and can split
one GEMV across two cores (bench/RESULTS.md). Both threads compute every output as the same dot
product in the same order, so the logits do not change by a single bit; `_checked` verifies that
once per weight shape, and keeps a shape whose split would round differently on one thread.

Several rows (a batch's decode step) go through the weight slice by slice (`Gemv.chunk`, about
4 MiB), all rows per slice: the rows after the first read it from cache. OpenBLAS's thread count is
process-wide: only core.backends.fast.cores changes it (see `CoreLease`).
"""
from __future__ import annotations

import ctypes
import glob
import os
from contextvars import ContextVar
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

ALIGN = 32  # padded output width: an odd split (GPT-2's 50,257) rounded some outputs differently

# set inside an exclusive cores.CoreLease only: this thread's step may use two OpenBLAS threads
two_cores: ContextVar[bool] = ContextVar("sampling_lab_two_cores", default=False)


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
    two_threads: bool = False  # splitting it across two threads gives the same bits (checked in `_checked`)
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


def packed(*weights: Tensor) -> Gemv:
    """One column-major copy of weights (out_i, in) stacked along out: stored (in, width) with zero
    columns up to a multiple of ALIGN. OpenBLAS's one-row GEMV streams this layout faster than
    row-major unless the input is the wide side, and the padding lets it split the outputs evenly."""
    out = sum(t.shape[0] for t in weights)
    buf = weights[0].new_empty(weights[0].shape[1], padded_width(out))
    start = 0
    for t in weights:  # each straight into its columns: no stacked temporary (a cold start's cost is new memory)
        buf[:, start:start + t.shape[0]].copy_(t.detach().t())
        start += t.shape[0]
    buf[:, out:].zero_()
    return _checked(Gemv(buf.numpy(), column_major=True))


def shared(weight: Tensor) -> Gemv:
    """The weight (out, in) itself, row-major: numpy's view of the model's own memory (no copy)."""
    return _checked(Gemv(weight.detach().numpy(), column_major=False))


# a slice of weights that stays in cache while the rows after the first read it. Measured per layout
# (thread CPU time of SmolLM2's products, 3 rows, 2.5 MiB L2): row-major reads were fastest in
# 0.5-1 MiB slices (down: 17.0 -> 12.9 ms a step), column-major ones gained nothing below 4 MiB
CHUNK_BYTES = {False: 512 << 10, True: 4 << 20}  # by Gemv.column_major

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
        chunk = max(ALIGN, CHUNK_BYTES[gemv.column_major] // (4 * inn) // ALIGN * ALIGN)
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


def row_product(gemv: Gemv, x: np.ndarray, out: int, bias: np.ndarray | None = None) -> np.ndarray:
    """The weight times the float32 row x (in,), or each row of x (b, in), (+ bias): a new (out,) or
    (b, out) array, each row with the bits a row alone gets. On OpenBLAS's one thread, or on two
    when `two_cores` is set (by cores.CoreLease) and the split gives the same bits."""
    y = np.empty((*x.shape[:-1], gemv.width), np.float32)
    if two_cores.get():  # the lease is exclusive: no other step runs while the count changes
        BLAS.threads(2 if gemv.two_threads else 1)
    if x.ndim == 1 or len(x) == 1:  # one row: the whole matrix at once, the fastest for a single pass
        gemv.dot(x.reshape(-1), y.reshape(-1))
    else:
        gemv.dot_rows(x, y)
    y = y if gemv.width == out else y[..., :out]
    if bias is not None:
        # numpy's float32 add rounds as torch's does, without a torch dispatch (~5 us after a GEMV)
        np.add(y, bias, out=y)
    return y


