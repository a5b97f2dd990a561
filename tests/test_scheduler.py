"""core/scheduler.py: concurrent generations' steps batched together, each row with its alone bits;
requests join and leave between steps; a failing row fails alone; bounded, with Busy beyond."""
from __future__ import annotations

import copy
import threading

import pytest
import torch

import core
from core.backends import Backend, TorchBackend
from core.backends.fast.openblas import BLAS
from core.loading import place
from core.models import KVCache
from core.scheduler import Busy, SchedulerConfig, StepScheduler

needs_openblas = pytest.mark.skipif(BLAS is None, reason="numpy's BLAS here is not OpenBLAS: no fast backend")
# (prompt length, rows): six requests at six positions, two of them several columns of one request
REQUESTS = [(3, 1), (7, 1), (12, 2), (5, 1), (20, 1), (9, 3)]


def _clone(state: KVCache) -> KVCache:
    out = copy.copy(state)
    out.k, out.v = [k.clone() for k in state.k], [v.clone() for v in state.v]
    return out


def _requests(engine: Backend, seed: int = 0) -> list[tuple[torch.Tensor, KVCache]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for length, rows in REQUESTS:
        state = engine.new_state(rows, 40)
        engine.prefill(torch.randint(0, engine.vocab_size, (rows, length), generator=g), state)
        out.append((torch.randint(0, engine.vocab_size, (rows,), generator=g), state))
    return out


def _assert_alone_bits(engine: Backend, what: str) -> None:
    """Two steps of six requests batched by step_many: every row's logits and cache are bit for bit
    what the request gets stepped alone."""
    with torch.inference_mode():
        together = _requests(engine)
        alone = [(t, _clone(s)) for t, s in together]
        for step in range(2):
            batched = engine.step_many([(t + step, s) for t, s in together])
            for i, (t, s) in enumerate(alone):
                one = engine.step(t + step, s)
                assert isinstance(batched[i], torch.Tensor), f"{what}: request {i} failed: {batched[i]!r}"
                assert torch.equal(batched[i], one), f"{what}: request {i}, step {step} differs from alone"
        for i, ((_, s), (_, a)) in enumerate(zip(together, alone)):
            assert s.pos == a.pos == REQUESTS[i][0] + 2
            for x, y in zip(s.k + s.v, a.k + a.v):
                assert torch.equal(x[:, :, :s.pos], y[:, :, :a.pos]), f"{what}: request {i}'s cache differs"


@needs_openblas
@pytest.mark.parametrize("mode", ["off", "on"])  # the batched step on one core or two
def test_fast_step_many_gives_each_row_its_alone_bits(tiny: core.LanguageModel, mode: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from core.backends.fast.cores import GOVERNOR

    monkeypatch.setattr(GOVERNOR, "mode", mode)
    assert tiny.engine.name == "fast" and tiny.engine.batches_requests
    _assert_alone_bits(tiny.engine, f"gpt2-tiny, two cores {mode}")


@needs_openblas
def test_fast_step_many_alone_bits_on_smollm2(smollm2: core.LanguageModel) -> None:
    _assert_alone_bits(smollm2.engine, "SmolLM2")  # Llama: RoPE angles per row, grouped-query attention


def test_torch_step_many_gives_each_row_its_alone_bits(tiny: core.LanguageModel) -> None:
    engine = TorchBackend(tiny.model)
    assert not engine.batches_requests  # one request after another: batching only within a request
    _assert_alone_bits(engine, "plain backend")


@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_a_failing_request_never_fails_the_others(tiny: core.LanguageModel, backend: str) -> None:
    engine = tiny.engine if backend == "fast" else TorchBackend(tiny.model)
    if engine.name != backend:
        pytest.skip("no fast backend here")
    with torch.inference_mode():
        requests = _requests(engine)
        alone = [engine.step(t, _clone(s)) for t, s in requests]
        full = engine.new_state(1, 2)
        engine.prefill(torch.tensor([[1, 2]]), full)  # no room for another token
        wrong = (torch.tensor([1, 2]), engine.new_state(1, 8))  # two tokens for a one-row state
        engine.prefill(torch.tensor([[3]]), wrong[1])
        out = engine.step_many([requests[0], (torch.tensor([5]), full), *requests[1:3], wrong, *requests[3:]])
    assert isinstance(out[1], ValueError) and "max_len" in str(out[1])
    assert isinstance(out[4], Exception)
    assert full.pos == 2 and wrong[1].pos == 1  # a failed step moves nothing
    for got, want in zip(out[:1] + out[2:4] + out[5:], alone):
        assert torch.equal(got, want)


class _Recording(TorchBackend):
    """The plain backend, recording how many requests each step_many call ran together."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.calls: list[int] = []

    def step_many(self, requests):
        self.calls.append(len(requests))
        return super().step_many(requests)


def test_joined_requests_step_as_one_batch(tiny: core.LanguageModel) -> None:
    """Three joined requests submitting from three threads run as one step_many call: the worker
    waits (up to gather_s, long here) for every joined request before stepping."""
    engine = _Recording(tiny.model)
    scheduler = StepScheduler(engine, SchedulerConfig(gather_s=30.0))
    with torch.inference_mode():
        requests = _requests(engine)[:3]
        tickets = [scheduler.join(s.batch) for _, s in requests]
        for t in tickets:
            t.prompt_read()  # not waited for before this
        assert scheduler.rows == 4
        results: list[torch.Tensor | None] = [None] * 3

        def go(i: int) -> None:
            with torch.inference_mode():
                results[i] = tickets[i].step(*requests[i])

        threads = [threading.Thread(target=go, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert engine.calls == [3]
    assert all(r is not None and r.shape == (s.batch, tiny.vocab_size) for r, (_, s) in zip(results, requests))
    for t in tickets:
        t.leave()
    assert scheduler.rows == 0
    with pytest.raises(RuntimeError, match="left the scheduler"):
        tickets[0].step(*requests[0])


def test_busy_when_rows_and_queue_are_full(tiny: core.LanguageModel) -> None:
    scheduler = StepScheduler(TorchBackend(tiny.model), SchedulerConfig(max_rows=3, max_waiting=1, wait_s=60))
    first, second = scheduler.join(2), scheduler.join(1)
    admitted: list[object] = []
    waiter = threading.Thread(target=lambda: admitted.append(scheduler.join(1)))
    waiter.start()  # no room: waits in the queue
    while not scheduler._waiting:
        threading.Event().wait(0.01)
    with pytest.raises(Busy, match=r"busy: 3 requests ahead of you \(2 generating, 1 waiting; the queue is full\)") as busy:
        scheduler.join(1)  # the queue is full too: at once
    assert busy.value.ahead == 3
    with pytest.raises(ValueError, match="1 to 3 rows"):
        scheduler.join(4)
    second.leave()  # room for the waiting one
    waiter.join(60)
    assert len(admitted) == 1 and scheduler.rows == 3
    first.leave()
    admitted[0].leave()  # type: ignore[attr-defined]
    assert scheduler.rows == 0


def test_busy_after_waiting_too_long(tiny: core.LanguageModel) -> None:
    scheduler = StepScheduler(TorchBackend(tiny.model), SchedulerConfig(max_rows=1, wait_s=0.05))
    with scheduler.joined():
        with pytest.raises(Busy, match=r"1 request ahead of you \(1 generating, 0 waiting; no room within 0.05 s\)"):
            scheduler.join()
    assert scheduler.rows == 0 and not scheduler._waiting


def test_generation_joins_and_closing_it_leaves_at_once(tiny: core.LanguageModel) -> None:
    configs = [core.SamplingConfig(temperature=t) for t in (0.5, 1.0, 1.5)]
    gen = core.generate_many(tiny, "Every effort moves you", configs, 10, seed=1)
    next(gen)
    next(gen)
    assert tiny.scheduler.rows == 3
    gen.close()  # Stop, a closed tab, a page switch
    assert tiny.scheduler.rows == 0
    steps = list(core.generate(tiny, "Every effort", core.SamplingConfig(seed=2), 5))
    assert len(steps) == 5 and tiny.scheduler.rows == 0  # a finished generation has left too


def test_a_full_scheduler_says_busy_from_generate(tiny: core.LanguageModel) -> None:
    lm = place(core.load_model("gpt2-tiny"), "cpu", backend="torch")
    lm = type(lm)(lm.name, lm.model, lm.tokenizer, lm.source, lm.engine,
                  scheduler=StepScheduler(lm.engine, SchedulerConfig(max_rows=1, max_waiting=0)))
    with lm.scheduler.joined():
        with pytest.raises(Busy, match="ahead of you"):
            next(core.generate(lm, "Every effort", core.SamplingConfig(), 3))
    assert len(list(core.generate(lm, "Every effort", core.SamplingConfig(), 3))) == 3


@pytest.mark.parametrize("backend", ["fast", "torch"])
def test_same_seed_same_text_under_load(backend: str) -> None:
    """Eight generations in threads, batched, give each seed's text alone (sampled, T = 1)."""
    lm = core.load_model("gpt2-tiny")
    if backend == "torch":
        lm = place(lm, "cpu", backend="torch")
    elif lm.backend != "fast":
        pytest.skip("no fast backend here")

    def text(seed: int, batched: bool) -> list[int]:
        config = core.SamplingConfig(temperature=1.0, seed=seed)
        return [s.token_id for s in core.generate(lm, "Every effort moves you", config, 12, batched=batched)]

    alone = {seed: text(seed, False) for seed in range(8)}
    together: dict[int, list[int]] = {}
    barrier = threading.Barrier(8)

    def go(seed: int) -> None:
        barrier.wait()
        together[seed] = text(seed, True)

    threads = [threading.Thread(target=go, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert together == alone
    assert lm.scheduler.batches > 0 and lm.scheduler.rows == 0
