"""The two-core decode path (core/parallel.py): same bits as one core, views not copies, and a
governor that only allows it while the machine is otherwise idle."""
from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import core
from core.models import column_major, row_major
from core.parallel import CoreGovernor, linear, split, split_padding, two_way, two_way_view
from core.weights import load_checked, random_state


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


@pytest.mark.parametrize("out_features", [50257, 960, 64, 7])
def test_column_major_halves_are_views_with_the_same_bits(out_features: int) -> None:
    w = torch.randn(out_features, 48, generator=torch.Generator().manual_seed(out_features))
    cm = column_major(w)
    assert torch.equal(cm, w) and cm.stride() == (1, out_features)
    view = two_way_view(cm)
    assert view is not None and view.untyped_storage().data_ptr() == cm.untyped_storage().data_ptr()
    assert cm.untyped_storage().nbytes() == (w.numel() + split_padding(out_features)) * 4
    bias = torch.randn(out_features)
    for b in (None, bias):
        halves = split(cm, b)
        x = torch.randn(1, 1, 48)
        with two_way(True):
            y = linear(x, cm, b, halves)
        assert y.shape == (1, 1, out_features)
        assert torch.equal(y, F.linear(x, cm, b))  # bit for bit with one core on the same weights
        assert torch.equal(y, linear(x, cm, b, halves))
        torch.testing.assert_close(y, F.linear(x, w, b))


def test_row_major_halves_and_what_cannot_be_split() -> None:
    w, b = row_major(torch.randn(64, 40)), torch.randn(64)
    halves = split(w, b)
    assert halves is not None and halves.weight.shape == (2, 40, 32)
    assert halves.weight.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
    x = torch.randn(1, 40)
    with two_way(True):
        assert torch.equal(linear(x, w, b, halves), F.linear(x, w, b))
    assert two_way_view(torch.randn(40, 64).t().contiguous().t()) is None  # column-major without spare room
    assert two_way_view(torch.randn(62, 40)) is None                        # halves would be misaligned
    assert two_way_view(torch.randn(64, 80)[:, ::2]) is None                # strided


def test_linear_keeps_threads_and_only_splits_single_rows() -> None:
    w = column_major(torch.randn(96, 32))
    halves = split(w)
    before = torch.get_num_threads()
    x = torch.randn(3, 1, 32)  # three rows: the plain path
    with two_way(True):
        assert torch.equal(linear(x, w, None, halves), F.linear(x, w))
        linear(x[:1], w, None, halves)
    assert torch.get_num_threads() == before


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


def test_a_new_thread_is_pinned_back_to_the_configured_count() -> None:
    """A thread that starts during a two-core op copies torch's count (2); configure_threads, which
    app.py runs at the start of every script run, pins it back."""
    from core.runtime import configure_threads

    before = torch.get_num_threads()
    seen: list[int] = []

    def work() -> None:
        seen.append(torch.get_num_threads())
        configure_threads(1)
        seen.append(torch.get_num_threads())

    torch.set_num_threads(2)  # what core.parallel.linear leaves process-wide for the length of one op
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1]
