"""What a public server's models hold in memory: one process's RSS as each model a visitor may choose
with SAMPLING_LAB_PUBLIC=1 is loaded (the bundled SmolLM2, its llama.cpp engine, an engine by URL).

    .venv/bin/python -m bench.public_memory

The engine by URL is a llama.cpp server started here first (its own memory is shown apart): in a room
it runs elsewhere, and the app's process holds only the client's tokenizer and responses.
"""
from __future__ import annotations

import psutil

import core
from core.engines import llamacpp
from core.loading import _smollm2_path

PROMPT = [8600, 3867, 7488, 346]  # "Every effort moves you"


def main() -> None:
    proc = psutil.Process()

    def mib() -> float:
        return proc.memory_info().rss / 2**20

    def step(what: str, before: float) -> float:
        now = mib()
        print(f"{what}: {now:,.0f} MiB (+{now - before:,.0f})")
        return now

    held = []  # every model stays referenced, as in the app's cache
    rss = mib()
    print(f"Python + core imported: {rss:,.0f} MiB")
    held.append(core.load_model("smollm2"))
    held[-1].next_token_logits(PROMPT)
    rss = step("+ SmolLM2 (bundled, float32, in the process)", rss)
    held.append(core.load_model("llamacpp:smollm2"))
    held[-1].next_token_logits(PROMPT)
    rss = step('+ "SmolLM2 on llama.cpp" (its Q4_1 server in the process)', rss)
    server = llamacpp.start_server(_smollm2_path())
    rss = step("(a second llama.cpp server, standing in for a remote engine)", rss)
    held.append(core.load_model(server.url))
    held[-1].next_token_logits(PROMPT)
    step("+ an engine by URL (one whole-vocabulary request made)", rss)
    server.stop()


if __name__ == "__main__":
    main()
