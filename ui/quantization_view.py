"""Quantized vs full precision: one prompt's next-token distribution from the bundled 4-bit (Q4_1) file
run by llama.cpp, beside our float32 model of the same weights dequantized. Pure functions, no Streamlit."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import torch
from torch import Tensor

import core
from ui.format import fmt_prob, plotly_text, show_token

FULL, QUANT = "smollm2", "llamacpp:smollm2"
FULL_LABEL, QUANT_LABEL = "float32, in this process", "4-bit Q4_1, llama.cpp"


def total_variation(p: Tensor, q: Tensor) -> float:
    """Half the L1 distance: the most probability any set of tokens gains or loses between p and q."""
    return 0.5 * float((p.double() - q.double()).abs().sum())


def comparison_table(full: Tensor, quant: Tensor, tokenizer: core.Tokenizer, n: int = 10) -> pd.DataFrame:
    """The top n tokens of either distribution (full precision's order first), with both probabilities."""
    ids = list(dict.fromkeys([*torch.topk(full, n).indices.tolist(), *torch.topk(quant, n).indices.tolist()]))
    ids.sort(key=lambda i: -float(full[i]))
    return pd.DataFrame({
        "token": [show_token(tokenizer.token_text(i)) for i in ids],
        "id": ids,
        FULL_LABEL: [float(full[i]) for i in ids],
        QUANT_LABEL: [float(quant[i]) for i in ids],
        "difference": [float(quant[i]) - float(full[i]) for i in ids],
        "rank (F32 → Q4_1)": [f"{_rank(full, i)} → {_rank(quant, i)}" for i in ids],
    })


def _rank(p: Tensor, i: int) -> int:
    return 1 + int((p > p[i]).sum())


def summary_text(full: Tensor, quant: Tensor) -> str:
    """Trusted Markdown (numbers only)."""
    tv = total_variation(full, quant)
    same_top = int(full.argmax()) == int(quant.argmax())
    return (f"Total variation between the two distributions: **{tv:.3f}** — {fmt_prob(tv)} of the probability "
            f"sits on different tokens. The most likely token is {'the same' if same_top else 'different'}.")


def comparison_figure(table: pd.DataFrame) -> go.Figure:
    labels = [plotly_text(t) for t in table["token"]]
    bars = [go.Bar(name=name, y=labels, x=table[name], orientation="h", marker=dict(color=color),
                   text=[fmt_prob(v) for v in table[name]], textposition="outside", cliponaxis=False)
            for name, color in ((FULL_LABEL, "#1f5fbf"), (QUANT_LABEL, "#e07b00"))]
    top = float(max(table[FULL_LABEL].max(), table[QUANT_LABEL].max()))
    return go.Figure(data=bars, layout=dict(
        barmode="group", height=110 + 40 * len(labels), margin=dict(l=10, r=30, t=40, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),
        yaxis=dict(type="category", autorange="reversed", automargin=True, tickfont=dict(size=14)),
        xaxis=dict(title="probability", tickformat=".0%", range=[0, min(1.0, top) * 1.3])))
