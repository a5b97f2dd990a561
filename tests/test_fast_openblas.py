"""The fast backend's GEMVs (core/backends/fast/openblas.py): numpy's OpenBLAS, the same bits on one
thread or two; the lease that owns its thread count; and the governor that allows two threads only
while the machine is otherwise idle (core/backends/fast/cores.py)."""
from __future__ import annotations

import ctypes
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import core
from core import backends
from core.backends.fast import FastCPUBackend, cores, openblas
from core.backends.fast.cores import GOVERNOR, LEASE, CoreGovernor
from core.backends.fast.openblas import ALIGN, BLAS, packed, padded_width, row_product, shared
from core.weights import load_checked, random_state

needs_openblas = pytest.mark.skipif(BLAS is None, reason="numpy's BLAS here is not OpenBLAS")


def _greedy_logits(lm: core.LanguageModel, two: bool, steps: int) -> list[torch.Tensor]:
    """Greedy steps through the fast backend, with the governor forced to two cores or one."""
    fast = FastCPUBackend(lm.model)
    out = []
    mode, GOVERNOR.mode = GOVERNOR.mode, "on" if two else "off"
    try:
        with torch.inference_mode():
            state = fast.new_state(1, 8 + steps)
            logits = fast.prefill(torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]]), state)
            for _ in range(steps):
                logits = fast.step(logits.argmax(-1), state)
                out.append(logits)
    finally:
        GOVERNOR.mode = mode
    return out


class _CountingBlas:
    """BLAS with every thread count asked for recorded."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def threads(self, n: int) -> int:
        self.asked.append(n)
        return BLAS.threads(n)


def test_numpy_here_brings_openblas() -> None:
    # the pinned numpy wheel carries OpenBLAS: without it the plain backend runs every step
    assert BLAS is not None and BLAS.config.startswith("OpenBLAS")


@needs_openblas
@pytest.mark.parametrize("out_features", [50257, 960, 64, 7])
def test_packed_weight_is_padded_column_major_with_the_same_bits(out_features: int) -> None:
    w = torch.randn(out_features, 48, generator=torch.Generator().manual_seed(out_features))
    gemv = packed(w)
    width = padded_width(out_features)
    assert width % ALIGN == 0 and width - out_features < ALIGN
    assert gemv.column_major and gemv.matrix.shape == (48, width)
    assert np.array_equal(gemv.matrix[:, :out_features], w.numpy().T) and not gemv.matrix[:, out_features:].any()
    assert gemv.two_threads                           # the padding makes an even split
    x = torch.randn(48)
    for b in (None, torch.randn(out_features)):
        bias = None if b is None else b.numpy()
        with LEASE.hold(two=False):
            one = row_product(gemv, x.numpy(), out_features, bias)
        with LEASE.hold(two=True):
            two = row_product(gemv, x.numpy(), out_features, bias)
        assert one.shape == two.shape == (out_features,)
        assert np.array_equal(one, two)               # bit for bit on one thread and on two
        torch.testing.assert_close(torch.from_numpy(one), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@needs_openblas
@pytest.mark.parametrize("layout", [packed, shared])
def test_rows_go_slice_by_slice_with_each_rows_own_bits(layout) -> None:
    # 8 MiB of weights: more than a slice (CHUNK_BYTES), so rows after the first read it from cache
    w = torch.randn(4100, 512, generator=torch.Generator().manual_seed(3))
    gemv = layout(w)
    assert 0 < gemv.chunk < gemv.width and gemv.chunk % ALIGN == 0
    assert gemv.chunk * 512 * 4 <= openblas.CHUNK_BYTES[gemv.column_major]
    rows, bias = torch.randn(3, 512), torch.randn(4100)
    for two in (False, True):
        with LEASE.hold(two):
            together = row_product(gemv, rows.numpy(), 4100, bias.numpy())
            alone = [row_product(gemv, r, 4100, bias.numpy()) for r in rows.numpy()]
        assert together.shape == (3, 4100)
        for i in range(3):
            assert np.array_equal(together[i], alone[i]), f"row {i}, two threads: {two}"
    torch.testing.assert_close(torch.from_numpy(together), F.linear(rows, w, bias), atol=1e-4, rtol=1e-4)


def test_generate_many_columns_are_the_single_generations_bit_for_bit(smollm2: core.LanguageModel) -> None:
    # the side-by-side page's columns step together (one pass over the weights for all rows); each
    # must still be exactly what that setting alone generates with the same seed
    assert smollm2.backend == "fast"
    cfgs = [core.SamplingConfig(temperature=t, top_p=p, seed=5) for t, p in ((0.7, 1.0), (1.0, 0.9), (1.5, 1.0))]
    smollm2.prefixes.clear()  # each generation reads its own prompt: no help from an earlier one
    columns = list(zip(*core.generate_many(smollm2, "The capital of France is", cfgs, 12, stop_at_eos=False)))
    for cfg, column in zip(cfgs, columns):
        smollm2.prefixes.clear()
        assert list(column) == list(core.generate(smollm2, "The capital of France is", cfg, 12, stop_at_eos=False))


@needs_openblas
def test_shared_weight_is_the_models_own_memory() -> None:
    w = torch.randn(64, 40)
    gemv = shared(w)
    assert not gemv.column_major and gemv.matrix.ctypes.data == w.data_ptr()  # no copy
    x = torch.randn(40)
    with LEASE.hold(two=True):
        torch.testing.assert_close(torch.from_numpy(row_product(gemv, x.numpy(), 64)), F.linear(x, w))


@needs_openblas
def test_thread_count_changes_only_inside_a_two_core_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    gemv = packed(torch.randn(96, 32))
    counting = _CountingBlas()
    monkeypatch.setattr(openblas, "BLAS", counting)
    x = np.ones(32, np.float32)
    with LEASE.hold(two=False):
        row_product(gemv, x, 96)
    assert counting.asked == []  # shared steps never touch the process-wide count
    with LEASE.hold(two=True):
        row_product(gemv, x, 96)
        row_product(replace(gemv, two_threads=False), x, 96)  # a split that would round differently: one
    assert counting.asked == [2, 1]
    assert BLAS.threads(1) == 1  # put back when the lease ends


@needs_openblas
def test_a_two_core_step_waits_for_one_core_steps_to_finish() -> None:
    order: list[str] = []
    inside = threading.Event()

    def one_core() -> None:
        with LEASE.hold(two=False):
            inside.set()
            threading.Event().wait(0.2)
            order.append("one core done")

    t = threading.Thread(target=one_core)
    t.start()
    inside.wait()
    with LEASE.hold(two=True):
        order.append("two cores")
    t.join()
    assert order == ["one core done", "two cores"]


def test_without_openblas_the_plain_backend_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy built on another BLAS: the fast backend does not apply, and choose falls back to torch."""
    model = core.load_model("llama-tiny", backend="torch").model
    monkeypatch.setattr("core.backends.fast.BLAS", None)
    assert backends.choose(model).name == "torch"
    with pytest.raises(backends.BackendUnavailable, match="OpenBLAS"):
        backends.choose(model, "fast")
    with pytest.raises(OSError, match="no openblas_set_num_threads"):
        openblas.OpenBlas(ctypes.CDLL(None))  # this process's own symbols: no OpenBLAS among them


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_two_core_decode_is_bit_identical(preset: str) -> None:
    lm = core.load_model(preset, backend="torch")
    cfg = lm.model.cfg
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen) * 0.1 if k.endswith(".bias") else v  # biases are 0 at init
             for k, v in random_state(cfg).items()}
    lm = replace(lm, model=load_checked(cfg, state))
    one, two = _greedy_logits(lm, False, 12), _greedy_logits(lm, True, 12)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_two_core_decode_is_bit_identical_on_the_bundled_model(smollm2: core.LanguageModel) -> None:
    one, two = _greedy_logits(smollm2, False, 4), _greedy_logits(smollm2, True, 4)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_generate_gives_the_same_steps_with_the_governor_on_or_off(tiny: core.LanguageModel) -> None:
    cfg = core.SamplingConfig(temperature=0.9, top_k=50, seed=7)
    runs = []
    for mode in ("off", "on"):
        GOVERNOR.mode = mode
        try:
            runs.append([(s.token_id, s.prob, s.entropy, s.top_before) for s in core.generate(tiny, "Hi", cfg, 15)])
        finally:
            GOVERNOR.mode = "auto"
    assert runs[0] == runs[1]


def test_generate_leaves_torch_threads_alone(tiny: core.LanguageModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """No process-wide setting changes per request: torch's thread count is the caller's throughout."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    greedy = core.SamplingConfig(temperature=0)
    list(core.generate(tiny, "Every effort moves", greedy, 6, stop_at_eos=False))
    tiny.next_token_logits([1, 2, 3])
    assert calls == []


class _Machine:
    """A fake /proc: ticks advance with the fake clock; `others` and `own` are cores' worth of use."""

    def __init__(self, cpus: int = 2) -> None:
        self.t, self.cpus, self.others, self.own = 0.0, cpus, 0.0, 1.0
        self.busy = self.total = self.own_ticks = 0.0

    def advance(self, seconds: float) -> None:
        ticks = seconds * 100
        self.t += seconds
        self.total += ticks * self.cpus
        self.busy += ticks * (self.others + self.own)
        self.own_ticks += ticks * self.own

    def read(self) -> tuple[int, int, int]:
        return int(self.busy), int(self.total), int(self.own_ticks)


def _governor(machine: _Machine, **kw) -> CoreGovernor:
    return CoreGovernor(read=machine.read, clock=lambda: machine.t, mode=kw.pop("mode", "auto"), **kw)


def _steps(gov: CoreGovernor, machine: _Machine, n: int, request: int = 1, dt: float = 0.025) -> list[bool]:
    out = []
    for _ in range(n):
        out.append(gov.allow(request))
        machine.advance(dt)
    return out


def test_governor_allows_two_cores_only_on_an_idle_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    m = _Machine()
    gov = _governor(m)
    first = _steps(gov, m, 20)
    assert not first[0] and first[-1]          # measures first, then allows
    assert gov.others_busy is not None and gov.others_busy < 0.1
    m.others = 1.0                              # another process starts on the other core
    later = _steps(gov, m, 20)
    assert not later[-1] and gov.others_busy > 0.5
    m.others = 0.0
    assert _steps(gov, m, 20)[-1]               # and it comes back once the process is gone


def test_governor_measures_the_machine_while_the_prompt_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    m = _Machine()
    gov = _governor(m)
    gov.begin(1)
    m.advance(1.5)                              # a long prompt's forward pass: a whole window and more
    assert gov.allow(1)                         # so the very first step may use both cores
    gov.finish(1)
    m.others = 1.0
    gov.begin(2)
    m.advance(1.5)
    assert not gov.allow(2)                     # another process was busy meanwhile
    gov.finish(2)
    m.others = 0.0
    gov.begin(3)
    m.advance(0.05)                             # a short prompt: half a window
    steps = _steps(gov, m, 4, request=3)       # 25 ms apart
    assert not steps[0] and steps[-1]           # one core until a window has passed since begin


def test_governor_on_a_bigger_machine_needs_only_two_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    m = _Machine(cpus=4)
    m.others = 1.5                              # a core and a half busy: two of four still free
    gov = _governor(m)
    assert _steps(gov, m, 20)[-1]
    m.others = 2.5
    assert not _steps(gov, m, 20)[-1]


def test_governor_one_core_while_two_requests_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    m = _Machine()
    gov = _governor(m)
    _steps(gov, m, 20, request=1)
    assert gov.allow(1)
    assert not gov.allow(2) and not gov.allow(1)   # both stepping: neither gets the second core
    gov.finish(2)
    assert gov.allow(1)
    gov.allow(3)
    m.advance(1.0)                                  # request 3 went quiet without finishing
    assert _steps(gov, m, 10, request=1)[-1]
    gov.begin(4)                                    # request 4 reads its prompt, however long that takes
    m.advance(5.0)
    assert not any(_steps(gov, m, 10, request=1))
    gov.finish(4)
    assert _steps(gov, m, 10, request=1)[-1]


def test_governor_modes_and_unknown_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    m = _Machine()
    m.others = 1.0
    assert all(_steps(_governor(m, mode="on"), m, 3))
    assert not any(_steps(_governor(m, mode="off"), m, 20))
    assert not any(_steps(CoreGovernor(read=lambda: None, clock=lambda: m.t, mode="auto"), m, 20))  # no /proc
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert not any(_steps(_governor(_Machine(cpus=1), mode="on"), m, 3))
    monkeypatch.setenv("SAMPLING_LAB_TWO_CORES", "sometimes")
    with pytest.raises(ValueError, match="SAMPLING_LAB_TWO_CORES must be auto, on or off, got 'sometimes'"):
        CoreGovernor()
