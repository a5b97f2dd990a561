"""Quantized vs full precision: what 4-bit weights do to the next-token distribution."""
import streamlit as st
import torch

from ui import bridge
from ui import quantization_view as view
from ui.controls import LOAD_ERRORS, settings
from ui.format import plain_text_for_markdown, with_prob_text
from ui.model_view import load_error_message

st.title("Quantized vs full precision")
st.caption("The bundled SmolLM2 file stores its weights in 4 bits (Q4_1). Here llama.cpp runs that file as it "
           "is, and this app runs the same weights converted to float32: the same prompt, two next-token "
           "distributions. Sampling settings do not apply: these are the raw distributions (T = 1).")

s = settings()
if not s.prompt.strip():
    st.info("Type a prompt in the sidebar.")
    st.stop()
models = {}
for source, label in ((view.FULL, view.FULL_LABEL), (view.QUANT, view.QUANT_LABEL)):
    try:
        with st.spinner(f"Loading {label}…"):
            models[source] = bridge.get_model(source)
    except LOAD_ERRORS as e:
        st.error(plain_text_for_markdown(load_error_message(e, source, label, label)), icon="⚠️")
        st.stop()
full_lm = models[view.FULL]
mode = s.mode if full_lm.has_chat else "raw"
ids = bridge.encode_prompt(view.FULL, s.prompt, mode)[-full_lm.context_length:]
try:
    full = torch.from_numpy(bridge.prompt_logits(view.FULL, ids).copy()).softmax(-1)
    quant = torch.from_numpy(bridge.next_token_logits(view.QUANT, ids).copy()).softmax(-1)
except LOAD_ERRORS as e:
    st.error(plain_text_for_markdown(f"The llama.cpp engine failed: {e}"), icon="⚠️")
    st.stop()

st.markdown(view.summary_text(full, quant))
n = st.slider("Tokens to show", 5, 30, 10, key="q_top_n")
table = view.comparison_table(full, quant, full_lm.tokenizer, n)
st.plotly_chart(view.comparison_figure(table), width="stretch", key="q_chart")
st.dataframe(with_prob_text(table, [view.FULL_LABEL, view.QUANT_LABEL]), hide_index=True, width="stretch",
             column_config={"difference": st.column_config.NumberColumn(format="%+.4f")})
st.caption("Both columns list the whole vocabulary's probabilities as each engine computed them; nothing is "
           "renormalised. The float32 column matches llama.cpp running a float32 copy of the file to a "
           "total variation below 0.001, so the gap here is the 4-bit rounding, not the engine.")
