"""Sampling Lab's engine: tokenizers, models, weight loading, sampling and streaming generation.

Pure Python + PyTorch (no streamlit), usable from a notebook:

    import core
    lm = core.load_model()                       # bundled SmolLM2-135M-Instruct, offline
    logits = lm.next_token_logits(lm.tokenizer.encode("Every effort moves you"))
    probs = core.probabilities(logits, core.SamplingConfig(temperature=0.7, top_p=0.95))

`lm.model` is the plain PyTorch model (core/models.py); `lm.engine` runs it (core/backends: "torch"
on any device and dtype, or "fast", float32 on the CPU); `lm.prefixes` keeps recent prompts' KV
states so a prompt that extends one reads only its new tokens; `lm.scheduler` runs concurrent
generations' decode steps as one batch (core/scheduler.py).
"""
from . import backends
from .config import GPT_PRESETS, LLAMA_PRESETS, GPTConfig, LlamaConfig
from .generation import Candidate, Step, generate, generate_many
from .backends import Backend, BackendUnavailable
from .loading import (DEFAULT_MODEL, EmptyPromptError, LanguageModel, ModelUnavailableError, load_checkpoint,
                      load_model)
from .samplers import dry_breaker_ids
from .scheduler import Busy, SchedulerConfig, StepScheduler
from .sampling import (ORDERS, PRESETS, RULES, STAGE_NAMES, SamplingConfig, Stage, TemperatureSweep, apply_min_p,
                       apply_temperature, apply_top_k, apply_top_p, entropy, filter_logits, make_generator,
                       moot_warnings, pipeline, probabilities, sample, temperature_sweep)
from .tokenizer import Tokenizer, TokenizerError
from .weights import WeightsError

__all__ = [
    "backends", "Backend", "BackendUnavailable", "GPT_PRESETS", "LLAMA_PRESETS", "GPTConfig", "LlamaConfig", "Candidate", "Step", "generate", "generate_many",
    "DEFAULT_MODEL", "EmptyPromptError", "LanguageModel", "ModelUnavailableError", "load_checkpoint", "load_model",
    "PRESETS", "SamplingConfig", "Stage", "apply_min_p", "apply_temperature", "apply_top_k", "apply_top_p",
    "entropy", "filter_logits", "make_generator", "moot_warnings", "pipeline", "probabilities", "sample",
    "ORDERS", "RULES", "STAGE_NAMES", "TemperatureSweep", "dry_breaker_ids", "temperature_sweep",
    "Tokenizer", "TokenizerError", "WeightsError", "Busy", "SchedulerConfig", "StepScheduler",
]
