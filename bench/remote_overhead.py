"""Sampling Lab's overhead on an engine: tok/s of core.generate through the remote backend vs the engine
generating alone, on llama.cpp's server (xllamacpp) with the bundled SmolLM2 (Q4_1 and the F32 copy).

    .venv/bin/python -m bench.remote_overhead

Engine alone: 100 greedy tokens in one /completion call (its own sampler, no distribution sent back).
Through core: core.generate (temperature 1, seeded: our sampler on the engine's distribution), one
request per token carrying the whole sequence: the whole 49,152-token vocabulary (what the pages use),
with llama.cpp's prompt cache off (the default: reproducible) and on, and the top 20 only. One run on a
shared machine: compare the ratios printed in one run.
"""
from __future__ import annotations

import time

import core
from bench.engines import N, engine_alone
from core.engines import EngineClient, llamacpp
from core.loading import _smollm2_path, load_url, smollm2_tokenizer

PROMPT = [8600, 3867, 7488, 346]  # "Every effort moves you"


def through_core(url: str, top_n: int | None, steps: int, cache_prompt: bool = False) -> float:
    lm = load_url(url, tokenizer=smollm2_tokenizer(), top_n=top_n)
    lm.engine.cache_prompt = cache_prompt
    cfg = core.SamplingConfig(temperature=1.0, seed=1)
    t = time.perf_counter()
    n = sum(1 for _ in core.generate(lm, PROMPT, cfg, steps, stop_at_eos=False))
    return n / (time.perf_counter() - t)


def main() -> None:
    for name, path in (("Q4_1 (bundled)", _smollm2_path()), ("F32 copy", llamacpp.f32_gguf(_smollm2_path()))):
        server = llamacpp.start_server(path, slots=1)
        try:
            alone = engine_alone(EngineClient(server.url, api_key="", timeout=600))
            rows = [("whole vocabulary, prompt cache off", through_core(server.url, None, 20)),
                    ("whole vocabulary, prompt cache on", through_core(server.url, None, 20, cache_prompt=True)),
                    ("top 20, prompt cache off", through_core(server.url, 20, N))]
            print(f"{name}: engine alone {alone:.1f} tok/s")
            for label, rate in rows:
                print(f"  core.generate through the engine, {label}: {rate:.2f} tok/s ({rate / alone:.3f}x the engine alone)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
