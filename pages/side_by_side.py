import streamlit as st

st.title("side_by_side")
st.write("Coming soon.")
