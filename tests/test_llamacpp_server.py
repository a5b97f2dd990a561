"""A real llama.cpp server (xllamacpp) started by the test on the bundled SmolLM2: the float32 copy
against our in-process model, the 4-bit original against the float32 copy, and faults in front of it."""
from __future__ import annotations

import math
import threading

import pytest
import torch

import core
from core.engines import EngineClient, EngineTruncatedError, EngineUnreachableError, TokenizerMismatchError
from core.engines import llamacpp
from core.loading import _smollm2_path
from engine_fault_proxy import FaultProxy

pytest.importorskip("xllamacpp")

PROMPT = [8600, 3867, 7488, 346]  # "Every effort moves you"


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p.double() - q.double()).abs().sum().item()


@pytest.fixture(scope="module")
def f32_server():
    path = llamacpp.f32_gguf(_smollm2_path())
    server = llamacpp.serve(path)
    yield server
    llamacpp.stop(path)


@pytest.fixture(scope="module")
def client(f32_server) -> EngineClient:
    return EngineClient(f32_server.url, api_key="")


@pytest.fixture(scope="module")
def f32_report(client):
    return client.next_token(PROMPT)  # the whole vocabulary: ~4.7 MB of JSON, once per module


def test_f32_copy_is_float32(f32_server) -> None:
    import gguf

    reader = gguf.GGUFReader(str(f32_server.path))
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    assert llamacpp.f32_gguf(_smollm2_path()) == f32_server.path  # cached: the same file again


def test_server_describes_itself(client) -> None:
    info = client.info()
    assert (info.engine, info.vocab_size) == ("llama.cpp", 49152)
    client.health()
    client.check_vocab(49152)
    with pytest.raises(TokenizerMismatchError, match="49152 tokens but 50257"):
        client.check_vocab(50257)  # e.g. a GPT-2 tokenizer on our side


def test_server_tokenizer_matches_ours(client, smollm2) -> None:
    for text in ["Every effort moves you", "In 2026, 3.14159 apples cost $12!", "naïve café — 東京\n\n  x"]:
        ids = client.tokenize(text)
        assert ids == smollm2.tokenizer.encode(text), text
        assert client.detokenize(ids) == text


def test_f32_engine_matches_in_process_model(f32_report, smollm2) -> None:
    assert f32_report.whole_vocabulary and len(f32_report.ids) == 49152
    engine = f32_report.dense_logprobs().exp()
    ours = smollm2.next_token_logits(PROMPT).softmax(-1)
    tv = total_variation(engine, ours)
    top5_engine, top5_ours = list(f32_report.ids[:5]), ours.topk(5).indices.tolist()
    print(f"\nF32 engine vs in-process: TV {tv:.5f}; top-5 engine {[round(math.exp(x), 4) for x in f32_report.logprobs[:5]]}"
          f" ours {[round(x, 4) for x in ours.topk(5).values.tolist()]}; reported mass {f32_report.reported_mass:.6f}")
    assert tv < 5e-3
    assert top5_engine == top5_ours == [2025, 3703, 5567, 2258, 970]
    assert f32_report.reported_mass == pytest.approx(1.0, abs=1e-3)  # raw softmax, not renormalised by us


def test_top_n_is_the_head_of_the_whole_vocabulary(client, f32_report) -> None:
    for endpoint in ("completion", "v1"):
        r = client.next_token(PROMPT, 5, endpoint=endpoint)
        assert not r.whole_vocabulary and r.ids == f32_report.ids[:5]
        # not bit for bit: llama.cpp's prompt cache re-reads only the last token (another batch shape)
        assert r.logprobs == pytest.approx(f32_report.logprobs[:5], abs=5e-3)
        assert r.reported_mass < 0.61


def test_q4_1_against_f32_and_a_stopped_server(f32_report) -> None:
    """What 4-bit quantization does to the next-token distribution; then the stopped server's fault."""
    server = llamacpp.start_server(_smollm2_path(), slots=1)  # not shared: this test stops it
    try:
        q4 = EngineClient(server.url, api_key="").next_token(PROMPT)
    finally:
        server.stop()
    assert q4.whole_vocabulary
    p_q4, p_f32 = q4.dense_logprobs().exp(), f32_report.dense_logprobs().exp()
    tv = total_variation(p_q4, p_f32)
    away, forward = 2025, 3703
    print(f"\nQ4_1 vs F32: ' away' {p_q4[away]:.3f} vs {p_f32[away]:.3f}, ' forward' {p_q4[forward]:.3f} vs "
          f"{p_f32[forward]:.3f}, TV {tv:.3f}")
    assert q4.ids[:2] == (away, forward)   # the same two leaders...
    assert 0.01 < tv < 0.25                # ...but a visibly different distribution (0.080 when measured)
    with pytest.raises(EngineUnreachableError, match="connection refused"):
        EngineClient(server.url, api_key="").health()


def test_response_cut_mid_body_through_a_proxy(f32_server) -> None:
    with FaultProxy(upstream=f32_server.url) as proxy:
        c = EngineClient(proxy.url, api_key="")
        assert c.info().engine == "llama.cpp"
        proxy.fault = "cut"  # the real 4.7 MB answer, cut in half
        with pytest.raises(EngineTruncatedError, match=r"cut after \d+ of \d+ bytes"):
            c.next_token(PROMPT)


def test_one_server_per_file_across_threads(f32_server) -> None:
    got: list[llamacpp.LlamaCppServer] = []
    threads = [threading.Thread(target=lambda: got.append(llamacpp.serve(f32_server.path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s is f32_server for s in got)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(llamacpp.LlamaCppServerError, match="does not exist"):
        llamacpp.start_server(tmp_path / "none.gguf")
    with pytest.raises(core.weights.WeightsError, match="does not exist"):
        llamacpp.f32_gguf(tmp_path / "none.gguf")
