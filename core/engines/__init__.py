"""Inference engines outside this process: an OpenAI-compatible client (vLLM, llama.cpp's server) and
a llama.cpp server this process can start for a GGUF file."""
from .client import (EngineClient, EngineError, EngineHTTPError, EngineJSONError, EngineLogprobsLimitError,
                     EngineResponseError, EngineShapeError, EngineTimeoutError, EngineTruncatedError,
                     EngineUnreachableError, EngineURLError, NextTokenReport, ServerInfo, TokenizerMismatchError)

__all__ = ["EngineClient", "EngineError", "EngineHTTPError", "EngineJSONError", "EngineLogprobsLimitError",
           "EngineResponseError", "EngineShapeError", "EngineTimeoutError", "EngineTruncatedError",
           "EngineURLError", "EngineUnreachableError", "NextTokenReport", "ServerInfo", "TokenizerMismatchError"]
