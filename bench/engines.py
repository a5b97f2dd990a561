"""llama.cpp's server (xllamacpp) on the bundled SmolLM2: costs of the pieces a remote backend will use.

    .venv/bin/python -m bench.engines

Prints: the float32 GGUF copy written cold (into a temporary cache folder), each server's start, the
engine alone (100 greedy tokens in one /completion call, its own sampler), and the same greedy text
built one token at a time through core.engines.EngineClient (a request per token, llama.cpp's prompt
cache on): asking the top 20 and asking the whole 49,152-token vocabulary. One run on a shared machine:
compare the rows with each other, not with another run.
"""
from __future__ import annotations

import tempfile
import time

from core.engines import EngineClient
from core.engines import llamacpp
from core.loading import _smollm2_path

PROMPT = [8600, 3867, 7488, 346]  # "Every effort moves you"
N = 100


def engine_alone(client: EngineClient) -> float:
    body = {"prompt": PROMPT, "n_predict": N, "temperature": 0.0, "ignore_eos": True, "cache_prompt": False}
    t = time.perf_counter()
    out = client._request("POST", "/completion", body)
    dt = time.perf_counter() - t
    assert out["tokens_predicted"] == N
    return N / dt


def step_by_step(client: EngineClient, top_n: int | None, steps: int) -> tuple[float, list[int]]:
    ids = list(PROMPT)
    client.next_token(ids, top_n)  # the prompt read once, as the page would before generating
    t = time.perf_counter()
    for _ in range(steps):
        ids.append(client.next_token(ids, top_n).ids[0])  # greedy: the most likely reported token
    return steps / (time.perf_counter() - t), ids[len(PROMPT):]


def main() -> None:
    src = _smollm2_path()
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        llamacpp.f32_gguf(src, cache)
        print(f"float32 GGUF copy written cold: {time.perf_counter() - t:.1f} s")
    f32 = llamacpp.f32_gguf(src)
    for name, path in (("Q4_1 (bundled)", src), ("F32 copy", f32)):
        t = time.perf_counter()
        server = llamacpp.start_server(path, slots=1)
        start = time.perf_counter() - t
        try:
            c = EngineClient(server.url, api_key="", timeout=600)
            alone = engine_alone(c)
            top20, text20 = step_by_step(c, 20, N)
            whole, text_all = step_by_step(c, None, 10)
            assert text_all == text20[:10]
            print(f"{name}: server start {start:.1f} s; engine alone {alone:.1f} tok/s; through the client, a "
                  f"request per token: top-20 {top20:.1f} tok/s ({top20 / alone:.2f}x), whole vocabulary "
                  f"{whole:.2f} tok/s ({whole / alone:.3f}x)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
