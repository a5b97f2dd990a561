import streamlit as st

st.title("next_token")
st.write("Coming soon.")
