"""The client against a REAL vLLM server (vLLM's CPU build, in its own venv): skipped unless
SAMPLING_LAB_VLLM_PYTHON names that venv's python (scripts/check_vllm.sh sets it up and runs this).

The bundled SmolLM2 is converted to a float32 Hugging Face folder (cached) and served twice: first as
vLLM starts by default (logprobs capped at 20: the 4xx and its advice), then with --max-logprobs -1
(the whole vocabulary, compared with our in-process model).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from core.engines import EngineClient, EngineLogprobsLimitError, EngineShapeError, EngineUnreachableError
from core.engines.client import parse_v1_completion
from core.engines.llamacpp import free_loopback_port
from core.loading import _smollm2_path
from core.weights import default_cache_dir, file_sha256

VLLM_PYTHON = os.environ.get("SAMPLING_LAB_VLLM_PYTHON")
if not VLLM_PYTHON:
    if os.environ.get("SAMPLING_LAB_REQUIRE_VLLM") == "1":
        raise RuntimeError("SAMPLING_LAB_REQUIRE_VLLM=1 but SAMPLING_LAB_VLLM_PYTHON is not set")
    pytest.skip("no vLLM: set SAMPLING_LAB_VLLM_PYTHON (scripts/check_vllm.sh does)", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [8600, 3867, 7488, 346]  # "Every effort moves you"
START_TIMEOUT_S = 600  # 28-70 s measured here; a busy 2-core machine can take longer


@pytest.fixture(scope="module")
def model_dir() -> Path:
    src = _smollm2_path()
    out = default_cache_dir() / f"{file_sha256(src)[:32]}-hf-f32"
    if not (out / "config.json").is_file():
        subprocess.run([VLLM_PYTHON, str(ROOT / "scripts" / "vllm_convert.py"), src, str(out)], check=True)
    return out


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` in its own process group, killed as a group."""

    def __init__(self, model_dir: Path, *extra: str) -> None:
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager",
               "--host", "127.0.0.1", "--port", str(self.port), *extra]
        self.log = open(default_cache_dir() / f"vllm-{self.port}.log", "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0
        print(f"\nvLLM {' '.join(extra) or '(defaults)'}: ready in {self.start_s:.1f} s")

    def _wait_ready(self, t0: float) -> None:
        while time.perf_counter() - t0 < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}; see {self.log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"vLLM not ready after {START_TIMEOUT_S} s; see {self.log.name}")

    def rss_mib(self) -> float:
        import psutil

        procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def raw_completion(url: str, body: dict) -> dict:
    req = urllib.request.Request(url.removesuffix("/v1") + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())


def test_default_server_caps_logprobs_at_20(model_dir) -> None:
    server = VLLMServer(model_dir)
    try:
        c = EngineClient(server.url, api_key="")
        assert c.info().engine == "vllm"
        with pytest.raises(EngineLogprobsLimitError, match="--max-logprobs -1") as e:
            c.next_token(PROMPT, vocab_size=49152)
        print(f"  49,152 logprobs asked -> {e.value}")
        assert e.value.max_allowed == 20
        r = c.next_token(PROMPT, 20, vocab_size=49152)  # the cap itself is fine
        assert not r.whole_vocabulary and r.ids[:2] == (2025, 3703)
    finally:
        server.stop()
    with pytest.raises(EngineUnreachableError):
        EngineClient(server.url, api_key="").health()


@pytest.fixture(scope="module")
def full_server(model_dir):
    server = VLLMServer(model_dir, "--max-logprobs", "-1")
    yield server
    server.stop()


def test_response_shapes(full_server) -> None:
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 1, "logprobs": 5, "temperature": 1.0}
    by_text = raw_completion(full_server.url, body)
    with pytest.raises(EngineShapeError, match="return_tokens_as_token_ids"):
        parse_v1_completion(by_text)
    by_id = raw_completion(full_server.url, {**body, "return_tokens_as_token_ids": True})
    top = by_id["choices"][0]["logprobs"]["top_logprobs"][0]
    assert all(k.startswith("token_id:") for k in top)
    assert {i for i, _ in parse_v1_completion(by_id)} >= {2025, 3703, 5567, 2258, 970}


def test_info_and_tokenizer(full_server, smollm2) -> None:
    c = EngineClient(full_server.url, api_key="")
    info = c.info()
    assert (info.model, info.engine, info.vocab_size, info.context_length) == ("smollm2", "vllm", None, 8192)
    for text in ["Every effort moves you", "In 2026, 3.14159 apples cost $12!"]:
        ids = c.tokenize(text)
        assert ids == smollm2.tokenizer.encode(text)
        assert c.detokenize(ids) == text


def test_whole_vocabulary_matches_in_process_model(full_server, smollm2) -> None:
    c = EngineClient(full_server.url, api_key="", timeout=300)
    t = time.perf_counter()
    r = c.next_token(PROMPT, vocab_size=49152)
    call_s = time.perf_counter() - t
    assert r.whole_vocabulary and len(r.ids) == 49152
    engine = r.dense_logprobs().exp().double()
    ours = smollm2.next_token_logits(PROMPT).softmax(-1).double()
    tv = 0.5 * (engine - ours).abs().sum().item()
    print(f"\nvLLM (F32) vs in-process: TV {tv:.2e}, top-5 {[round(math.exp(x), 4) for x in r.logprobs[:5]]}, "
          f"whole-vocabulary call {call_s:.2f} s, server RSS {full_server.rss_mib():.0f} MiB")
    assert tv < 5e-3
    assert list(r.ids[:5]) == ours.topk(5).indices.tolist() == [2025, 3703, 5567, 2258, 970]


def test_engine_alone_tokens_per_second(full_server) -> None:
    """Reported, not asserted: vLLM's own greedy decode speed here, the baseline for our overhead later."""
    body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 100, "temperature": 0.0, "ignore_eos": True}
    raw_completion(full_server.url, {**body, "max_tokens": 2})  # warm up
    t = time.perf_counter()
    out = raw_completion(full_server.url, body)
    dt = time.perf_counter() - t
    n = out["usage"]["completion_tokens"]
    print(f"\nvLLM alone: {n} tokens greedy in {dt:.2f} s = {n / dt:.1f} tok/s")
    assert n == 100 and out["choices"][0]["text"].startswith(" away from the rest of the team")
