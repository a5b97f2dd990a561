"""Sampling Lab's speed benchmark: `make bench` (or `PYTHONPATH=. python -m bench.run`).

Every figure is measured in this one run, on this machine, methods alternated within each repeat,
and reported as the median over repeats with [min–max]. Prints one table and writes bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

import core
from core.backends import TorchBackend
from core.backends.fast import FastCPUBackend
from core.backends.fast.cores import GOVERNOR, TWO_CORES_ENV, cpu_times
from core.backends.fast.openblas import BLAS
from core.runtime import approximate, configure_threads

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
NEW_TOKENS = 100
PROMPTS = (5, 500)
READ_LENGTHS = (500, 2000)  # prompt reading, ours against llama.cpp
APPEND_AT = 5000            # append one token to a prompt this long, with and without prefix reuse
GREEDY = core.SamplingConfig(temperature=0)


# ---------------------------------------------------------------- bookkeeping

@dataclass
class Row:
    section: str
    what: str
    unit: str
    values: list[float] = field(default_factory=list)
    note: str = ""

    def cell(self) -> str:
        if not self.values:
            return "n/a"
        med = statistics.median(self.values)
        fmt = _fmt(med)
        if len(self.values) > 1:
            return f"{fmt} [{_fmt(min(self.values))}–{_fmt(max(self.values))}]"
        return fmt

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")


def _fmt(x: float) -> str:
    if x != x:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"


class Table:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def add(self, section: str, what: str, unit: str, value: float, note: str = "") -> None:
        row = self.rows.setdefault((section, what), Row(section, what, unit, note=note))
        row.values.append(value)

    def get(self, section: str, what: str) -> float:
        row = self.rows.get((section, what))
        return row.median if row else float("nan")

    def markdown(self) -> str:
        lines = ["| section | measurement | median [min–max] | unit | n |", "|---|---|---|---|---|"]
        for r in self.rows.values():
            lines.append(f"| {r.section} | {r.what}{' — ' + r.note if r.note else ''} | {r.cell()} | {r.unit} | "
                         f"{len(r.values)} |")
        return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine

def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mem = "?"
    try:
        import psutil
        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        pass
    import transformers
    return {"cpu": f"{cpu}, {os.cpu_count()} logical cores, avx512_bf16={'avx512_bf16' in flags}",
            "memory": mem, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "os": platform.platform(),
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


# ---------------------------------------------------------------- memory bandwidth

def read_bandwidth(threads: int, repeats: int = 7) -> list[float]:
    """GB/s of a float32 sum over 512 MiB: far larger than the caches, so every byte comes from DRAM."""
    before = torch.get_num_threads()
    configure_threads(threads)
    try:
        x = torch.ones(128 * 2**20)
        x.sum()
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            x.sum()
            out.append(x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    finally:
        configure_threads(before)
    return out


def read_row(threads: int) -> str:
    return f"memory read, {threads} thread{'s' * (threads > 1)} (sum of 512 MiB float32)"


def bandwidth_rows(table: Table, section: str, repeats: int) -> None:
    for n in (1, 2):
        table.add(section, read_row(n), "GB/s", statistics.median(read_bandwidth(n, repeats)))


def cpu_ticks() -> tuple[int, int]:
    """(ticks stolen by the hypervisor, all ticks) of all CPUs so far; (0, 0) off Linux."""
    fields = cpu_times() or []
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every matrix and vector once, except the embedding
    tables, of which only one row is read (the tied LM head still reads the whole table once)."""
    seen, total = set(), 0
    for name, p in model.named_parameters(remove_duplicate=False):
        key = (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape))
        if key in seen:
            continue
        seen.add(key)
        if name in ("tok_emb.weight", "pos_emb.weight") and not (name == "tok_emb.weight" and model.cfg.tied_head):
            total += p.shape[1] * p.element_size()
        else:
            total += p.numel() * p.element_size()
    return total


# ---------------------------------------------------------------- torch's intra-op threads, in one thread only

class LocalThreads:
    """Torch's intra-op thread count for the calling thread alone, restored after: an experiment for
    the plain backend and prompt reading, not what the app runs. torch.set_num_threads is process-wide
    (it also sets the count every thread starts with); the counts underneath are per thread: OpenMP's
    (omp_set_num_threads sets the calling thread's) and MKL's (MKL_Set_Num_Threads_Local). `available`
    is False where torch does not ship both (other builds): the rows say n/a."""

    def __init__(self) -> None:
        import ctypes
        lib = Path(torch.__file__).parent / "lib"
        try:
            self._omp = ctypes.CDLL(str(next(lib.glob("libgomp*.so*"))))
            self._mkl = ctypes.CDLL(str(lib / "libtorch_cpu.so")).MKL_Set_Num_Threads_Local
            self.available = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
        except (StopIteration, OSError, AttributeError):
            self.available = False

    @contextlib.contextmanager
    def __call__(self, n: int) -> Iterator[None]:
        torch.get_num_threads()  # torch sets a thread's count on first use: let it, then change it
        before = self._omp.omp_get_max_threads()
        mkl_before = self._mkl(n)  # the previous local count (0: none, MKL's global one applies)
        self._omp.omp_set_num_threads(n)
        try:
            yield
        finally:
            self._omp.omp_set_num_threads(before)
            self._mkl(mkl_before)


LOCAL_THREADS = LocalThreads()
LOCAL_TWO = "plain backend, 2 intra-op threads in its own thread only (experiment)"


# ---------------------------------------------------------------- the three ways to generate

def plain(lm: core.LanguageModel) -> core.LanguageModel:
    """lm on the plain torch backend, sharing its weights (what SAMPLING_LAB_BACKEND=torch loads)."""
    return core.LanguageModel(lm.name, lm.model, lm.tokenizer, lm.source, engine=TorchBackend(lm.model))


def unpacked(lm: core.LanguageModel) -> core.LanguageModel:
    """lm on the fast backend without its packed copies: every product on the model's own weights."""
    return core.LanguageModel(lm.name, lm.model, lm.tokenizer, lm.source, engine=FastCPUBackend(lm.model, pack=False))


def run_ours(lm: core.LanguageModel, ids: list[int], cores: str = "auto") -> tuple[float, float]:
    """The public path the app uses: core.generate (KV cache, Steps with top-N candidates).
    cores: the fast backend's governor mode, "auto" (the default everywhere) or "off" (one core)."""
    GOVERNOR.mode = cores
    lm.prefixes.clear()  # every run reads its prompt: no help from the one before
    try:
        t0 = time.perf_counter()
        stamps = [time.perf_counter() for _ in core.generate(lm, ids, GREEDY, NEW_TOKENS, stop_at_eos=False)]
    finally:
        GOVERNOR.mode = "auto"
    assert len(stamps) == NEW_TOKENS, len(stamps)
    return stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def run_hf(hf_model, ids: list[int], threads: int) -> tuple[float, float]:
    """transformers' generate, greedy, exactly NEW_TOKENS, with `threads` torch threads; a streamer
    timestamps every token."""
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self) -> None:
            self.t: list[float] = []

        def put(self, value) -> None:
            self.t.append(time.perf_counter())

        def end(self) -> None:
            pass

    s = Stamps()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                    streamer=s, pad_token_id=0)
    finally:
        torch.set_num_threads(before)
    assert out.shape[1] == len(ids) + NEW_TOKENS, out.shape
    new = s.t[1:]  # put() #0 is the prompt
    return new[0] - t0, (len(new) - 1) / (new[-1] - new[0])


def run_tutorial(lm: core.LanguageModel, ids: list[int], sampled: bool) -> tuple[float, float]:
    """The book's generate_text_simple: run the whole sequence (all positions' logits) for every token.

    sampled=False runs all NEW_TOKENS steps. sampled=True (long prompts, where the real loop takes
    minutes) times the step at 5 evenly spaced lengths and interpolates the cost of all the steps;
    each step is the same full forward over prompt+i tokens, so this is the same loop, sampled."""
    model = lm.model
    seq = torch.tensor([ids])
    with torch.inference_mode():
        if not sampled:
            t0 = time.perf_counter()
            stamps = []
            for _ in range(NEW_TOKENS):
                logits = model(seq)[:, -1, :]
                seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
                stamps.append(time.perf_counter())
            return stamps[0] - t0, (len(stamps) - 1) / (stamps[-1] - stamps[0])
        points = [0, 25, 50, 75, NEW_TOKENS - 1]
        extra = torch.randint(0, lm.vocab_size, (1, NEW_TOKENS), generator=torch.Generator().manual_seed(1))
        costs = []
        for i in points:
            x = torch.cat([seq, extra[:, :i]], dim=1)
            t = time.perf_counter()
            model(x)[:, -1, :].argmax(-1)
            costs.append(time.perf_counter() - t)
        per_step = [_interp(points, costs, i) for i in range(NEW_TOKENS)]
        return per_step[0], (NEW_TOKENS - 1) / sum(per_step[1:])


def _interp(xs: list[int], ys: list[float], x: int) -> float:
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


# ---------------------------------------------------------------- the same weights in transformers

def hf_gpt2_from_ours(lm: core.LanguageModel):
    """GPT2LMHeadModel holding exactly our random GPT-2 124M weights (inverse of gpt2_state_from_hf)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = lm.model.cfg
    hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.context_length, n_embd=c.emb_dim,
                        n_layer=c.n_layers, n_head=c.n_heads, layer_norm_epsilon=c.norm_eps,
                        tie_word_embeddings=True)
    with torch.device("meta"):
        hf = GPT2LMHeadModel(hf_cfg)
    hf.load_state_dict(hf_gpt2_state(lm.model.state_dict(), c.n_layers), strict=False, assign=True)
    hf.tie_weights()
    for name, buf in list(hf.named_buffers()):
        if buf.is_meta:
            raise RuntimeError(f"transformers GPT-2 buffer {name} was not filled")
    return hf.eval().requires_grad_(False)


def hf_gpt2_state(ours: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Our names -> Hugging Face GPT2LMHeadModel's; Conv1D weights are stored (in, out)."""
    def c(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous()

    out = {"transformer.wte.weight": c(ours["tok_emb.weight"]), "transformer.wpe.weight": c(ours["pos_emb.weight"]),
           "transformer.ln_f.weight": ours["final_norm.weight"], "transformer.ln_f.bias": ours["final_norm.bias"],
           "lm_head.weight": c(ours["tok_emb.weight"])}
    for i in range(n_layers):
        p, q = f"transformer.h.{i}.", f"blocks.{i}."
        for dst, src, transpose in [("ln_1", "norm1", False), ("ln_2", "norm2", False),
                                    ("attn.c_attn", "att.qkv", True), ("attn.c_proj", "att.out_proj", True),
                                    ("mlp.c_fc", "ff.0", True), ("mlp.c_proj", "ff.2", True)]:
            w = ours[f"{q}{src}.weight"]
            out[f"{p}{dst}.weight"] = c(w.t() if transpose else w)
            out[f"{p}{dst}.bias"] = ours[f"{q}{src}.bias"]
    return out


def hf_smollm2():
    """transformers' own GGUF loader on the bundled file (dequantised to float32)."""
    from transformers import AutoModelForCausalLM

    from core.loading import _smollm2_path
    path = _smollm2_path()
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                dtype=torch.float32).eval().requires_grad_(False)


# ---------------------------------------------------------------- llama.cpp on the same float32 weights

def write_f32_gguf(src: str, dst: str) -> None:
    """A float32 copy of a GGUF file: every tensor dequantised, every metadata field kept (FACTS.md)."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
    from gguf.quants import dequantize

    reader = GGUFReader(src)
    writer = GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type"):
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    writer.add_file_type(LlamaFileType.ALL_F32)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class LlamaCpp:
    """llama.cpp's server (xllamacpp) in this process on a float32 GGUF, both cores, greedy."""

    def __init__(self, gguf_path: str, n_ctx: int) -> None:
        import socket

        import xllamacpp as xlc
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        p = xlc.CommonParams()
        p.model.path, p.port, p.hostnames, p.n_ctx = gguf_path, port, ["127.0.0.1"], n_ctx
        p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 2
        self.server = xlc.Server(p)  # serves until this process exits
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("llama.cpp's server did not answer /health")

    def complete(self, ids: list[int], n: int, cache_prompt: bool) -> dict:
        body = json.dumps({"prompt": ids, "n_predict": n, "temperature": 0, "ignore_eos": True,
                           "cache_prompt": cache_prompt}).encode()
        req = urllib.request.Request(self.url + "/completion", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def decode(self, ids: list[int]) -> tuple[float, float]:
        """(seconds to the first token, decode tok/s) for NEW_TOKENS greedy tokens, from its own timings."""
        t = self.complete(ids, NEW_TOKENS, cache_prompt=False)["timings"]
        return t["prompt_ms"] / 1e3, t["predicted_per_second"]

    def read(self, ids: list[int], cache_prompt: bool = False) -> float:
        """Wall seconds to read ids and give the next token."""
        t0 = time.perf_counter()
        self.complete(ids, 1, cache_prompt)
        return time.perf_counter() - t0


def start_llama_cpp(workdir: str, n_ctx: int) -> LlamaCpp | None:
    from core.loading import _smollm2_path
    try:
        path = os.path.join(workdir, "smollm2-f32.gguf")
        write_f32_gguf(_smollm2_path(), path)
        return LlamaCpp(path, n_ctx)
    except ImportError as e:  # xllamacpp or gguf missing: the rows say n/a
        log(f"llama.cpp not available: {e}")
        return None


# ---------------------------------------------------------------- decode benchmark

def bench_generation(table: Table, label: str, lm: core.LanguageModel, hf_model, repeats: int,
                     lm_bf16: core.LanguageModel | None, llama: LlamaCpp | None = None) -> None:
    gen = torch.Generator().manual_seed(0)
    for plen in PROMPTS:
        ids = torch.randint(0, lm.vocab_size, (plen,), generator=gen).tolist()
        # one untimed warm-up of each, then alternate the methods inside every repeat
        run_ours(lm, ids[:5])
        run_hf(hf_model, ids[:5], 1)
        lm_shared = unpacked(lm)
        methods: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            ("tutorial loop", lambda: run_tutorial(lm, ids, sampled=plen > 100)),
            ("transformers generate, 1 thread", lambda: run_hf(hf_model, ids, 1)),
            ("transformers generate, 2 threads", lambda: run_hf(hf_model, ids, 2)),
            ("ours one core (SAMPLING_LAB_TWO_CORES=off)", lambda: run_ours(lm, ids, "off")),
            ("ours (core.generate)", lambda: run_ours(lm, ids)),
            ("plain backend (SAMPLING_LAB_BACKEND=torch)", lambda: run_ours(plain(lm), ids)),
            ("fast backend without packed copies (shared weights)", lambda: run_ours(lm_shared, ids)),
        ]
        if LOCAL_THREADS.available:
            methods.append((LOCAL_TWO, lambda: local_two(lambda: run_ours(plain(lm), ids))))
        if lm_bf16 is not None:
            methods.append(("ours bf16 (approximate)", lambda: run_ours(lm_bf16, ids)))
        if llama is not None:
            methods.append(("llama.cpp F32, 2 threads", lambda: llama.decode(ids)))
        for r in range(repeats):
            # the ceiling's bandwidth, measured between the decode runs, under the same conditions
            bandwidth_rows(table, f"{label}, ceiling", repeats=3)
            for name, fn in methods:
                if name == "tutorial loop" and plen > 100 and r >= 2:
                    continue  # sampled; two repeats keep the run short
                gc.collect()
                ttft, tps = fn()
                sec = f"{label}, prompt {plen}"
                note = "5 sampled lengths, interpolated" if name == "tutorial loop" and plen > 100 else ""
                table.add(sec, f"{name}: decode", "tok/s", tps, note)
                table.add(sec, f"{name}: time to first token", "ms", ttft * 1e3)
            log(f"{label} prompt {plen} repeat {r + 1}/{repeats} done")


def local_two(fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    with LOCAL_THREADS(2):
        return fn()


def bare_decode_ms(lm: core.LanguageModel, ctx: int, steps: int = 30, two: bool = False) -> list[float]:
    """Model-only decode step (no sampling, no Step building) through lm.engine, ms per step, at a
    ctx-token context; two=True forces the fast backend's two-core path (governor "on")."""
    engine = lm.engine
    mode, GOVERNOR.mode = GOVERNOR.mode, "on" if two else "off"
    try:
        with torch.inference_mode():
            state = engine.new_state(1, ctx + steps + 1)
            engine.prefill(torch.randint(0, lm.vocab_size, (1, ctx), generator=torch.Generator().manual_seed(2)), state)
            x = torch.tensor([11])
            out = []
            for _ in range(steps):
                t = time.perf_counter()
                engine.step(x, state)
                out.append((time.perf_counter() - t) * 1e3)
    finally:
        GOVERNOR.mode = mode
    return out


# ---------------------------------------------------------------- threads

def _busy(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def bench_threads(table: Table, lm: core.LanguageModel, label: str, threads: int) -> None:
    """Decode, idle and with a busy loop in another process: model-only steps of the fast backend on
    one core and on two, and of the plain backend with 2 torch threads; then core.generate with the
    governor deciding (auto) against one core, and auto with torch's threads left at 2, in ms per token."""
    ids = list(range(1000, 1100))
    for busy in (False, True):
        proc = None
        if busy:
            proc = mp.get_context("spawn").Process(target=_busy, args=(time.time() + 180,), daemon=True)
            proc.start()
            time.sleep(0.5)
        load = "other core busy" if busy else "no extra load"
        try:
            for _ in range(2):
                for name, m, n, two in (("fast backend, one core", lm, 1, False),
                                        ("fast backend, two cores", lm, 1, True),
                                        ("plain backend, 2 torch threads", plain(lm), 2, False)):
                    configure_threads(n)
                    ms = statistics.median(bare_decode_ms(m, 100, steps=15, two=two))
                    table.add("threads", f"{label} decode step, {name}, {load}", "ms", ms)
                # the last: a notebook that never calls configure_threads, torch on its default count
                for name, mode, n in (("one core", "off", threads), ("auto (governor)", "auto", threads),
                                      ("auto (governor), torch left at 2 threads", "auto", 2)):
                    configure_threads(n)
                    _, tps = run_ours(lm, ids, mode)
                    table.add("threads", f"{label} core.generate, {name}, {load}", "ms/token", 1e3 / tps)
        finally:
            configure_threads(threads)
            if proc is not None:
                proc.terminate()
                proc.join()


# ---------------------------------------------------------------- prompt reading and prefix reuse

def bench_prompt_reading(table: Table, lm: core.LanguageModel, llama: LlamaCpp | None, repeats: int) -> None:
    """Seconds to read a prompt and give the next token's logits (lm.next_token_logits, nothing stored
    before), against llama.cpp without its prompt cache; then one token appended to an APPEND_AT-token
    prompt: with prefix reuse (the prompt was just read), without it, and llama.cpp with cache_prompt."""
    sec = "SmolLM2-135M, prompt reading"
    gen = torch.Generator().manual_seed(4)
    longest = torch.randint(0, lm.vocab_size, (APPEND_AT + 1,), generator=gen).tolist()
    lm_plain = plain(lm)

    def read(m: core.LanguageModel, ids: list[int]) -> float:
        m.prefixes.clear()
        t0 = time.perf_counter()
        m.next_token_logits(ids)
        return time.perf_counter() - t0

    if LOCAL_THREADS.available:  # the same bits? (a prefix store resumes only from a fresh read's bits)
        for n in READ_LENGTHS:
            lm_plain.prefixes.clear()
            one = lm_plain.next_token_logits(longest[:n])
            lm_plain.prefixes.clear()
            with LOCAL_THREADS(2):
                two = lm_plain.next_token_logits(longest[:n])
            table.add(sec, f"max |Δ logit|, {LOCAL_TWO} against one thread, {n} tokens", "", float((one - two).abs().max()))
    for _ in range(repeats):
        for n in READ_LENGTHS:
            ids = longest[:n]
            table.add(sec, f"ours (fast backend), {n} tokens", "s", read(lm, ids))
            table.add(sec, f"plain backend, {n} tokens", "s", read(lm_plain, ids))
            if LOCAL_THREADS.available:
                with LOCAL_THREADS(2):
                    table.add(sec, f"{LOCAL_TWO}, {n} tokens", "s", read(lm_plain, ids))
            if llama is not None:
                table.add(sec, f"llama.cpp F32, 2 threads, {n} tokens", "s", llama.read(ids))
        prompt, appended = longest[:APPEND_AT], longest
        sec_a = f"SmolLM2-135M, append one token at {APPEND_AT} tokens"
        table.add(sec_a, "ours without prefix reuse (the whole prompt read again)", "s", read(lm, appended))
        lm.next_token_logits(prompt)
        t0 = time.perf_counter()
        lm.next_token_logits(appended)
        table.add(sec_a, "ours with prefix reuse (core: lm.prefixes)", "s", time.perf_counter() - t0)
        lm.prefixes.clear()
        if llama is not None:
            llama.read(prompt, cache_prompt=True)
            table.add(sec_a, "llama.cpp F32 with cache_prompt", "s", llama.read(appended, cache_prompt=True))


# ---------------------------------------------------------------- load time and memory

_LOAD_CHILD = r"""
import json, sys, time, psutil, torch
sys.path.insert(0, {root!r})
import core
from core.runtime import configure_threads
configure_threads()
t = time.perf_counter()
lm = core.load_model(None, cache_dir={cache!r}, backend={backend!r}.replace("fast unpacked", "torch"))
if {backend!r} == "fast unpacked":
    from core.backends.fast import FastCPUBackend
    lm = core.LanguageModel(lm.name, lm.model, lm.tokenizer, engine=FastCPUBackend(lm.model, pack=False))
dt = time.perf_counter() - t
lm.next_token_logits([1, 2, 3])
rss = psutil.Process().memory_info().rss / 2**20
# one generated token: the first decode step is where the fast backend makes its packed copies
for _ in core.generate(lm, [1, 2, 3], core.SamplingConfig(temperature=0), 2, stop_at_eos=False):
    pass
print(json.dumps({{"load_s": dt, "rss_mb": rss, "rss_step_mb": psutil.Process().memory_info().rss / 2**20}}))
"""


def bench_load(table: Table, repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sampling-lab-bench-cache-") as cache:
        for i in range(1 + repeats):
            for backend in ("fast", "fast unpacked", "torch"):
                if i == 0 and backend != "fast":
                    continue  # the cold load writes the cache the others read
                code = _LOAD_CHILD.format(root=str(ROOT), cache=cache, backend=backend)
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                r = json.loads(res.stdout.strip().splitlines()[-1])
                kind = "cold (parse GGUF + dequantise + write float32 cache)" if i == 0 else "cached (float32 safetensors)"
                sec = "load (default model SmolLM2-135M)"
                if backend == "fast":
                    table.add(sec, f"{kind}", "s", r["load_s"])
                table.add(sec, f"resident memory after load + one forward, {kind.split()[0]}, {backend} backend",
                          "MiB", r["rss_mb"])
                table.add(sec, f"resident memory after load + one forward + a decode step, {kind.split()[0]}, "
                          f"{backend} backend", "MiB", r["rss_step_mb"])


# ---------------------------------------------------------------- slider move

def bench_slider(table: Table, lm: core.LanguageModel, label: str, repeats: int = 30) -> None:
    """Server work of a slider move on the Next-token page: filter cached logits, build the table,
    the chart's figure and its JSON (the model never runs: logits are cached)."""
    from ui import next_token_view as view

    logits = lm.next_token_logits(lm.tokenizer.encode("Every effort moves you")).numpy()
    temps = [0.3, 0.7, 1.0, 1.3, 1.8]
    cfgs = [core.SamplingConfig(temperature=t, top_k=40 if i % 2 else None, top_p=0.9 if i % 3 else 1.0,
                                min_p=0.05 if i % 4 == 1 else 0.0) for i, t in enumerate(temps)]
    for r in range(repeats):
        cfg = cfgs[r % len(cfgs)]
        t0 = time.perf_counter()
        a = view.analyze(logits, cfg)
        top = view.distribution_table(a, lm.tokenizer, 10)
        view.stage_summaries(a)
        view.moot_warnings(a)
        t1 = time.perf_counter()
        fig = view.distribution_figure(top, view.rest_of(a, 10), cfg, False)
        fig.to_json()
        t2 = time.perf_counter()
        if r >= 3:  # warm-up: first plotly figure imports and validates its schema
            table.add("slider move", f"{label}: filter cached logits + build table data", "ms", (t1 - t0) * 1e3)
            table.add("slider move", f"{label}: + plotly figure and its JSON", "ms", (t2 - t0) * 1e3)


# ---------------------------------------------------------------- side by side

def bench_side_by_side(table: Table, lm: core.LanguageModel, label: str, repeats: int) -> None:
    """The Side-by-side page's work: three temperatures advancing together (core.generate_many), in
    ms per step (all three columns), through the numpy step on two cores while free (the default)
    and on one, and through the plain backend's batched forward."""
    cfgs = [core.SamplingConfig(temperature=t, seed=123) for t in (0.5, 1.0, 1.5)]
    ids = lm.tokenizer.encode("Every effort moves you")
    for _ in range(repeats):
        for name, m, mode, n in (("ours (core.generate_many)", lm, "auto", 3),
                                 ("ours one core (SAMPLING_LAB_TWO_CORES=off)", lm, "off", 3),
                                 ("plain backend's batched forward", plain(lm), "off", 3),
                                 ("ours (core.generate_many)", lm, "auto", 1),
                                 ("ours one core (SAMPLING_LAB_TWO_CORES=off)", lm, "off", 1)):
            GOVERNOR.mode = mode
            m.prefixes.clear()
            try:
                stamps = [time.perf_counter() for _ in core.generate_many(m, ids, cfgs[:n], 40, stop_at_eos=False)]
            finally:
                GOVERNOR.mode = "auto"
            # one column beside three: what the rows after the first cost (each row keeps its own bits)
            table.add("side by side", f"{label}, {n} column{'s' * (n > 1)}: {name}", "ms/step",
                      1e3 * (stamps[-1] - stamps[0]) / (len(stamps) - 1))


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the generation table "
                    "(default: core.runtime.configure_threads(), i.e. $SAMPLING_LAB_THREADS or 1)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    ap.add_argument("--quick", action="store_true", help="a few minutes: short prompts and generations, one "
                    "repeat, no threads section; checks that the bench runs (implies --no-write)")
    args = ap.parse_args()
    if args.quick:
        global NEW_TOKENS, PROMPTS, READ_LENGTHS, APPEND_AT
        NEW_TOKENS, PROMPTS, READ_LENGTHS, APPEND_AT = 20, (5, 100), (100, 300), 600
        args.repeats, args.no_write = 1, True
    started = time.perf_counter()
    info = machine()
    table = Table()

    steal0 = cpu_ticks()
    log("memory bandwidth")
    bw = {n: read_bandwidth(n) for n in (1, 2)}
    for n, vals in bw.items():
        for v in vals:
            table.add("bandwidth", read_row(n), "GB/s", v)

    threads = configure_threads(args.threads)
    info["torch threads (generation)"] = (f"{threads}; the fast backend's one-token steps use both cores while "
                                          f"the other is free (core/backends/fast/cores.py, "
                                          f"{TWO_CORES_ENV}={GOVERNOR.mode})")
    info["decode GEMVs"] = BLAS.config if BLAS is not None else "torch (no OpenBLAS in numpy here)"

    workdir = tempfile.TemporaryDirectory(prefix="sampling-lab-bench-")
    log("llama.cpp: writing the float32 GGUF and starting its server")
    llama = start_llama_cpp(workdir.name, n_ctx=max(APPEND_AT, *READ_LENGTHS, max(PROMPTS) + NEW_TOKENS) + 64)
    models = [("GPT-2 124M random", lambda: core.load_model("random:gpt2"), hf_gpt2_from_ours),
              ("SmolLM2-135M", lambda: core.load_model("smollm2"), lambda lm: hf_smollm2())]
    for label, load_ours, load_hf in models:
        log(f"{label}: loading ours and transformers'")
        lm = load_ours()
        assert lm.backend == "fast", f"the fast backend should apply here, got {lm.backend}"
        hf_model = load_hf(lm)
        lm_bf16 = approximate(lm)
        configure_threads(threads)
        bench_generation(table, label, lm, hf_model, args.repeats, lm_bf16,
                         llama if label.startswith("SmolLM2") else None)
        log(f"{label}: bare decode and bandwidth share")
        for _ in range(args.repeats):
            for name, m, two in (("ours one core", lm, False), ("ours two cores", lm, True),
                                 ("ours without packed copies, one core", unpacked(lm), False),
                                 ("plain backend (torch forward, MKL GEMVs)", plain(lm), False),
                                 (LOCAL_TWO, plain(lm), None),
                                 ("ours bf16 one core", lm_bf16, False)):
                if two is None and not LOCAL_THREADS.available:
                    continue
                with LOCAL_THREADS(2) if two is None else contextlib.nullcontext():
                    ms = statistics.median(bare_decode_ms(m, 5, two=bool(two)))
                table.add(f"{label}, ceiling", f"{name}: model-only decode step (ctx 5)", "ms", ms)
        nbytes = weight_bytes_per_token(lm.model)
        best_bw = max(table.get(f"{label}, ceiling", read_row(n)) for n in (1, 2))
        ceiling = best_bw * 1e9 / nbytes
        table.add(f"{label}, ceiling", f"weights read per token", "MB", nbytes / 1e6)
        table.add(f"{label}, ceiling", "bandwidth ceiling (best median read GB/s above ÷ bytes per token)", "tok/s",
                  ceiling)
        for plen in PROMPTS:
            ours = table.get(f"{label}, prompt {plen}", "ours (core.generate): decode")
            table.add(f"{label}, ceiling", f"ours (core.generate) at prompt {plen} as share of ceiling", "%",
                      100 * ours / ceiling)
        table.add(f"{label}, ceiling", "ours two cores model-only (ctx 5) as share of ceiling", "%",
                  100 * (1e3 / table.get(f"{label}, ceiling", "ours two cores: model-only decode step (ctx 5)"))
                  / ceiling)
        if label.startswith("GPT-2"):
            if not args.quick:
                log("threads")
                bench_threads(table, lm, label, threads)
        else:
            log("prompt reading and prefix reuse")
            bench_prompt_reading(table, lm, llama, args.repeats)
            log("slider move")
            bench_slider(table, lm, label)
            log("side by side")
            bench_side_by_side(table, lm, label, args.repeats)
        del lm, hf_model, lm_bf16
        gc.collect()

    log("load time")
    bench_load(table, repeats=args.repeats)
    workdir.cleanup()

    summary = targets(table)
    elapsed = time.perf_counter() - started
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    steal1 = cpu_ticks()
    if steal1[1] > steal0[1]:
        info["CPU time stolen by the hypervisor during the bench"] = \
            f"{100 * (steal1[0] - steal0[0]) / (steal1[1] - steal0[1]):.1f}%"
    info["bench wall time"] = f"{elapsed / 60:.1f} min"
    text = report(info, table, summary)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        log(f"wrote {RESULTS.relative_to(ROOT)}")


def targets(t: Table) -> list[tuple[str, str, bool]]:
    out = []
    for label in ("GPT-2 124M random", "SmolLM2-135M"):
        for plen in PROMPTS:
            sec = f"{label}, prompt {plen}"
            ours = t.get(sec, "ours (core.generate): decode")
            hf = max(t.get(sec, f"transformers generate, {n}: decode") for n in ("1 thread", "2 threads"))
            tut = t.get(sec, "tutorial loop: decode")
            out.append((f"{label}, prompt {plen}: fast backend ≥ 2× transformers (its faster thread setting)",
                        f"{ours / hf:.2f}×", ours / hf >= 2))
            plain_tps = t.get(sec, "plain backend (SAMPLING_LAB_BACKEND=torch): decode")
            out.append((f"{label}, prompt {plen}: plain backend ≥ 1.3× transformers", f"{plain_tps / hf:.2f}×",
                        plain_tps / hf >= 1.3))
            two = t.get(sec, f"{LOCAL_TWO}: decode")
            if two == two:
                out.append((f"{label}, prompt {plen}: {LOCAL_TWO} against transformers (reported, no target)",
                            f"{two / hf:.2f}×", True))
            llama = t.get(sec, "llama.cpp F32, 2 threads: decode")
            if llama == llama:  # measured (SmolLM2 only)
                out.append((f"{label}, prompt {plen}: fast backend against llama.cpp F32 (reported, no target)",
                            f"{ours / llama:.2f}×", True))
            need = 5 if plen == 5 else 25
            out.append((f"{label}, prompt {plen}: ours ≥ {need}× tutorial loop", f"{ours / tut:.1f}×", ours / tut >= need))
        for plen in PROMPTS:
            share = t.get(f"{label}, ceiling", f"ours (core.generate) at prompt {plen} as share of ceiling")
            out.append((f"{label}, prompt {plen}: ours ≥ 60% of bandwidth ceiling", f"{share:.0f}%", share >= 60))
    for n in READ_LENGTHS:
        sec = "SmolLM2-135M, prompt reading"
        ours, llama = t.get(sec, f"ours (fast backend), {n} tokens"), t.get(sec, f"llama.cpp F32, 2 threads, {n} tokens")
        out.append((f"prompt reading at {n} tokens ≤ llama.cpp's time", f"{ours:.2f} s vs {llama:.2f} s",
                    ours <= llama))
    append = t.get(f"SmolLM2-135M, append one token at {APPEND_AT} tokens", "ours with prefix reuse (core: lm.prefixes)")
    out.append((f"append one token at {APPEND_AT} tokens < 0.15 s", f"{append:.3f} s", append < 0.15))
    cached = t.get("load (default model SmolLM2-135M)", "cached (float32 safetensors)")
    out.append(("cached load of the default model < 2 s", f"{cached:.2f} s", cached < 2))
    slider = t.get("slider move", "SmolLM2-135M: + plotly figure and its JSON")
    out.append(("slider move < 20 ms of server work", f"{slider:.1f} ms", slider < 20))
    return out


def report(info: dict[str, str], table: Table, summary: list[tuple[str, str, bool]]) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# Sampling Lab benchmark ({when})", "",
             "Command: `make bench` (= `PYTHONPATH=. .venv/bin/python -m bench.run`); bench-only dependencies: "
             "`pip install -r requirements-bench.txt`.", "",
             "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {val} | {'yes' if ok else '**no**'} |" for name, val, ok in summary]
    lines += ["", "## Table", "",
              f"Greedy decoding, {NEW_TOKENS} new tokens, float32 unless marked bf16. Decode tok/s = tokens 2..{NEW_TOKENS} "
              "÷ their wall time; time to first token includes the prompt's forward pass. Each repeat runs "
              "the methods one after another, so they share the machine's state.", "",
              table.markdown(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
