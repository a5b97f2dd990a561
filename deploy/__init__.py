"""Deployment helpers: Streamlit replicas behind nginx (room.py, nginx.conf)."""
