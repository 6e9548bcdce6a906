"""The dashboard: page scripts listed by streamlit_app.py, and the helpers they share (_shared.py)."""
