"""A small synchronous client for OpenAI-compatible inference servers (vLLM, llama.cpp's server).

It asks an engine for the distribution of the next token after a list of token ids and returns what the
engine reported, as it reported it: token ids with raw log-probabilities, and whether that is the whole
vocabulary or only the top N. Nothing is renormalised here. Standard library only (http.client), one
connection per request, so one client may be shared by every thread.

Two request shapes are spoken:
- llama.cpp's own `POST /completion` with `n_probs` (whole vocabulary possible, ids in the answer);
- `POST /v1/completions` with an integer `logprobs`: llama.cpp answers a list with ids
  (`logprobs.content[0].top_logprobs`), vLLM the legacy dict keyed by token text, or by
  `"token_id:N"` when asked `return_tokens_as_token_ids` (vLLM caps `logprobs` at 20 unless started
  with `--max-logprobs -1`).

Every fault is an `EngineError` subclass whose message says what happened and what to do. The API key
(SAMPLING_LAB_API_KEY, else OPENAI_API_KEY) is sent as a Bearer header and never appears in a repr,
a log line or an exception message.
"""
from __future__ import annotations

import http.client
import json
import math
import os
import re
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

API_KEY_VARS = ("SAMPLING_LAB_API_KEY", "OPENAI_API_KEY")
VLLM_DEFAULT_MAX_LOGPROBS = 20  # vLLM's cap without --max-logprobs


# ---------------------------------------------------------------- errors

class EngineError(RuntimeError):
    """Anything that went wrong talking to an inference server; the message says what and what to do."""


class EngineURLError(EngineError, ValueError):
    """The server address is not an http(s) URL this client can use."""


class EngineUnreachableError(EngineError):
    """Nothing answers at the address: connection refused, unknown host, network down."""


class EngineTimeoutError(EngineError):
    """The server accepted the request but did not answer in time."""


class EngineHTTPError(EngineError):
    """The server answered with an HTTP error status (4xx/5xx)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class EngineLogprobsLimitError(EngineHTTPError):
    """The server refused the number of log-probabilities asked for (vLLM: 20 unless --max-logprobs -1)."""

    def __init__(self, message: str, status: int, max_allowed: int | None) -> None:
        super().__init__(message, status)
        self.max_allowed = max_allowed


class EngineResponseError(EngineError):
    """The server answered 200 but the body is not what an OpenAI-compatible server sends."""


class EngineJSONError(EngineResponseError):
    """The body is not valid JSON."""


class EngineShapeError(EngineResponseError):
    """Valid JSON, but a field this client needs is missing or has the wrong type."""


class EngineTruncatedError(EngineError):
    """The connection closed before the whole response arrived (a stream cut mid-response)."""


class TokenizerMismatchError(EngineError):
    """The engine's vocabulary is not the one expected (different model or tokenizer)."""


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class NextTokenReport:
    """What an engine reported for the next position: raw log-probabilities, never renormalised.

    `ids[i]` has log-probability `logprobs[i]` under the engine's own (raw, temperature 1) distribution.
    `whole_vocabulary` is True when every token of the vocabulary was reported; otherwise the engine
    gave only its top N and `1 - reported_mass` is the probability of everything it did not report.
    """

    ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    whole_vocabulary: bool
    vocab_size: int | None  # the engine's vocabulary size when known

    @property
    def reported_mass(self) -> float:
        return math.fsum(math.exp(lp) for lp in self.logprobs)

    def dense_logprobs(self, vocab_size: int | None = None):
        """A float32 (V,) torch tensor: the reported log-probabilities, -inf where nothing was reported."""
        import torch  # only callers that want a tensor pay for torch

        v = vocab_size or self.vocab_size
        if v is None:
            raise ValueError("the vocabulary size is unknown: pass vocab_size")
        if self.ids and max(self.ids) >= v:
            raise TokenizerMismatchError(f"the engine reported token id {max(self.ids)}, outside a vocabulary of {v}")
        out = torch.full((v,), float("-inf"), dtype=torch.float32)
        out[torch.tensor(self.ids, dtype=torch.long)] = torch.tensor(self.logprobs, dtype=torch.float32)
        return out


@dataclass(frozen=True)
class ServerInfo:
    """What `/v1/models` says about the served model."""

    model: str                  # the served model name, to pass as "model" in requests
    engine: str                 # "llama.cpp", "vllm" or "unknown" (from owned_by)
    vocab_size: int | None      # llama.cpp reports it; vLLM does not
    context_length: int | None  # llama.cpp: n_ctx_train; vLLM: max_model_len


# ---------------------------------------------------------------- URL and key

def normalize_base_url(url: str) -> str:
    """'http://host:port/v1/' -> 'http://host:port' (the root the engine's paths hang from)."""
    if not isinstance(url, str) or not url.strip():
        raise EngineURLError("the server address is empty: give one like http://127.0.0.1:8000/v1")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as e:
        raise EngineURLError(f"the server address is not a valid URL ({e})") from e
    if parts.scheme not in ("http", "https"):
        shown = parts.scheme or "none"
        raise EngineURLError(f"the server address must start with http:// or https:// (scheme: {shown})")
    if not parts.hostname:
        raise EngineURLError("the server address has no host name")
    if parts.username or parts.password:
        # the address is shown in messages: a secret in it would leak there
        raise EngineURLError("put no user name or password in the server address; "
                             f"set {API_KEY_VARS[0]} for an API key")
    if parts.query or parts.fragment:
        raise EngineURLError("the server address must not have a query (?...) or fragment (#...)")
    path = parts.path.rstrip("/")
    path = path[:-3] if path.endswith("/v1") else path
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{path}"


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return next((env[k] for k in API_KEY_VARS if env.get(k)), None)


# ---------------------------------------------------------------- parsing (pure: dict in, report out)

def _shape(cond: bool, what: str) -> None:
    if not cond:
        raise EngineShapeError(f"unexpected response from the engine: {what}")


def _entries_with_ids(items: Any, where: str) -> list[tuple[int, float]]:
    _shape(isinstance(items, list), f"{where} is not a list")
    out = []
    for it in items:
        _shape(isinstance(it, dict) and isinstance(it.get("id"), int)
               and isinstance(it.get("logprob"), (int, float)), f"an entry of {where} lacks an integer 'id' "
               "and a numeric 'logprob'")
        out.append((it["id"], float(it["logprob"])))
    return out


_TOKEN_ID_KEY = re.compile(r"token_id:(\d+)")


def parse_llamacpp_completion(body: Any) -> list[tuple[int, float]]:
    """llama.cpp `POST /completion` with n_probs: completion_probabilities[0].top_logprobs."""
    _shape(isinstance(body, dict), "the body is not a JSON object")
    probs = body.get("completion_probabilities")
    _shape(isinstance(probs, list) and probs and isinstance(probs[0], dict),
           "no 'completion_probabilities' (is this llama.cpp's server, and was n_probs > 0?)")
    return _entries_with_ids(probs[0].get("top_logprobs"), "completion_probabilities[0].top_logprobs")


def parse_v1_completion(body: Any) -> list[tuple[int, float]]:
    """`POST /v1/completions` choices[0].logprobs in either shape: llama.cpp's list or vLLM's dict."""
    _shape(isinstance(body, dict), "the body is not a JSON object")
    choices = body.get("choices")
    _shape(isinstance(choices, list) and choices and isinstance(choices[0], dict), "no 'choices'")
    lp = choices[0].get("logprobs")
    _shape(isinstance(lp, dict), "choices[0] has no 'logprobs' object (did the server ignore 'logprobs'?)")
    if "content" in lp:  # llama.cpp: [{"id", "token", "logprob", "top_logprobs": [{"id", ...}]}]
        content = lp["content"]
        _shape(isinstance(content, list) and content and isinstance(content[0], dict), "logprobs.content is empty")
        return _entries_with_ids(content[0].get("top_logprobs"), "logprobs.content[0].top_logprobs")
    top = lp.get("top_logprobs")  # vLLM legacy: {"tokens", "token_logprobs", "top_logprobs": [{key: lp}]}
    _shape(isinstance(top, list) and top and isinstance(top[0], dict),
           "logprobs has neither 'content' (llama.cpp) nor 'top_logprobs' (legacy)")
    out = []
    for key, value in top[0].items():
        m = _TOKEN_ID_KEY.fullmatch(key)
        if m is None:
            raise EngineShapeError("the engine keyed its log-probabilities by token text, not id (e.g. "
                                   f"{key[:40]!r}); texts are ambiguous: a vLLM server needs "
                                   "\"return_tokens_as_token_ids\": true (vLLM >= 0.5)")
        _shape(isinstance(value, (int, float)), f"the log-probability of {key!r} is not a number")
        out.append((int(m.group(1)), float(value)))
    return out


def make_report(entries: Sequence[tuple[int, float]], vocab_size: int | None) -> NextTokenReport:
    """Check and order what an engine reported (most likely first); duplicates must agree."""
    seen: dict[int, float] = {}
    for i, lp in entries:
        if vocab_size is not None and not 0 <= i < vocab_size:
            raise TokenizerMismatchError(f"the engine reported token id {i}, outside the expected vocabulary "
                                         f"of {vocab_size} tokens: it serves a different model or tokenizer")
        if not (lp <= 1e-4 and not math.isnan(lp)):  # -inf is a legal log-probability
            raise EngineShapeError(f"the engine reported log-probability {lp} for token {i}: not a log-probability")
        if i in seen and abs(seen[i] - lp) > 1e-6:
            raise EngineShapeError(f"token {i} reported twice with different log-probabilities")
        seen[i] = lp
    _shape(bool(seen), "the engine reported no token")
    ordered = sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))
    whole = vocab_size is not None and len(ordered) == vocab_size
    return NextTokenReport(tuple(i for i, _ in ordered), tuple(lp for _, lp in ordered), whole, vocab_size)


def _limit_error(status: int, detail: str, asked: int) -> EngineLogprobsLimitError | None:
    """vLLM: 'Requested logprobs of 21, which is greater than max allowed: 20' (wording varies a little)."""
    if "logprob" not in detail.lower():
        return None
    m = re.search(r"max(?:imum)?[^0-9]{0,30}(\d+)", detail, re.IGNORECASE)
    max_allowed = int(m.group(1)) if m else None
    cap = f"at most {max_allowed}" if max_allowed is not None else "fewer"
    return EngineLogprobsLimitError(
        f"the server refused {asked} log-probabilities per token (HTTP {status}; it allows {cap}). "
        f"vLLM caps them at {VLLM_DEFAULT_MAX_LOGPROBS} unless started with --max-logprobs -1: restart it "
        "with that flag to see the whole vocabulary, or ask for the top "
        f"{max_allowed if max_allowed is not None else VLLM_DEFAULT_MAX_LOGPROBS} only. Server said: {detail}",
        status, max_allowed)


# ---------------------------------------------------------------- the client

class EngineClient:
    """Synchronous client for one OpenAI-compatible server. Thread-safe: no state changes after the first
    `info()`, and every request opens its own connection."""

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, connect_timeout: float = 5.0) -> None:
        self.base_url = normalize_base_url(url)
        parts = urlsplit(self.base_url)
        self._https = parts.scheme == "https"
        self._host, self._port, self._prefix = parts.hostname, parts.port, parts.path
        self._model = model
        self._key = api_key if api_key is not None else api_key_from_env()
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self._info: ServerInfo | None = None

    def __repr__(self) -> str:  # never the key
        return f"EngineClient({self.base_url!r}, model={self._model!r}, api_key={'set' if self._key else 'none'})"

    # ------------------------------------------------------------ transport

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """One HTTP exchange -> parsed JSON (or None for an empty 2xx body). Faults -> EngineError."""
        where = f"{self.base_url}{path}"
        timeout = self.timeout if timeout is None else timeout
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        kwargs = {"context": ssl.create_default_context()} if self._https else {}
        conn = cls(self._host, self._port, timeout=self.connect_timeout, **kwargs)
        try:
            try:
                conn.connect()
            except ConnectionRefusedError as e:
                raise EngineUnreachableError(f"no server answers at {self.base_url} (connection refused): "
                                             "is it running, and on this port?") from e
            except socket.gaierror as e:
                raise EngineUnreachableError(f"cannot resolve the host {self._host!r} of {self.base_url}") from e
            except (TimeoutError, socket.timeout) as e:
                raise EngineTimeoutError(f"{self.base_url} did not accept a connection within "
                                         f"{self.connect_timeout:g} s (host down or firewalled?)") from e
            except ssl.SSLError as e:
                raise EngineUnreachableError(f"TLS handshake with {self.base_url} failed: {e.reason}") from e
            except OSError as e:
                raise EngineUnreachableError(f"cannot connect to {self.base_url}: {e.strerror or e}") from e
            conn.sock.settimeout(timeout)
            try:
                conn.request(method, self._prefix + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (TimeoutError, socket.timeout) as e:
                raise EngineTimeoutError(f"{where} did not answer within {timeout:g} s: the server is busy "
                                         "or the request is too large; try again or raise the timeout") from e
            except http.client.IncompleteRead as e:
                got = len(e.partial)
                expected = f" of {got + e.expected}" if e.expected is not None else ""
                raise EngineTruncatedError(f"the response from {where} was cut after {got}{expected} bytes: "
                                           "the server stopped or the connection dropped mid-response") from e
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                raise EngineTruncatedError(f"{where} closed the connection before a complete response "
                                           "(the server stopped or crashed mid-request)") from e
            except http.client.HTTPException as e:
                raise EngineResponseError(f"{where} sent a malformed HTTP response ({type(e).__name__})") from e
            except OSError as e:
                raise EngineUnreachableError(f"the connection to {where} failed: {e.strerror or e}") from e
        finally:
            conn.close()
        text = raw.decode("utf-8", errors="replace")
        if resp.status >= 400:
            raise self._http_error(resp.status, text, where, body)
        if not raw.strip():
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            excerpt = self._scrub(text[max(0, e.pos - 20):e.pos + 20])
            raise EngineJSONError(f"{where} returned invalid JSON ({e.msg} at character {e.pos} of {len(text)}: "
                                  f"{excerpt!r}); is this an OpenAI-compatible server?") from e

    def _http_error(self, status: int, text: str, where: str, body: Any) -> EngineHTTPError:
        detail = text.strip()
        try:
            err = json.loads(text)
            if isinstance(err, dict):
                e = err.get("error", err)
                detail = str(e.get("message", e) if isinstance(e, dict) else e)
        except json.JSONDecodeError:
            pass
        detail = self._scrub(detail[:300])
        asked = body.get("logprobs", body.get("n_probs")) if isinstance(body, dict) else None
        if status in (400, 422) and isinstance(asked, int) and (limit := _limit_error(status, detail, asked)):
            return limit
        if status in (401, 403):
            return EngineHTTPError(f"{where} refused the request (HTTP {status}): set {API_KEY_VARS[0]} "
                                   f"(or {API_KEY_VARS[1]}) to the server's API key. Server said: {detail}", status)
        if status == 404:
            return EngineHTTPError(f"{where} does not exist on this server (HTTP 404): is the address the "
                                   f"engine's root (http://HOST:PORT/v1)? Server said: {detail}", status)
        return EngineHTTPError(f"{where} answered HTTP {status}: {detail}", status)

    # ------------------------------------------------------------ endpoints

    def health(self) -> None:
        """Raise unless GET /health answers 2xx (llama.cpp and vLLM both serve it)."""
        self._request("GET", "/health", timeout=self.connect_timeout)

    def info(self) -> ServerInfo:
        """GET /v1/models: the served model (the one named at construction if given), engine, sizes."""
        if self._info is not None:
            return self._info
        body = self._request("GET", "/v1/models")
        _shape(isinstance(body, dict) and isinstance(body.get("data"), list) and body["data"],
               "/v1/models has no 'data' list of models")
        models = [m for m in body["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        _shape(bool(models), "/v1/models lists no model with an 'id'")
        if self._model is not None:
            chosen = next((m for m in models if m["id"] == self._model), None)
            if chosen is None:
                names = ", ".join(repr(m["id"]) for m in models[:5])
                raise EngineError(f"the server does not serve a model named {self._model!r}; it serves {names}")
        else:
            chosen = models[0]
        owner = str(chosen.get("owned_by", "")).lower()
        engine = "llama.cpp" if "llama" in owner else "vllm" if "vllm" in owner else "unknown"
        meta = chosen.get("meta") if isinstance(chosen.get("meta"), dict) else {}
        vocab = meta.get("n_vocab")
        ctx = meta.get("n_ctx_train", chosen.get("max_model_len"))
        self._info = ServerInfo(chosen["id"], engine, vocab if isinstance(vocab, int) else None,
                                ctx if isinstance(ctx, int) else None)
        return self._info

    def check_vocab(self, expected: int) -> None:
        """TokenizerMismatchError unless the server's vocabulary size (when it reports one) is `expected`."""
        got = self.info().vocab_size
        if got is not None and got != expected:
            raise TokenizerMismatchError(f"the server's model has {got} tokens but {expected} were expected: "
                                         f"it serves a different tokenizer ({self.info().model!r})")

    def tokenize(self, text: str) -> list[int]:
        """The server's own tokenizer, no special tokens added (llama.cpp and vLLM both serve /tokenize)."""
        if self.info().engine == "vllm":
            body = {"model": self.info().model, "prompt": text, "add_special_tokens": False}
        else:
            body = {"content": text, "add_special": False}
        out = self._request("POST", "/tokenize", body)
        toks = out.get("tokens") if isinstance(out, dict) else None
        _shape(isinstance(toks, list) and all(isinstance(t, int) for t in toks), "/tokenize gave no list of ids")
        return toks

    def detokenize(self, ids: Sequence[int]) -> str:
        body: dict[str, Any] = {"tokens": [int(i) for i in ids]}
        if self.info().engine == "vllm":
            body["model"] = self.info().model
        out = self._request("POST", "/detokenize", body)
        text = out.get("content", out.get("prompt")) if isinstance(out, dict) else None
        _shape(isinstance(text, str), "/detokenize gave no text")
        return text

    def next_token(self, ids: Sequence[int], top_n: int | None = None, *,
                   vocab_size: int | None = None, endpoint: str = "auto",
                   cache_prompt: bool = True) -> NextTokenReport:
        """The engine's raw next-token log-probabilities after `ids`: its top `top_n` (None: the whole
        vocabulary, which needs the vocabulary size from the server or `vocab_size`).

        endpoint: "completion" (llama.cpp's /completion with n_probs), "v1" (/v1/completions with
        logprobs), or "auto" (the first for llama.cpp servers, the second otherwise).
        cache_prompt (llama.cpp's /completion): reuse the slot's cached prefix and read only new tokens
        (fast; the numbers then differ from a cold read by ~1e-3); False reads the whole sequence.
        """
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("ids is empty: the engine needs at least one prompt token")
        info = self.info()
        if vocab_size is not None:
            self.check_vocab(vocab_size)
        vocab = vocab_size or info.vocab_size
        n = top_n if top_n is not None else vocab
        if n is None:
            raise ValueError("the server does not report its vocabulary size: pass vocab_size or top_n")
        if n < 1:
            raise ValueError(f"top_n must be at least 1, got {n}")
        if endpoint == "auto":
            endpoint = "completion" if info.engine == "llama.cpp" else "v1"
        # temperature 1 and no truncation: the engine's own sampler must not touch what it reports
        neutral = {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0}
        if endpoint == "completion":
            body = {"prompt": ids, "n_predict": 1, "n_probs": n, "top_k": 0, "cache_prompt": cache_prompt,
                    **neutral}
            entries = parse_llamacpp_completion(self._request("POST", "/completion", body))
        elif endpoint == "v1":
            body = {"model": info.model, "prompt": ids, "max_tokens": 1, "logprobs": n, "echo": False,
                    "return_tokens_as_token_ids": True, **neutral}
            entries = parse_v1_completion(self._request("POST", "/v1/completions", body))
        else:
            raise ValueError(f"endpoint must be 'auto', 'completion' or 'v1', got {endpoint!r}")
        if vocab is not None and len({i for i, _ in entries}) > vocab:
            raise TokenizerMismatchError(f"the engine reported {len(entries)} tokens, more than the expected "
                                         f"vocabulary of {vocab}: it serves a different tokenizer")
        return make_report(entries, vocab)
