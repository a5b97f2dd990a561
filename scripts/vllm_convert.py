"""Convert a Llama GGUF file to a float32 Hugging Face folder that vLLM can serve (vLLM 0.32 loads no GGUF).

Run with the vLLM venv's python (it has transformers, gguf, accelerate):
    VENV/bin/python scripts/vllm_convert.py SRC.gguf OUT_DIR
"""
from __future__ import annotations

import os
import sys
import time


def convert(src: str, out: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(src))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    # transformers marks a GGUF-loaded model "quantized" (and refuses to save it) although its tensors are
    # already dequantized to float32: drop the mark
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out + ".tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)  # a half-written folder is never taken for a model


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    t = time.perf_counter()
    convert(sys.argv[1], sys.argv[2])
    print(f"converted {sys.argv[1]} -> {sys.argv[2]} in {time.perf_counter() - t:.1f} s")
