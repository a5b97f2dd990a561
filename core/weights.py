"""Weight files -> shape-checked state dicts: GGUF (with a float32 cache), Hugging Face GPT-2, the book's model.pth."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import HEADS_BY_WIDTH, GPTConfig, LlamaConfig
from .models import DecoderModel, build_model


StatusCallback = Callable[[str, float], None]  # (what loading is doing now, fraction of it done: 0..1, never less)


def status_part(status: StatusCallback | None, start: float, stop: float) -> StatusCallback | None:
    """status for a part of the work: the part's own 0..1 mapped onto start..stop of the whole."""
    if status is None:
        return None
    return lambda what, done: status(what, start + (stop - start) * min(max(done, 0.0), 1.0))


class WeightsError(ValueError):
    """A checkpoint is missing, malformed, or does not fit the model; the message names the problem."""


# ---------------------------------------------------------------- shape-checked loading

def load_checked(cfg: GPTConfig | LlamaConfig, state: Mapping[str, Tensor], source: str = "checkpoint") -> DecoderModel:
    """Build a model for cfg and fill it from state, checking every key, shape and value first."""
    with torch.device("meta"):  # no random init: every tensor comes from state
        model = build_model(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}  # a tied head is tok_emb itself: no key
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsError(f"{source}: missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise WeightsError(f"{source}: unexpected tensor {unexpected[0]!r} for this configuration")
    clean: dict[str, Tensor] = {}
    for key, shape in expected.items():
        t = state[key]
        if not isinstance(t, Tensor):
            raise WeightsError(f"{source}: {key!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != tuple(shape):
            raise WeightsError(f"{source}: {key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if not t.is_floating_point():
            raise WeightsError(f"{source}: {key!r} has dtype {t.dtype}, expected a floating-point tensor")
        t = t.float().contiguous()  # transposed Conv1D views would run slower, different kernels
        # min/max propagate NaN and show inf; ~30x faster than isfinite(t).all() on a cold start
        if t.numel() and not all(torch.isfinite(v) for v in torch.aminmax(t)):
            raise WeightsError(f"{source}: {key!r} contains NaN or infinite values")
        clean[key] = t
    model.load_state_dict(clean, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def random_state(cfg: GPTConfig | LlamaConfig, seed: int = 0) -> dict[str, Tensor]:
    """Random weights (GPT-2-style init, std 0.02) for tests and benchmarks; deterministic per seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(cfg).state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        if len(shape) == 1:
            is_scale = key.endswith(("norm.weight", "norm1.weight", "norm2.weight"))
            state[key] = torch.ones(shape) if is_scale else torch.zeros(shape)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.02
    return state


# ---------------------------------------------------------------- GPT-2 from Hugging Face

def gpt2_state_from_hf(hf: Mapping[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Hugging Face GPT2LMHeadModel names -> ours. Conv1D weights are stored (in, out): transpose."""
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    out = {"tok_emb.weight": hf.get("wte.weight"), "pos_emb.weight": hf.get("wpe.weight"),
           "final_norm.weight": hf.get("ln_f.weight"), "final_norm.bias": hf.get("ln_f.bias")}
    for i in range(n_layers):
        p, q = f"h.{i}.", f"blocks.{i}."
        for src, dst, transpose in [("ln_1", "norm1", False), ("ln_2", "norm2", False),
                                    ("attn.c_attn", "att.qkv", True), ("attn.c_proj", "att.out_proj", True),
                                    ("mlp.c_fc", "ff.0", True), ("mlp.c_proj", "ff.2", True)]:
            w = hf.get(f"{p}{src}.weight")
            out[f"{q}{dst}.weight"] = w.t() if (transpose and w is not None and w.dim() == 2) else w
            out[f"{q}{dst}.bias"] = hf.get(f"{p}{src}.bias")
    return {k: v for k, v in out.items() if v is not None}


def gpt2_config_from_hf(config: Mapping[str, object]) -> GPTConfig:
    try:
        return GPTConfig(vocab_size=int(config["vocab_size"]), context_length=int(config["n_positions"]),
                         emb_dim=int(config["n_embd"]), n_heads=int(config["n_head"]),
                         n_layers=int(config["n_layer"]), norm_eps=float(config.get("layer_norm_epsilon", 1e-5)))
    except KeyError as e:
        raise WeightsError(f"config.json lacks the GPT-2 field {e.args[0]!r}") from e


def load_hf_gpt2_folder(folder: str | os.PathLike) -> tuple[GPTConfig, dict[str, Tensor]]:
    folder = Path(folder)
    cfg_path, st_path = folder / "config.json", folder / "model.safetensors"
    for p in (cfg_path, st_path):
        if not p.is_file():
            raise WeightsError(f"{folder} is not a Hugging Face GPT-2 folder: {p.name} is missing")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{cfg_path} is not valid JSON: {e}") from e
    cfg = gpt2_config_from_hf(config)
    return cfg, gpt2_state_from_hf(read_safetensors(st_path), cfg.n_layers)


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file: {e}") from e


# ---------------------------------------------------------------- the book's model.pth

_BOOK_BLOCK = re.compile(r"trf_blocks\.(\d+)\.")


def read_pth(path: str | os.PathLike) -> dict[str, Tensor]:
    """torch.load with weights_only=True: a pickle that carries code is refused, never run."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        detail = str(e).splitlines()[0] if str(e) else ""
        # Bare details such as "101" (a KeyError on a text file) mean nothing to a user: name the problem.
        reason = f"not a PyTorch checkpoint, or a damaged one ({type(e).__name__}{': ' + detail if detail else ''})"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds Python objects other than tensors (refused without running them)"
        raise WeightsError(f"{path} is not a loadable PyTorch state_dict: {reason}") from e
    if isinstance(obj, dict) and "model_state_dict" in obj and isinstance(obj["model_state_dict"], dict):
        obj = obj["model_state_dict"]  # the book also saves {"model_state_dict": ..., "optimizer_state_dict": ...}
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{path} does not hold a state_dict (a dict of named tensors)")
    return obj


def heads_for_width(width: int, source: str) -> int:
    """GPT-2's head count for an embedding width, from the book's table."""
    if width not in HEADS_BY_WIDTH:
        raise WeightsError(f"{source}: embedding width {width} is not in the book's table "
                           f"({sorted(HEADS_BY_WIDTH)}); pass n_heads")
    return HEADS_BY_WIDTH[width]


def gpt2_config_from_book(sd: Mapping[str, Tensor], n_heads: int | None = None) -> GPTConfig:
    """Infer the book's GPTModel configuration from tensor shapes; heads from the book's table."""
    for key in ("tok_emb.weight", "pos_emb.weight"):
        if key not in sd or not isinstance(sd[key], Tensor) or sd[key].dim() != 2:
            raise WeightsError(f"book checkpoint: missing or malformed {key!r}")
    vocab, width = sd["tok_emb.weight"].shape
    layers = {int(m.group(1)) for k in sd if (m := _BOOK_BLOCK.match(k))}
    if not layers:
        raise WeightsError("book checkpoint: no 'trf_blocks.N.' tensors found")
    if layers != set(range(max(layers) + 1)):
        raise WeightsError(f"book checkpoint: block numbers are not contiguous: {sorted(layers)}")
    if n_heads is None:
        n_heads = heads_for_width(int(width), "book checkpoint")
    return GPTConfig(vocab_size=vocab, context_length=sd["pos_emb.weight"].shape[0], emb_dim=width,
                     n_heads=n_heads, n_layers=len(layers), qkv_bias="trf_blocks.0.att.W_query.bias" in sd,
                     tied_head="out_head.weight" not in sd)


def gpt2_state_from_book(sd: Mapping[str, Tensor], cfg: GPTConfig) -> dict[str, Tensor]:
    """The book's names -> ours; its separate W_query/W_key/W_value are fused into one qkv."""
    rename = {"tok_emb.weight": "tok_emb.weight", "pos_emb.weight": "pos_emb.weight",
              "final_norm.scale": "final_norm.weight", "final_norm.shift": "final_norm.bias",
              "out_head.weight": "out_head.weight"}
    out = {dst: sd[src] for src, dst in rename.items() if src in sd}
    for i in range(cfg.n_layers):
        p, q = f"trf_blocks.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            qkv = [sd.get(f"{p}att.{w}.{part}") for w in ("W_query", "W_key", "W_value")]
            if all(isinstance(t, Tensor) for t in qkv):
                if len({t.shape for t in qkv}) != 1:
                    raise WeightsError(f"book checkpoint: {p}att.W_query/W_key/W_value.{part} differ in shape")
                out[f"{q}att.qkv.{part}"] = torch.cat(qkv, dim=0)
            elif any(t is not None for t in qkv):
                name = next(w for w, t in zip(("W_query", "W_key", "W_value"), qkv) if t is None)
                raise WeightsError(f"book checkpoint: missing tensor '{p}att.{name}.{part}'")
        for src, dst in [("att.out_proj", "att.out_proj"), ("ff.layers.0", "ff.0"), ("ff.layers.2", "ff.2")]:
            for part in ("weight", "bias"):
                if f"{p}{src}.{part}" in sd:
                    out[f"{q}{dst}.{part}"] = sd[f"{p}{src}.{part}"]
        for n in ("norm1", "norm2"):
            for src, dst in (("scale", "weight"), ("shift", "bias")):
                if f"{p}{n}.{src}" in sd:
                    out[f"{q}{n}.{dst}"] = sd[f"{p}{n}.{src}"]
    known = {k for k in sd if k in rename or k.endswith(".att.mask")} | {
        k for k in sd if _BOOK_BLOCK.match(k) and not k.endswith(".att.mask")}
    extra = sorted(set(sd) - known)
    if extra:
        raise WeightsError(f"book checkpoint: unexpected tensor {extra[0]!r}")
    return out


# ---------------------------------------------------------------- GGUF (SmolLM2)

def reverse_permute(w: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's q/k row reordering so that Hugging Face "rotate half" RoPE applies."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


_GGUF_NAMES = {"attn_norm": "attn_norm", "ffn_norm": "ffn_norm", "attn_q": "attn.q_proj",
               "attn_k": "attn.k_proj", "attn_v": "attn.v_proj", "attn_output": "attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def _field(reader, key: str, required: bool = True):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise WeightsError(f"GGUF metadata lacks {key!r}")
        return None
    return f.contents()


GGUF_PARSE = 0.6  # the share of read_gguf's time that parsing takes (3.5-4.4 s of 6-7 s measured), dequantizing the rest


def read_gguf(path: str | os.PathLike, status: StatusCallback | None = None
              ) -> tuple[LlamaConfig, dict[str, Tensor], dict]:
    """Parse a Llama GGUF: config from metadata, float32 state dict, tokenizer vocabulary.
    status(what, done) reports parsing, then each tensor dequantized."""
    import gguf  # imported here: parsing is only needed on a cold start

    status = status or (lambda what, done: None)
    status("Reading the GGUF file (its vocabulary, metadata and 4-bit tensors)", 0.0)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, struct errors, numpy errors on damaged files
        raise WeightsError(f"{path} is not a readable GGUF file (truncated or damaged?): {e}") from e
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise WeightsError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    a = "llama."
    n_heads = int(_field(reader, a + "attention.head_count"))
    n_kv = int(_field(reader, a + "attention.head_count_kv", required=False) or n_heads)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    cfg = LlamaConfig(vocab_size=len(tokens), context_length=int(_field(reader, a + "context_length")),
                      emb_dim=int(_field(reader, a + "embedding_length")), n_heads=n_heads, n_kv_heads=n_kv,
                      n_layers=int(_field(reader, a + "block_count")),
                      hidden_dim=int(_field(reader, a + "feed_forward_length")),
                      rope_base=float(_field(reader, a + "rope.freq_base", required=False) or 10000.0),
                      norm_eps=float(_field(reader, a + "attention.layer_norm_rms_epsilon")),
                      tied_head=not has_output)
    state: dict[str, Tensor] = {}
    n = len(reader.tensors)
    for i, t in enumerate(reader.tensors):
        status(f"Converting 4-bit weights to float32: tensor {i + 1} of {n}", GGUF_PARSE + (1 - GGUF_PARSE) * i / n)
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise WeightsError(f"{path}: tensor {t.name!r} cannot be dequantized: {e}") from e
        w = torch.from_numpy(np.require(arr, np.float32, ["C", "W"]))
        name = t.name
        if name == "token_embd.weight":
            state["tok_emb.weight"] = w
        elif name == "output_norm.weight":
            state["final_norm.weight"] = w
        elif name == "output.weight":
            state["out_head.weight"] = w
        elif (m := re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)) and m.group(2) in _GGUF_NAMES:
            part = m.group(2)
            if part == "attn_q":
                w = reverse_permute(w, n_heads)
            elif part == "attn_k":
                w = reverse_permute(w, n_kv)
            state[f"blocks.{m.group(1)}.{_GGUF_NAMES[part]}.weight"] = w
        else:
            raise WeightsError(f"{path}: unexpected GGUF tensor {name!r}")
    vocab = {"tokens": list(tokens), "token_types": [int(x) for x in _field(reader, "tokenizer.ggml.token_type")],
             "chat_template": _field(reader, "tokenizer.chat_template", required=False),
             "name": str(_field(reader, "general.name", required=False) or Path(path).stem)}
    return cfg, state, vocab


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    root = os.environ.get("SAMPLING_LAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sampling-lab")
    return Path(root)


def _atomic_write(path: Path, write) -> None:
    """Write via a temp file in the same folder + rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


CACHE_WRITE = 0.8  # a cold read_gguf_cached: reading the GGUF takes this share, writing the cache the rest


def read_gguf_cached(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                     status: StatusCallback | None = None) -> tuple[LlamaConfig, dict[str, Tensor], dict, bool]:
    """read_gguf through a float32 safetensors cache keyed by the file's SHA-256. Last item: cache hit.
    The cache is memory-mapped, not copied (pages are read when first used). status as in read_gguf."""
    status = status or (lambda what, done: None)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    status("Checking the model file", 0.0)
    key = file_sha256(path)[:32]
    st_path, meta_path = cache / f"{key}.safetensors", cache / f"{key}.json"
    if st_path.is_file() and meta_path.is_file():
        try:
            status("Reading the float32 weights cached on this machine", 0.0)
            meta = json.loads(meta_path.read_text())
            out = LlamaConfig(**meta["config"]), load_file(str(st_path)), meta["vocab"], True
            status("Read the cached weights", 1.0)
            return out
        except (SafetensorError, OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt below
    cfg, state, vocab = read_gguf(path, status_part(status, 0.0, CACHE_WRITE))
    status("Saving the float32 weights, so that later starts skip the conversion", CACHE_WRITE)
    try:
        # the tied head shares storage with the embedding; store it once
        _atomic_write(st_path, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp))
        meta = {"config": cfg.__dict__, "vocab": vocab, "source": str(path)}
        _atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta)))
    except OSError:
        pass  # a read-only cache folder only costs speed
    status("Saved the float32 weights", 1.0)
    return cfg, state, vocab, False
