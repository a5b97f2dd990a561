"""The decode-step GEMVs (core/parallel.py): numpy's OpenBLAS on zero-copy views, the same bits on
one thread or two, and a governor that only allows two while the machine is otherwise idle."""
from __future__ import annotations

import ctypes
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import core
import core.parallel as parallel
from core.models import column_major, row_major
from core.parallel import (ALIGN, BLAS, CoreGovernor, linear, one_torch_thread, padded_width, prepare, row_product,
                           two_way)
from core.weights import load_checked, random_state

needs_openblas = pytest.mark.skipif(BLAS is None, reason="numpy's BLAS here is not OpenBLAS")


def _greedy_logits(lm: core.LanguageModel, two: bool, steps: int) -> list[torch.Tensor]:
    m = lm.model
    out = []
    with torch.inference_mode():
        cache = m.new_cache(1, 8 + steps)
        logits = m(torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]]), cache, last_only=True)
        for _ in range(steps):
            with two_way(two):
                logits = m(logits[:, -1].argmax(-1, keepdim=True), cache, last_only=True)
            out.append(logits)
    return out


class _CountingBlas:
    """BLAS with every thread count that `linear` asks for recorded."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def threads(self, n: int) -> int:
        self.asked.append(n)
        return BLAS.threads(n)


def test_numpy_here_brings_openblas() -> None:
    # the pinned numpy wheel carries OpenBLAS: without it decode quietly falls back to one core
    assert BLAS is not None and BLAS.config.startswith("OpenBLAS")


@needs_openblas
@pytest.mark.parametrize("out_features", [50257, 960, 64, 7])
def test_column_major_weight_is_a_padded_view_with_the_same_bits(out_features: int) -> None:
    w = torch.randn(out_features, 48, generator=torch.Generator().manual_seed(out_features))
    cm = column_major(w)
    width = padded_width(out_features)
    assert width % ALIGN == 0 and width - out_features < ALIGN
    assert torch.equal(cm, w) and cm.stride() == (1, width)
    gemv = prepare(cm)
    assert gemv is not None and gemv.column_major and gemv.matrix.shape == (48, width)
    assert gemv.matrix.ctypes.data == cm.data_ptr()  # a view: no second copy of the weight
    assert gemv.two_threads                           # the padding makes an even split
    x = torch.randn(1, 1, 48)
    for b in (None, torch.randn(out_features)):
        one = linear(x, cm, b, gemv)
        with two_way(True):
            two = linear(x, cm, b, gemv)
        assert one.shape == two.shape == (1, 1, out_features)
        assert torch.equal(one, two)                  # bit for bit on one thread and on two
        torch.testing.assert_close(one, F.linear(x, w, b))


@needs_openblas
@pytest.mark.parametrize("layout", [column_major, row_major])
def test_rows_go_slice_by_slice_with_each_rows_own_bits(layout) -> None:
    # 8 MiB of weights: more than a slice (CHUNK_BYTES), so rows after the first read it from cache
    w = layout(torch.randn(4100, 512, generator=torch.Generator().manual_seed(3)))
    gemv = prepare(w)
    assert gemv is not None and 0 < gemv.chunk < gemv.width and gemv.chunk % ALIGN == 0
    assert gemv.chunk * 512 * 4 <= parallel.CHUNK_BYTES
    rows, bias = torch.randn(3, 512), torch.randn(4100)
    for two in (False, True):
        with two_way(two):
            together = row_product(gemv, rows.numpy(), 4100, bias.numpy())
            alone = [row_product(gemv, r, 4100, bias.numpy()) for r in rows.numpy()]
        assert together.shape == (3, 4100)
        for i in range(3):
            assert np.array_equal(together[i], alone[i]), f"row {i}, two threads: {two}"
    torch.testing.assert_close(torch.from_numpy(together), F.linear(rows, w, bias), atol=1e-4, rtol=1e-4)


def test_generate_many_columns_are_the_single_generations_bit_for_bit(smollm2: core.LanguageModel) -> None:
    # the side-by-side page's columns step together (one pass over the weights for all rows); each
    # must still be exactly what that setting alone generates with the same seed
    cfgs = [core.SamplingConfig(temperature=t, top_p=p, seed=5) for t, p in ((0.7, 1.0), (1.0, 0.9), (1.5, 1.0))]
    columns = list(zip(*core.generate_many(smollm2, "The capital of France is", cfgs, 12, stop_at_eos=False)))
    for cfg, column in zip(cfgs, columns):
        assert list(column) == list(core.generate(smollm2, "The capital of France is", cfg, 12, stop_at_eos=False))


@needs_openblas
def test_row_major_weight_and_what_cannot_be_prepared() -> None:
    w, b = row_major(torch.randn(64, 40)), torch.randn(64)
    gemv = prepare(w)
    assert gemv is not None and not gemv.column_major and gemv.matrix.ctypes.data == w.data_ptr()
    x = torch.randn(1, 40)
    with two_way(True):
        torch.testing.assert_close(linear(x, w, b, gemv), F.linear(x, w, b))
    x.requires_grad_()  # numpy can't see a tensor that tracks gradients: torch computes it
    torch.testing.assert_close(linear(x, w, b, gemv), F.linear(x, w, b))
    assert prepare(torch.randn(64, 80)[:, ::2]) is None                 # strided: would need a copy
    assert prepare(torch.randn(64, 40, dtype=torch.bfloat16)) is None  # OpenBLAS has no bfloat16
    assert prepare(torch.randn(3, 64, 40)) is None


@needs_openblas
def test_linear_asks_for_two_threads_only_inside_two_way(monkeypatch: pytest.MonkeyPatch) -> None:
    w = column_major(torch.randn(96, 32))
    gemv = prepare(w)
    counting = _CountingBlas()
    monkeypatch.setattr(parallel, "BLAS", counting)
    before = BLAS.threads(1)
    try:
        x = torch.randn(1, 32)
        linear(x, w, None, gemv)
        with two_way(True):
            linear(x, w, None, gemv)
            assert torch.equal(linear(x.expand(3, 32), w, None, gemv), F.linear(x.expand(3, 32), w))  # 3 rows: torch
        assert counting.asked == [1, 2]   # each call sets the count it needs; 3 rows never reach OpenBLAS
        # a shape whose two-thread split would round differently stays on one thread
        counting.asked.clear()
        with two_way(True):
            linear(x, w, None, replace(gemv, two_threads=False))
        assert counting.asked == [1]
    finally:
        BLAS.threads(before)


def test_without_openblas_decode_runs_on_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy built on another BLAS: no `Gemv`s, and torch computes the same logits on one core."""
    ours = core.load_model("llama-tiny")
    state = random_state(ours.model.cfg)
    ours = replace(ours, model=load_checked(ours.model.cfg, state))
    expected = _greedy_logits(ours, True, 6)
    monkeypatch.setattr(parallel, "BLAS", None)
    plain = replace(ours, model=load_checked(ours.model.cfg, state))
    assert plain.model.layers[0].qkv.gemv is None and plain.model.head.gemv is None
    for a, b in zip(expected, _greedy_logits(plain, True, 6)):
        torch.testing.assert_close(a, b)
    with pytest.raises(OSError, match="no openblas_set_num_threads"):
        parallel.OpenBlas(ctypes.CDLL(None))  # this process's own symbols: no OpenBLAS among them


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_two_core_decode_is_bit_identical(preset: str) -> None:
    lm = core.load_model(preset)
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
    from core.parallel import GOVERNOR

    cfg = core.SamplingConfig(temperature=0.9, top_k=50, seed=7)
    runs = []
    for mode in ("off", "on"):
        GOVERNOR.mode = mode
        try:
            runs.append([(s.token_id, s.prob, s.entropy, s.top_before) for s in core.generate(tiny, "Hi", cfg, 15)])
        finally:
            GOVERNOR.mode = "auto"
    assert runs[0] == runs[1]


def test_one_torch_thread_holds_torch_at_one_and_puts_the_count_back() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), one_torch_thread():
            raise RuntimeError("a failing step")
        assert torch.get_num_threads() == 2  # put back on the way out of an error too
    finally:
        torch.set_num_threads(before)


def test_generate_steps_run_on_one_torch_thread_and_the_caller_keeps_its_own(
        tiny: core.LanguageModel, monkeypatch: pytest.MonkeyPatch) -> None:
    # With torch on two threads the OpenMP worker spinning after each per-token op took the core the
    # next step's second OpenBLAS thread needed (a SmolLM2 token 31-36 ms against 22 ms).
    seen: list[tuple[int, int]] = []  # (tokens in the forward's input, torch threads then)
    forward = type(tiny.model).forward

    def spy(self, idx, *args, **kwargs):
        seen.append((idx.shape[1], torch.get_num_threads()))
        return forward(self, idx, *args, **kwargs)

    monkeypatch.setattr(type(tiny.model), "forward", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        greedy = core.SamplingConfig(temperature=0)
        caller = [torch.get_num_threads() for _ in core.generate(tiny, "Every effort moves", greedy, 6,
                                                                  stop_at_eos=False)]
    finally:
        torch.set_num_threads(before)
    assert caller == [2] * 6  # between steps, the caller's code runs on its own setting
    prompt, *steps = seen
    assert prompt == (3, 2)  # the prompt's forward pass keeps the caller's threads (it gains from two)
    assert steps == [(1, 1)] * 5


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
