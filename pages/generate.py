import streamlit as st

st.title("generate")
st.write("Coming soon.")
