"""Every page in AppTest on the remote backend: a real llama.cpp server (xllamacpp) on the bundled
model's float32 copy, chosen by URL, and the same server through a fault proxy that reports only the
top 20 tokens (as vLLM does without --max-logprobs -1)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import core
import torch
import ui.controls
from core.engines import llamacpp
from core.loading import _smollm2_path
from engine_fault_proxy import FaultProxy

pytest.importorskip("xllamacpp")

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture(scope="module")
def server():
    return llamacpp.serve(llamacpp.f32_gguf(_smollm2_path()))


def unescaped(markdown: str) -> str:
    return markdown.replace("\\", "")  # the pages escape server text for Markdown


def open_app(monkeypatch: pytest.MonkeyPatch, source: str, page: str) -> AppTest:
    monkeypatch.setattr(ui.controls, "TEST_MODEL", source)
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(APP, default_timeout=240)
    app.switch_page(f"app_pages/{page}").run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    return app


@pytest.mark.parametrize("page", ["next_token.py", "side_by_side.py", "generate.py", "lesson.py", "quantization.py"])
def test_every_page_renders_on_an_engine(monkeypatch, server, page) -> None:
    app = open_app(monkeypatch, server.url, page)
    if page == "generate.py":
        app.number_input(key="gen_max_tokens").set_value(4).run()
        app.button(key="gen_generate").click().run()
        assert not app.exception and not app.error
        run = app.session_state["gen_run"]
        assert len(run.steps) == 4
    if page == "side_by_side.py":
        app.number_input(key="sbs_max_tokens").set_value(3).run()
        app.button(key="sbs_generate").click().run()
        assert not app.exception and not app.error
        assert app.session_state["sbs_run"] is not None


def test_sidebar_connection_check_says_what_the_engine_reports(monkeypatch, server) -> None:
    monkeypatch.setattr(ui.controls, "TEST_MODEL", None)
    st.cache_data.clear()
    st.cache_resource.clear()
    app = AppTest.from_file(APP, default_timeout=240)
    app.run()
    app.selectbox(key="model_label").set_value("Inference server (OpenAI-compatible)…").run()
    assert any("Type the" in i.value for i in [*app.info, *app.sidebar.caption]), "asks for an address"
    app.text_input(key="server_url").set_value(server.url).run()
    assert not app.exception, app.exception
    ok = [unescaped(s.value) for s in app.sidebar.success]
    assert ok and "whole vocabulary (49,152 tokens)" in ok[0] and "llama.cpp" in ok[0]
    app.text_input(key="server_url").set_value(f"http://127.0.0.1:{llamacpp.free_loopback_port()}/v1").run()
    errors = [unescaped(e.value) for e in app.sidebar.error]
    assert errors and "connection refused" in errors[0]
    assert app.text_area(key="prompt").value  # the prompt and settings are still there


def test_quantization_page_shows_the_q4_1_engine_beside_float32(monkeypatch) -> None:
    app = open_app(monkeypatch, "gpt2-tiny", "quantization.py")  # the page loads its own two models
    text = " ".join(m.value for m in app.markdown)
    assert "Total variation between the two distributions" in text
    tv = float(text.split("**")[1])
    assert 0.01 < tv < 0.25  # 0.080 measured for the default prompt
    table = app.dataframe[0].value
    away = table[table["id"] == 2025].iloc[0]
    assert away["float32, in this process"].startswith("31") and away["4-bit Q4_1, llama.cpp"].startswith("28")


FAULTS = {  # fault -> (how the proxy misbehaves, words the user must see)
    "connection closed unanswered (crash)": ("down", "closed the connection"),
    "refusing (HTTP 503)": ("status503", "HTTP 503"),
    "slow (timeout)": ("hang", "did not answer"),
    "too many logprobs (HTTP 400)": ("status400", "--max-logprobs -1"),
    "malformed JSON": ("garbage", "invalid JSON"),
    "response cut": ("cut", "cut after"),
}


def test_faults_on_the_next_token_page_keep_the_prompt(monkeypatch, server) -> None:
    """Each fault after a good first render: a clear message, no traceback, the prompt kept, and the
    page works again once the fault goes. Prints the fault table (fault -> what the user saw)."""
    monkeypatch.setenv("SAMPLING_LAB_ENGINE_TIMEOUT", "3")
    seen = {}
    with FaultProxy(upstream=server.url) as proxy:
        app = open_app(monkeypatch, proxy.url, "next_token.py")
        for n, (fault, (how, words)) in enumerate(FAULTS.items()):
            proxy.fault = {"status503": "status", "status400": "status", "down": "close"}.get(how, how)
            proxy.fault_status = 503 if how == "status503" else 400
            proxy.fault_body = json.dumps({"error": {"message": "Requested logprobs of 49152, which is greater "
                                                                "than max allowed: 20" if how == "status400"
                                                     else "Service Unavailable"}}).encode()
            prompt = f"Every effort moves you {n}"
            app.text_area(key="prompt").set_value(prompt).run()  # a new prompt: the engine is asked again
            assert not app.exception, (fault, app.exception)
            errors = [unescaped(e.value) for e in app.error]
            seen[fault] = errors[0] if errors else "(no message)"
            assert app.text_area(key="prompt").value == prompt
            assert errors and (words in errors[0]), (fault, errors)
            proxy.fault = "none"
            app.run()
            assert not app.error and not app.exception, fault  # recovered
    print("\n| fault | what the user saw |\n|---|---|")
    for fault, text in seen.items():
        print(f"| {fault} | {text[:220]} |")


def test_stream_cut_mid_generation_keeps_the_tokens_so_far(monkeypatch, server) -> None:
    with FaultProxy(upstream=server.url) as proxy:
        app = open_app(monkeypatch, proxy.url, "generate.py")
        app.number_input(key="gen_max_tokens").set_value(8).run()
        answer, calls = proxy._answer, []

        def cut_after_three(method, path, body):  # the 4th request on is cut mid-body
            out = answer(method, path, body)
            calls.append(path)
            if calls.count("/completion") >= 3:
                proxy.fault = "cut"
            return out

        proxy._answer = cut_after_three
        app.button(key="gen_generate").click().run()
        assert not app.exception, app.exception
        errors = [unescaped(e.value) for e in app.error]
        assert errors and "cut after" in errors[0] and "kept" in errors[0]
        assert len(app.session_state["gen_run"].steps) == 3  # the tokens so far
        print(f"\n| stream cut mid-generation | {errors[0][:220]} |")


def vllm_like(proxy: FaultProxy, cap: int = 20) -> None:
    """Make the llama.cpp server behind proxy answer as vLLM without --max-logprobs -1 does: owned by
    vllm, no vocabulary size, /tokenize in vLLM's shape, and HTTP 400 above `cap` log-probabilities."""
    answer = proxy._answer

    def translate(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/v1/models":
            status, data = answer(method, path, body)
            models = json.loads(data)
            models["data"] = [{"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "object": "model", "owned_by": "vllm",
                               "max_model_len": 2048}]
            return status, json.dumps(models).encode()
        if path == "/tokenize":
            asked = json.loads(body)
            return answer(method, path, json.dumps({"content": asked["prompt"], "add_special": False}).encode())
        if path == "/v1/completions" and json.loads(body).get("logprobs", 0) > cap:
            message = f"Requested logprobs of {json.loads(body)['logprobs']}, which is greater than max allowed: {cap}"
            return 400, json.dumps({"object": "error", "message": message, "code": 400}).encode()
        return answer(method, path, body)

    proxy._answer = translate


@pytest.mark.parametrize("page", ["next_token.py", "side_by_side.py", "generate.py", "lesson.py"])
def test_pages_on_a_top_20_engine(monkeypatch, server, page) -> None:
    with FaultProxy(upstream=server.url) as proxy:
        vllm_like(proxy)
        app = open_app(monkeypatch, proxy.url, page)
        if page == "next_token.py":
            notes = [unescaped(i.value) for i in app.info]
            assert any("reports only its top 20 tokens" in n for n in notes), notes
            chart = app.get("plotly_chart")[0].proto.spec
            assert "everything the engine did not report" in chart
        if page == "generate.py":
            app.number_input(key="gen_max_tokens").set_value(3).run()
            app.button(key="gen_generate").click().run()
            assert not app.exception and not app.error
            assert len(app.session_state["gen_run"].steps) == 3


def test_top_20_engine_in_core(server) -> None:
    with FaultProxy(upstream=server.url) as proxy:
        vllm_like(proxy)
        lm = core.load_model(proxy.url)
        assert lm.engine.top_n == 20 and lm.engine.client.info().engine == "vllm"
        logits = lm.next_token_logits([8600, 3867, 7488, 346])
        assert int(torch.isfinite(logits).sum()) == 20
        assert 0.7 < float(logits[torch.isfinite(logits)].exp().sum()) < 0.95  # the rest: not reported
