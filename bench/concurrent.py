"""A room on one machine (issue 16): N generations at once on one shared model, batched or not.

    PYTHONPATH=. .venv/bin/python -m bench.concurrent                 # 10 and 30 threads, then the websocket load test
    PYTHONPATH=. .venv/bin/python -m bench.concurrent --no-ws --sessions 10

Threads, as Streamlit runs sessions: each runs core.generate (SmolLM2, the same prompt, T = 1, its
own seed, exactly --tokens tokens) after a common start. Every seed is first run alone (batched=False,
one after the other): its text is the reference and its speed is "one alone". Then each crowd runs
with the steps batched by lm.scheduler (the default) and, for comparison, with batched=False (each
thread stepping on its own, as before). Reported: tok/s per session (median of each session's
tokens / its own time), aggregate tok/s and its ratio to one alone, the server's RSS, errors, and
whether every text equals its seed alone. --ws adds bench/load_test.py's Streamlit sessions over the
websocket (p50/p95 of a Generate run). The machine may be shared: the load average is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass

import psutil

import core

PROMPT = "Every effort moves you"


@dataclass
class Crowd:
    sessions: int
    batched: bool
    tok_s: list[float]          # each session's tokens / its own seconds
    wall_s: float
    errors: list[str]
    differ: list[int]           # seeds whose text differs from the seed alone
    rss_before: int
    rss_peak: int
    mean_rows: float            # rows per batched step (the scheduler's count over this crowd)
    cpu_s: float                # CPU time this process used meanwhile (all threads): robust to a shared machine

    def aggregate(self, tokens: int) -> float:
        return (self.sessions - len(self.errors)) * tokens / self.wall_s


def _config(seed: int) -> core.SamplingConfig:
    return core.SamplingConfig(temperature=1.0, top_k=None, top_p=1.0, min_p=0.0, seed=seed)


def generate_ids(lm: core.LanguageModel, seed: int, tokens: int, batched: bool) -> list[int]:
    return [s.token_id for s in core.generate(lm, PROMPT, _config(seed), tokens, stop_at_eos=False, batched=batched)]


def alone(lm: core.LanguageModel, seeds: list[int], tokens: int
          ) -> tuple[dict[int, list[int]], list[float], float]:
    """Each seed's text and tok/s, one after the other, not batched; and CPU ms per token."""
    texts, speeds = {}, []
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    for seed in seeds:
        t0 = time.perf_counter()
        texts[seed] = generate_ids(lm, seed, tokens, batched=False)
        speeds.append(tokens / (time.perf_counter() - t0))
    cpu1 = proc.cpu_times()
    return texts, speeds, 1000 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (tokens * len(seeds))


def crowd(lm: core.LanguageModel, seeds: list[int], tokens: int, batched: bool,
          reference: dict[int, list[int]]) -> Crowd:
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    cpu0 = proc.cpu_times()
    peak = [rss_before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak.append(proc.memory_info().rss)

    results: dict[int, tuple[list[int], float] | str] = {}
    start = threading.Barrier(len(seeds) + 1)

    def one(seed: int) -> None:
        start.wait()
        t0 = time.perf_counter()
        try:
            ids = generate_ids(lm, seed, tokens, batched)
            results[seed] = (ids, time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - any failure is this session's error
            results[seed] = f"{type(e).__name__}: {e}"

    sampler = threading.Thread(target=sample, daemon=True)
    threads = [threading.Thread(target=one, args=(seed,)) for seed in seeds]
    sampler.start()
    for t in threads:
        t.start()
    b0, r0 = lm.scheduler.batches, lm.scheduler.batched_rows
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = proc.cpu_times()
    done.set()
    sampler.join()
    batches, rows = lm.scheduler.batches - b0, lm.scheduler.batched_rows - r0
    ok = {s: r for s, r in results.items() if not isinstance(r, str)}
    return Crowd(len(seeds), batched, [tokens / sec for _, sec in ok.values()], wall,
                 [f"seed {s}: {r}" for s, r in results.items() if isinstance(r, str)],
                 [s for s, (ids, _) in ok.items() if ids != reference[s]], rss_before, max(peak),
                 rows / batches if batches else 0.0, (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system))


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def websocket_rows(sessions: list[int], tokens: int, lm: core.LanguageModel) -> None:
    from bench.load_test import expected_tokens, run_load, start_server

    server = start_server()
    try:
        for n in sessions:
            print(f"\nwebsocket load test: {n} Streamlit sessions x {tokens} tokens (load average {load_average()})",
                  flush=True)
            res = run_load(server, n, tokens, base_seed=1000 + 100 * n)
            differ = [r.seed for r in res.results
                      if not r.error and r.tokens != expected_tokens(r.seed, tokens, lm=lm)]
            mb = 1 / 2**20
            print(f"  held {res.held}/{n}; errors {len(res.errors)}" + "".join(f"\n    {e}" for e in res.errors))
            print(f"  Generate run p50 {res.percentile(0.5):.2f} s, p95 {res.percentile(0.95):.2f} s, "
                  f"max {max(res.latencies, default=float('nan')):.2f} s; all done in {res.wall_s:.2f} s")
            print(f"  server RSS before {res.rss_before * mb:.0f} MB, peak {res.rss_peak * mb:.0f} MB, "
                  f"after {res.rss_after * mb:.0f} MB; texts differing from the seed alone: {len(differ)} {differ or ''}")
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--tokens", type=int, default=30)
    ap.add_argument("--ws-tokens", type=int, default=20)
    ap.add_argument("--no-unbatched", action="store_true", help="skip the batched=False crowds (the 'before')")
    ap.add_argument("--no-ws", action="store_true", help="skip the websocket load test")
    args = ap.parse_args()
    print(f"load average at start: {load_average()} ({os.cpu_count()} CPUs)", flush=True)
    lm = core.load_model()
    print(f"{lm.name}, backend {lm.backend}; {args.tokens} tokens per session, T = 1, prompt {PROMPT!r}", flush=True)
    generate_ids(lm, 0, 3, True)  # warm: the fast backend packs its weights on the first step
    seeds = list(range(1, max(args.sessions) + 1))
    reference, speeds, cpu_ms = alone(lm, seeds, args.tokens)
    one = statistics.median(speeds)
    print(f"one alone (batched=False, {len(speeds)} runs one after the other): {one:.1f} tok/s median "
          f"[{min(speeds):.1f}-{max(speeds):.1f}]; CPU {cpu_ms:.1f} ms per token", flush=True)
    for n in args.sessions:
        for batched in (True, False) if not args.no_unbatched else (True,):
            c = crowd(lm, seeds[:n], args.tokens, batched, reference)
            agg, ms = c.aggregate(args.tokens), 1000 * c.cpu_s / (n * args.tokens)
            print(f"{n} at once, {'batched (scheduler)' if batched else 'not batched (batched=False)'}: "
                  f"{statistics.median(c.tok_s) if c.tok_s else float('nan'):.1f} tok/s per session "
                  f"(min {min(c.tok_s, default=float('nan')):.1f}), aggregate {agg:.1f} tok/s = {agg / one:.2f}x one "
                  f"alone; CPU {ms:.1f} ms per token = {ms / cpu_ms:.2f}x alone's; {c.wall_s:.2f} s; rows per step "
                  f"{c.mean_rows:.1f}; RSS {c.rss_before / 2**20:.0f} -> peak {c.rss_peak / 2**20:.0f} MiB; "
                  f"errors {len(c.errors)}; texts differing from alone {len(c.differ)} "
                  f"(load average {load_average()})", flush=True)
            for e in c.errors[:5]:
                print(f"    {e}")
    if not args.no_ws:
        websocket_rows(args.sessions, args.ws_tokens, lm)
    print(f"load average at end: {load_average()}")


if __name__ == "__main__":
    main()
