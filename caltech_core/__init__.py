"""Caltech-101 CNN Studio: data, models, training and the run store (no Streamlit here)."""

__version__ = "0.1.0"
