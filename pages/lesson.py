import streamlit as st

st.title("lesson")
st.write("Coming soon.")
