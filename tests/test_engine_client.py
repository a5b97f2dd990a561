"""core.engines.client without a real engine: response parsing, URL and key handling, and every fault
through a loopback server that misbehaves on purpose (tests/engine_fault_proxy.py)."""
from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest
import torch

from core.engines import client as ec
from core.engines.client import (EngineClient, EngineHTTPError, EngineJSONError, EngineLogprobsLimitError,
                                 EngineShapeError, EngineTimeoutError, EngineTruncatedError,
                                 EngineUnreachableError, EngineURLError, TokenizerMismatchError)
from engine_fault_proxy import FaultProxy

VLLM_DATA = Path(__file__).parent / "data" / "vllm"  # real vLLM 0.32 answers (see its README.md)

V = 8  # a tiny vocabulary for canned answers
LOGPROBS = [math.log(p) for p in (0.4, 0.3, 0.1, 0.08, 0.05, 0.04, 0.02, 0.01)]


def llamacpp_models(n_vocab: int = V) -> bytes:
    return json.dumps({"object": "list", "data": [{"id": "tiny.gguf", "object": "model", "owned_by": "llamacpp",
                                                   "meta": {"n_vocab": n_vocab, "n_ctx_train": 64}}]}).encode()


def vllm_models() -> bytes:
    return json.dumps({"object": "list", "data": [{"id": "tiny-hf", "object": "model", "owned_by": "vllm",
                                                   "max_model_len": 64}]}).encode()


def llamacpp_completion(n: int) -> bytes:
    top = [{"id": i, "token": f"t{i}", "bytes": [116], "logprob": lp} for i, lp in enumerate(LOGPROBS[:n])]
    return json.dumps({"content": "t0", "completion_probabilities": [
        {"id": 0, "token": "t0", "logprob": LOGPROBS[0], "top_logprobs": top}]}).encode()


def vllm_v1(n: int, ids_as_keys: bool = True) -> bytes:
    key = (lambda i: f"token_id:{i}") if ids_as_keys else (lambda i: f"t{i}")
    # vLLM adds the sampled token to the top N (here token 5, outside a top 2)
    top = {key(i): LOGPROBS[i] for i in [*range(n), 5]}
    return json.dumps({"choices": [{"index": 0, "text": "t5", "finish_reason": "length", "logprobs": {
        "text_offset": [0], "token_logprobs": [LOGPROBS[5]], "tokens": [key(5)], "top_logprobs": [top]}}]}).encode()


def test_parse_llamacpp_completion_keeps_raw_logprobs_and_orders() -> None:
    r = ec.make_report(ec.parse_llamacpp_completion(json.loads(llamacpp_completion(V))), V)
    assert r.whole_vocabulary and r.ids == tuple(range(V))
    assert r.logprobs == tuple(LOGPROBS)
    assert r.reported_mass == pytest.approx(1.0)
    dense = r.dense_logprobs()
    assert torch.allclose(dense.softmax(-1), torch.tensor([0.4, 0.3, 0.1, 0.08, 0.05, 0.04, 0.02, 0.01]))


def test_parse_vllm_top_n_is_not_renormalised() -> None:
    r = ec.make_report(ec.parse_v1_completion(json.loads(vllm_v1(2))), V)
    assert not r.whole_vocabulary
    assert r.ids == (0, 1, 5)  # the top 2 and the sampled token, most likely first
    assert r.reported_mass == pytest.approx(0.4 + 0.3 + 0.04)
    dense = r.dense_logprobs()
    assert dense[2].item() == float("-inf") and dense[0].item() == pytest.approx(math.log(0.4))


def test_parse_llamacpp_v1_list_with_ids() -> None:
    body = {"choices": [{"text": " away", "logprobs": {"content": [{"id": 1, "token": "t1", "logprob": LOGPROBS[1],
            "top_logprobs": [{"id": 0, "token": "t0", "logprob": LOGPROBS[0]},
                             {"id": 1, "token": "t1", "logprob": LOGPROBS[1]}]}]}}]}
    assert ec.parse_v1_completion(body) == [(0, LOGPROBS[0]), (1, LOGPROBS[1])]


def test_token_text_keys_are_refused_with_the_fix() -> None:
    with pytest.raises(EngineShapeError, match="return_tokens_as_token_ids"):
        ec.parse_v1_completion(json.loads(vllm_v1(2, ids_as_keys=False)))
    real = json.loads((VLLM_DATA / "completions_text_keys.json").read_text())
    with pytest.raises(EngineShapeError, match="return_tokens_as_token_ids"):
        ec.parse_v1_completion(real)


def test_parse_real_vllm_response() -> None:
    """vLLM 0.32 with return_tokens_as_token_ids: the top 5 of 'Every effort moves you' (SmolLM2, F32)."""
    real = json.loads((VLLM_DATA / "completions_token_ids.json").read_text())
    r = ec.make_report(ec.parse_v1_completion(real), 49152)
    assert r.ids == (2025, 3703, 5567, 2258, 970)  # " away", " forward", " closer", " towards", " way"
    assert [round(math.exp(lp), 3) for lp in r.logprobs[:2]] == [0.310, 0.176]  # the golden values
    assert not r.whole_vocabulary and r.reported_mass < 0.61


@pytest.mark.parametrize("body, fragment", [
    ([], "not a JSON object"),
    ({"choices": []}, "no 'choices'"),
    ({"choices": [{"text": "x"}]}, "no 'logprobs'"),
    ({"choices": [{"logprobs": {"content": [{"top_logprobs": [{"id": "1", "logprob": -1}]}]}}]}, "integer 'id'"),
    ({"choices": [{"logprobs": {"top_logprobs": [{"token_id:1": "x"}]}}]}, "not a number"),
])
def test_unexpected_shapes_name_the_field(body, fragment) -> None:
    with pytest.raises(EngineShapeError, match=fragment):
        ec.parse_v1_completion(body)


def test_report_checks() -> None:
    with pytest.raises(TokenizerMismatchError, match="token id 9"):
        ec.make_report([(9, -1.0)], V)
    with pytest.raises(EngineShapeError, match="not a log-probability"):
        ec.make_report([(1, 0.5)], V)
    with pytest.raises(EngineShapeError, match="twice"):
        ec.make_report([(1, -1.0), (1, -2.0)], V)
    assert not ec.make_report([(1, -1.0)], None).whole_vocabulary  # unknown vocabulary: never "whole"


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
    ("  https://engine.example.org/llm/v1 ", "https://engine.example.org/llm"),
    ("http://[::1]:8080", "http://[::1]:8080"),
])
def test_base_url_normalised(url, expected) -> None:
    assert ec.normalize_base_url(url) == expected


@pytest.mark.parametrize("url, fragment", [
    ("", "empty"), ("ftp://host/v1", "http:// or https://"), ("127.0.0.1:8000", "http:// or https://"),
    ("http://:8000/v1", "no host"), ("http://host:99999/v1", "not a valid URL"),
    ("http://user:secret@host/v1", "no user name or password"), ("http://host/v1?x=1", "query"),
])
def test_bad_urls_are_refused(url, fragment) -> None:
    with pytest.raises(EngineURLError, match=fragment) as e:
        EngineClient(url)
    assert "secret" not in str(e.value)


def test_api_key_from_env_is_sent_and_never_shown(monkeypatch) -> None:
    secret = "sk-test-3f9a1c"
    monkeypatch.delenv("SAMPLING_LAB_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    assert ec.api_key_from_env() == "sk-other"
    monkeypatch.setenv("SAMPLING_LAB_API_KEY", secret)  # ours wins over OpenAI's
    routes = {("GET", "/v1/models"): (200, llamacpp_models())}
    with FaultProxy(routes=routes) as proxy:
        client = EngineClient(proxy.url)
        assert secret not in repr(client) and "api_key=set" in repr(client)
        client.info()
        assert proxy.requests[-1][2]["Authorization"] == f"Bearer {secret}"
        # a server that echoes the key back in its error must not get it into our message
        proxy.fault, proxy.fault_status = "status", 401
        proxy.fault_body = json.dumps({"error": {"message": f"invalid key {secret}"}}).encode()
        with pytest.raises(EngineHTTPError, match="SAMPLING_LAB_API_KEY") as e:
            client.tokenize("x")
        assert secret not in str(e.value) and e.value.status == 401


@pytest.fixture
def llamacpp_fake():
    routes = {("GET", "/v1/models"): (200, llamacpp_models()), ("GET", "/health"): (200, b'{"status":"ok"}'),
              ("POST", "/completion"): (200, llamacpp_completion(V)),
              ("POST", "/tokenize"): (200, b'{"tokens": [1, 2]}'),
              ("POST", "/detokenize"): (200, b'{"content": "t1t2"}')}
    with FaultProxy(routes=routes) as proxy:
        yield proxy


def test_happy_path_llamacpp(llamacpp_fake) -> None:
    c = EngineClient(llamacpp_fake.url, api_key="")
    c.health()
    info = c.info()
    assert (info.engine, info.vocab_size, info.context_length) == ("llama.cpp", V, 64)
    assert c.tokenize("x") == [1, 2] and c.detokenize([1, 2]) == "t1t2"
    r = c.next_token([1, 2])
    assert r.whole_vocabulary and len(r.ids) == V
    method, path, _, sent = llamacpp_fake.requests[-1]
    assert (method, path) == ("POST", "/completion")
    # the whole vocabulary, raw: the engine's own sampler is neutral
    assert json.loads(sent) | {"prompt": None} == {"prompt": None, "n_predict": 1, "n_probs": V, "top_k": 0,
                                                   "cache_prompt": True, "temperature": 1.0, "top_p": 1.0,
                                                   "min_p": 0.0}


def test_real_vllm_tokenize_and_models() -> None:
    routes = {("GET", "/v1/models"): (200, (VLLM_DATA / "models.json").read_bytes()),
              ("POST", "/tokenize"): (200, (VLLM_DATA / "tokenize.json").read_bytes()),
              ("POST", "/detokenize"): (200, (VLLM_DATA / "detokenize.json").read_bytes())}
    with FaultProxy(routes=routes) as proxy:
        c = EngineClient(proxy.url, api_key="")
        assert c.info() == ec.ServerInfo("smollm2", "vllm", None, 8192)
        assert c.tokenize("Every effort moves you") == [8600, 3867, 7488, 346]
        assert json.loads(proxy.requests[-1][3]) == {"model": "smollm2", "prompt": "Every effort moves you",
                                                      "add_special_tokens": False}
        assert c.detokenize([8600, 3867]) == "Every effort"


def test_happy_path_vllm_asks_token_ids() -> None:
    routes = {("GET", "/v1/models"): (200, vllm_models()), ("POST", "/v1/completions"): (200, vllm_v1(2))}
    with FaultProxy(routes=routes) as proxy:
        c = EngineClient(proxy.url, model="tiny-hf", api_key="")
        assert c.info().engine == "vllm" and c.info().vocab_size is None
        with pytest.raises(ValueError, match="vocab_size or top_n"):
            c.next_token([1])
        r = c.next_token([1], 2)
        sent = json.loads(proxy.requests[-1][3])
        assert sent["return_tokens_as_token_ids"] is True and sent["logprobs"] == 2 and sent["model"] == "tiny-hf"
        assert r.ids == (0, 1, 5) and not r.whole_vocabulary and r.vocab_size is None
        with pytest.raises(ec.EngineError, match="does not serve a model named 'other'"):
            EngineClient(proxy.url, model="other", api_key="").info()


# ---------------------------------------------------------------- faults


def test_fault_server_down() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EngineUnreachableError, match="connection refused"):
        EngineClient(f"http://127.0.0.1:{port}/v1", api_key="").health()


def test_fault_slow_server_times_out(llamacpp_fake) -> None:
    c = EngineClient(llamacpp_fake.url, api_key="", timeout=0.5)
    c.info()
    llamacpp_fake.fault = "hang"
    with pytest.raises(EngineTimeoutError, match=r"did not answer within 0.5 s"):
        c.next_token([1, 2])


def test_fault_too_many_logprobs_says_what_to_do() -> None:
    routes = {("GET", "/v1/models"): (200, vllm_models())}
    with FaultProxy(routes=routes) as proxy:
        c = EngineClient(proxy.url, api_key="")
        c.info()
        proxy.fault, proxy.fault_status = "status", 400
        # vLLM 0.32's answer to 21 logprobs without --max-logprobs -1 (captured from a real server)
        proxy.fault_body = (VLLM_DATA / "error_21_logprobs.json").read_bytes()
        with pytest.raises(EngineLogprobsLimitError, match="--max-logprobs -1") as e:
            c.next_token([1], 21)
        assert e.value.max_allowed == 20 and e.value.status == 400 and "at most 20" in str(e.value)
        proxy.fault_body = b'{"error": {"message": "prompt too long"}}'  # another 400 stays a plain HTTP error
        with pytest.raises(EngineHTTPError, match="HTTP 400: prompt too long") as e:
            c.next_token([1], 5)
        assert not isinstance(e.value, EngineLogprobsLimitError)


@pytest.mark.parametrize("fault, error, message", [
    ("garbage", EngineJSONError, "invalid JSON"),                                 # malformed JSON
    ("cut", EngineTruncatedError, r"was cut after \d+ of \d+ bytes"),            # a response cut mid-body
    ("close", EngineTruncatedError, "closed the connection"),                     # closed without an answer
])
def test_fault_broken_response(llamacpp_fake, fault, error, message) -> None:
    c = EngineClient(llamacpp_fake.url, api_key="")
    c.info()
    llamacpp_fake.fault = fault
    with pytest.raises(error, match=message):
        c.next_token([1, 2])


def test_fault_unexpected_shape(llamacpp_fake) -> None:
    llamacpp_fake.routes[("POST", "/completion")] = (200, b'{"content": "t0"}')  # n_probs ignored
    with pytest.raises(EngineShapeError, match="completion_probabilities"):
        EngineClient(llamacpp_fake.url, api_key="").next_token([1, 2])


def test_fault_tokenizer_mismatch() -> None:
    routes = {("GET", "/v1/models"): (200, llamacpp_models(n_vocab=50257)),
              ("POST", "/completion"): (200, llamacpp_completion(V))}
    with FaultProxy(routes=routes) as proxy:
        c = EngineClient(proxy.url, api_key="")
        with pytest.raises(TokenizerMismatchError, match="has 50257 tokens but 49152 were expected"):
            c.check_vocab(49152)
        with pytest.raises(TokenizerMismatchError):
            c.next_token([1, 2], vocab_size=49152)


def test_fault_wrong_address_is_a_404_with_advice(llamacpp_fake) -> None:
    with pytest.raises(EngineHTTPError, match="HTTP 404.*http://HOST:PORT/v1"):
        EngineClient(llamacpp_fake.url.replace("/v1", "/api/v1"), api_key="").info()


def test_every_fault_is_an_engine_error() -> None:
    for cls in (EngineURLError, EngineUnreachableError, EngineTimeoutError, EngineHTTPError, EngineLogprobsLimitError,
                EngineJSONError, EngineShapeError, EngineTruncatedError, TokenizerMismatchError):
        assert issubclass(cls, ec.EngineError)
