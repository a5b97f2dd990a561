"""A tokenizer served by the engine itself, for models no local tokenizer is known for.

Encoding is the server's `/tokenize`; each token's bytes come from one whole-vocabulary report of
llama.cpp's `/completion` (which lists every token with its bytes), so decoding and the pages' token
texts need no further requests. The same methods as `core.tokenizer.Tokenizer`; no chat template.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..tokenizer import TokenizerError
from .client import EngineClient, EngineShapeError


class ServerTokenizer:
    chat_template = None
    fallback_id = None

    def __init__(self, client: EngineClient, vocab_size: int, name: str) -> None:
        self.client, self.vocab_size, self.name = client, vocab_size, name
        body = {"prompt": [0], "n_predict": 1, "n_probs": vocab_size, "top_k": 0, "temperature": 1.0}
        out = client._request("POST", "/completion", body)
        try:
            entries = out["completion_probabilities"][0]["top_logprobs"]
            table: dict[int, bytes] = {int(e["id"]): bytes(e["bytes"]) for e in entries}
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise EngineShapeError("the engine did not list its vocabulary's token bytes (llama.cpp's "
                                   "/completion does); no local tokenizer is known for this model") from e
        if len(table) != vocab_size:
            raise EngineShapeError(f"the engine listed {len(table)} of its {vocab_size} tokens")
        self._bytes = [table[i] for i in range(vocab_size)]
        props = client._request("GET", "/props")
        eos = props.get("eos_token") if isinstance(props, dict) else None
        self.eos_ids = frozenset(i for i, b in enumerate(self._bytes) if eos and b == eos.encode())
        self.special_ids = self.eos_ids

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.client.tokenize(text)

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary 0..{self.vocab_size - 1}")
        return self._bytes[token_id]

    def token_text(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def encode_chat(self, user_text: str, system: str | None = None) -> list[int]:
        raise TokenizerError(f"{self.name} has no chat template here; use a raw-text prompt")
