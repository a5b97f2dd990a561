"""Streamlit layer: the cache bridge, the shared sidebar and small display helpers."""
