"""Prefix reuse: the KV states of token sequences read before, so a prompt that starts with one
reads only the tokens after it (vLLM's automatic prefix caching, llama.cpp's prompt cache).

Keyed by the tokens a state holds; a lookup takes the longest common prefix with any stored
sequence (a key's first n positions are valid for any sequence sharing its first n tokens).
Bounded by bytes (least recently used goes first) and safe to share between threads: a stored state
belongs to the store, and `start` hands it out (removing it) or copies it, never both.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from .models import KVCache

DEFAULT_MAX_BYTES = 256 << 20  # SmolLM2 holds ~46 KB per token: a 5,000-token prompt fits


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixStore:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, ...], KVCache] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._entries.values())

    def longest(self, ids: Sequence[int]) -> int:
        """How many leading tokens of ids some stored state holds (0: none)."""
        with self._lock:
            return max((common_prefix(key, ids) for key in self._entries), default=0)

    def start(self, ids: Sequence[int], need: int, new_state: Callable[[int], KVCache], spare: int = 0,
              exact_grain: int | None = None) -> KVCache:
        """A one-row state of at least `need` positions whose first `pos` positions hold ids[:pos],
        for the longest stored match, pos < len(ids) so that the caller reads at least one token;
        pos = 0 when nothing matches. A new state gets `spare` positions more, for later appends.
        With exact_grain, only positions a fresh read gives bit for bit are reused (a state's
        `exact` frontier), and pos is a multiple of exact_grain, where a fresh read's chunks end."""
        with self._lock:
            best, n = None, 0
            for key, found in self._entries.items():
                m = min(common_prefix(key, ids), len(ids) - 1)
                if exact_grain:
                    m = min(m, found.exact) // exact_grain * exact_grain
                if m > n:
                    best, n = key, m
            if best is None:
                return new_state(need + spare)
            self._entries.move_to_end(best)
            found = self._entries[best]
            exact = min(found.exact, n)
            if found.max_len >= need:
                del self._entries[best]  # handed over: the caller writes after position n
                found.pos, found.exact = n, exact
                return found
            state = new_state(need + spare)  # too short to extend: copy the shared part
            for dst, src in zip((*state.k, *state.v), (*found.k, *found.v)):
                dst[:, :, :n] = src[:, :, :n]
        state.pos, state.exact = n, exact
        return state

    def put(self, ids: Sequence[int], state: KVCache) -> None:
        """Keep state, which holds ids (len(ids) == state.pos, one row); the caller no longer writes to it.
        Stored sequences that ids extend are dropped: the new state holds their tokens too."""
        key = tuple(ids)
        if state.batch != 1 or len(key) != state.pos or not key or state.nbytes > self.max_bytes:
            return
        with self._lock:
            for old in [k for k in self._entries if len(k) <= len(key) and key[:len(k)] == k]:
                del self._entries[old]
            self._entries[key] = state
            total = sum(s.nbytes for s in self._entries.values())
            while total > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                total -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
