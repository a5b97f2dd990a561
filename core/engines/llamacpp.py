"""llama.cpp's own server (the `xllamacpp` wheel) run inside this process, and GGUF file preparation.

- `f32_gguf(path)`: a float32 copy of a GGUF file (every tensor dequantized, file type ALL_F32), cached
  beside the float32 safetensors of `core.weights` and keyed by the source file's SHA-256. llama.cpp
  running it gives the same next-token distribution as our in-process model; the quantized original
  shows what quantization changes.
- `serve(path)`: one llama.cpp server per GGUF file per process, on a free loopback port, started on
  first use, shared by every thread, stopped at exit (or by `stop`). Returns a `LlamaCppServer` whose
  `url` an `EngineClient` talks to.
"""
from __future__ import annotations

import atexit
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..weights import WeightsError, _atomic_write, default_cache_dir, file_sha256


# ---------------------------------------------------------------- float32 GGUF

def _write_f32_gguf(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy every metadata field of src and each tensor dequantized to float32 into dst."""
    import gguf  # imported here: only a cold start writes the file
    import numpy as np

    try:
        reader = gguf.GGUFReader(str(src))
    except Exception as e:  # the reader raises ValueError, struct errors, numpy errors on damaged files
        raise WeightsError(f"{src} is not a readable GGUF file (truncated or damaged?): {e}") from e
    arch = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    if arch is None:
        raise WeightsError(f"{src}: GGUF metadata lacks {gguf.Keys.General.ARCHITECTURE!r}")
    writer = gguf.GGUFWriter(str(dst), arch=str(arch.contents()))
    for f in reader.fields.values():
        # the writer adds the architecture and GGUF.* fields itself; the file type changes to ALL_F32
        if f.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE) or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise WeightsError(f"{src}: tensor {t.name!r} cannot be dequantized: {e}") from e
        writer.add_tensor(t.name, np.ascontiguousarray(arr, dtype=np.float32),
                          raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_f32_lock = threading.Lock()


def f32_gguf(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The float32 copy of a GGUF file, written once into the cache folder (keyed by SHA-256)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache / f"{file_sha256(path)[:32]}.f32.gguf"
    with _f32_lock:  # two sessions asking at once write it once
        if not out.is_file():
            _atomic_write(out, lambda tmp: _write_f32_gguf(path, tmp))
    return out


# ---------------------------------------------------------------- the server

class LlamaCppServerError(RuntimeError):
    """llama.cpp's server could not be started for a file; the message says why."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(eq=False)
class LlamaCppServer:
    """A running llama.cpp server on 127.0.0.1 for one GGUF file."""

    path: Path
    port: int
    slots: int
    ctx_per_slot: int = 4096  # the context each request may use (llama.cpp splits n_ctx between slots)
    _server: object | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Stop serving: xllamacpp's Server shuts down its HTTP and worker threads when released."""
        server, self._server = self._server, None
        del server


def start_server(path: str | os.PathLike, *, slots: int = 2, ctx_per_slot: int = 4096,
                 threads: int | None = None, port: int | None = None) -> LlamaCppServer:
    """Start a llama.cpp server for path (not shared: callers normally want `serve`)."""
    try:
        import xllamacpp as xlc
    except ImportError as e:
        raise LlamaCppServerError("llama.cpp's server needs the xllamacpp package: pip install -r requirements.txt") from e
    path = Path(path).resolve()
    if not path.is_file():
        raise LlamaCppServerError(f"{path} does not exist")
    # Half the cores by default: this process's own threads share the CPU, and ggml's spinning workers
    # collapse when a core is taken (2 threads on 2 busy cores: 1-6 tok/s; 1 thread: 21-36, bench notes).
    threads = threads or max(1, min((os.cpu_count() or 2) // 2, 8))
    p = xlc.CommonParams()
    p.model.path = str(path)
    p.hostnames = ["127.0.0.1"]
    p.n_parallel = slots                 # concurrent requests, each with its own KV cache slot
    p.n_ctx = ctx_per_slot * slots       # llama.cpp splits n_ctx between the slots
    p.cpuparams.n_threads = threads
    p.cpuparams_batch.n_threads = threads
    p.verbosity = -1                     # errors only: the app's log is not llama.cpp's
    last: Exception | None = None
    for _ in range(3):  # a free port may be taken between our probe and the server's bind
        p.port = port or free_loopback_port()
        try:
            return LlamaCppServer(path, p.port, slots, ctx_per_slot, xlc.Server(p))
        except Exception as e:  # xllamacpp raises RuntimeError/ValueError with llama.cpp's reason
            last = e
            if port:
                break
    raise LlamaCppServerError(f"llama.cpp's server did not start for {path.name}: {last}") from last


_servers: dict[Path, LlamaCppServer] = {}
_servers_lock = threading.Lock()


def serve(path: str | os.PathLike, **kwargs) -> LlamaCppServer:
    """The process's one llama.cpp server for path, started on first use (thread-safe); kwargs
    (see `start_server`) apply to that first start only."""
    key = Path(path).resolve()
    with _servers_lock:
        srv = _servers.get(key)
        if srv is None or not srv.running:
            srv = _servers[key] = start_server(key, **kwargs)
        return srv


def stop(path: str | os.PathLike | None = None) -> None:
    """Stop the server for path, or every server this process started."""
    with _servers_lock:
        keys = list(_servers) if path is None else [Path(path).resolve()]
        for k in keys:
            srv = _servers.pop(k, None)
            if srv is not None:
                srv.stop()


atexit.register(stop)
