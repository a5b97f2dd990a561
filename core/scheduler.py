"""One model, many concurrent generations: their decode steps gathered into one batched step.

A decode step is bound by reading the weights, so ten rows cost little more than one (continuous
batching, as in vLLM). Each generation joins the scheduler (`join` -> a `Ticket`), submits its next
step with `Ticket.step` and blocks until the worker thread has run it; the worker runs every step
waiting at that moment as one `Backend.step_many`, each row in its own KV cache at its own position,
and hands each request its logits. Requests join and leave between steps; a request that leaves
(its generator closed: Stop, a closed tab, a page switch) holds nothing afterwards.

Same bits as alone: the fast backend's batched rows are batch-invariant (each row's logits have the
bits it gets alone); the plain torch backend's `step_many` runs the requests one after the other.
Bounded: at most `max_rows` rows step together; further requests wait in a queue of at most
`max_waiting` for up to `wait_s`, and beyond that `join` raises `Busy` saying how many are ahead.
Prompts are read by the requesting thread, in the backend's chunks, while the worker keeps stepping.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from .backends import Backend
from .models import KVCache


class Busy(RuntimeError):
    """The model serves as many rows as it may and the queue is full (or room did not come in time):
    `ahead` requests (generating, or waiting before this one) are ahead of this one."""

    def __init__(self, generating: int, waiting: int, why: str) -> None:
        self.ahead = generating + waiting
        super().__init__(f"the model is busy: {self.ahead} request{'s' * (self.ahead != 1)} ahead of you "
                         f"({generating} generating, {waiting} waiting; {why}). Try again in a moment.")


@dataclass(frozen=True)
class SchedulerConfig:
    max_rows: int = 32       # rows (generations, or side-by-side columns) stepping together at most
    max_waiting: int = 32    # requests waiting for room at most; the next one gets Busy at once
    wait_s: float = 10.0     # longest wait for room before Busy
    gather_s: float = 0.004  # how long a step waits for joined requests still choosing their token
    idle_s: float = 5.0      # the worker thread ends after this long with nothing joined


class _Pending:
    __slots__ = ("tokens", "state", "result", "done")

    def __init__(self, tokens: Tensor, state: KVCache) -> None:
        self.tokens, self.state = tokens, state
        self.result: Tensor | Exception | None = None
        self.done = threading.Event()


class Ticket:
    """One request's place in the scheduler: `step` while joined, `leave` (or the with block's end) after."""

    def __init__(self, scheduler: StepScheduler, rows: int) -> None:
        self._scheduler, self.rows, self.joined = scheduler, rows, False
        self.stepping = False  # has submitted a step: past its prompt, so batches wait for it briefly

    def step(self, tokens: Tensor, state: KVCache) -> Tensor:
        """Backend.step(tokens, state), run by the worker in a batch with whatever else is waiting."""
        return self._scheduler._step(self, tokens, state)

    def prompt_read(self) -> None:
        """Say the prompt is read: from now on batches wait briefly for this request's steps."""
        self._scheduler._prompt_read(self)

    def leave(self) -> None:
        self._scheduler._leave(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()


class StepScheduler:
    """Gathers concurrent requests' decode steps on one backend into batched steps; thread-safe.
    The worker thread starts with the first request and ends after `idle_s` with none joined."""

    def __init__(self, engine: Backend, config: SchedulerConfig = SchedulerConfig()) -> None:
        if config.max_rows < 1 or config.max_waiting < 0:
            raise ValueError(f"max_rows must be >= 1 and max_waiting >= 0, got {config}")
        self.engine, self.config = engine, config
        self._cond = threading.Condition()
        self._joined: set[Ticket] = set()
        self._rows = 0
        self._stepping = 0  # joined tickets that have stepped (the others are still reading their prompt)
        self._waiting: deque[Ticket] = deque()
        self._pending: list[_Pending] = []
        self._worker: threading.Thread | None = None
        self.batches = 0        # steps run, and rows in them: rows / batches is the mean batch
        self.batched_rows = 0

    @property
    def rows(self) -> int:
        """Rows of the requests joined now."""
        return self._rows

    def join(self, rows: int = 1) -> Ticket:
        """A ticket for a request of `rows` rows, once there is room; Busy when the queue is full or
        room does not come within wait_s. Leave it when done (a with block does)."""
        c = self.config
        if not 1 <= rows <= c.max_rows:
            raise ValueError(f"a request steps 1 to {c.max_rows} rows together, got {rows}")
        ticket = Ticket(self, rows)
        with self._cond:
            if not self._waiting and self._rows + rows <= c.max_rows:
                self._admit(ticket)
                return ticket
            if len(self._waiting) >= c.max_waiting:
                raise Busy(len(self._joined), len(self._waiting), "the queue is full")
            self._waiting.append(ticket)
            deadline = time.monotonic() + c.wait_s
            while not ticket.joined:
                left = deadline - time.monotonic()
                if left <= 0:
                    ahead = self._waiting.index(ticket)
                    self._waiting.remove(ticket)
                    self._admit_waiting()  # a large request gave up: smaller ones behind may fit
                    raise Busy(len(self._joined), ahead, f"no room within {c.wait_s:g} s")
                self._cond.wait(left)
        return ticket

    @contextmanager
    def joined(self, rows: int = 1) -> Iterator[Ticket]:
        ticket = self.join(rows)
        try:
            yield ticket
        finally:
            ticket.leave()

    def _admit(self, ticket: Ticket) -> None:  # under the lock
        ticket.joined = True
        self._joined.add(ticket)
        self._rows += ticket.rows
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="sampling-lab-steps", daemon=True)
            self._worker.start()

    def _admit_waiting(self) -> None:  # under the lock: first come, first served
        while self._waiting and self._rows + self._waiting[0].rows <= self.config.max_rows:
            self._admit(self._waiting.popleft())
        self._cond.notify_all()

    def _leave(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket in self._joined:
                self._joined.remove(ticket)
                self._rows -= ticket.rows
                self._stepping -= ticket.stepping
                ticket.joined = False
                self._admit_waiting()

    def _step(self, ticket: Ticket, tokens: Tensor, state: KVCache) -> Tensor:
        pending = _Pending(tokens, state)
        with self._cond:
            if ticket not in self._joined:
                raise RuntimeError("this request has left the scheduler; join again to step")
            self._pending.append(pending)
            self._mark_stepping(ticket)
            self._cond.notify_all()
        pending.done.wait()
        if isinstance(pending.result, Exception):
            raise pending.result
        return pending.result  # type: ignore[return-value]

    def _mark_stepping(self, ticket: Ticket) -> None:  # under the lock
        if ticket.joined and not ticket.stepping:
            ticket.stepping = True
            self._stepping += 1

    def _prompt_read(self, ticket: Ticket) -> None:
        with self._cond:
            self._mark_stepping(ticket)

    def _take(self) -> list[_Pending] | None:
        """The steps to run next, after letting joined requests still choosing their token catch up
        (up to gather_s; one reading its prompt is not waited for); None when the worker should end."""
        with self._cond:
            while not self._pending:
                if not self._cond.wait(self.config.idle_s) and not self._pending and not self._joined:
                    self._worker = None
                    return None
            deadline = time.monotonic() + self.config.gather_s
            while len(self._pending) < self._stepping and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            batch, self._pending = self._pending, []
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                with torch.inference_mode():  # thread-local: the requests' own threads run in it too
                    results = self.engine.step_many([(p.tokens, p.state) for p in batch])
            except Exception as e:  # noqa: BLE001 - step_many hands out per-request errors; this is a bug there
                results = [e] * len(batch)
            self.batches += 1
            self.batched_rows += sum(p.state.batch for p in batch)
            for p, r in zip(batch, results):
                p.result = r
                p.done.set()
