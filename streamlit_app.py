"""Caltech-101 CNN Studio: `streamlit run streamlit_app.py`.

The entry point only sets up navigation; every screen is a page in pages/ and all work happens in
caltech_core (training runs in the job manager's thread, never in a page's script run).
"""

from pathlib import Path

import streamlit as st

import pages._shared  # first import switches a fresh server to st.navigation; see there)
from pages._auth import require_password

st.set_page_config(page_title="Caltech-101 CNN Studio", page_icon=":material/photo_library:", layout="wide")

PAGES = Path(__file__).parent / "pages"
pages = [
    st.Page("pages/data.py", title="Data", icon=":material/dataset:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/monitor.py", title="Monitor", icon=":material/monitoring:"),
    st.Page("pages/errors.py", title="Errors", icon=":material/error_med:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/classify.py", title="Classify", icon=":material/image_search:"),
]
# The report page is added by its own module; show it as soon as it exists.
if (PAGES / "report.py").is_file():
    pages.append(st.Page("pages/report.py", title="Report", icon=":material/summarize:"))

page = st.navigation(pages)  # registered first, so Streamlit never runs a page script on its own
require_password()  # every page: nothing runs until the password (if one is set) is given
page.run()
