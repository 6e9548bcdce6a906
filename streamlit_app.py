"""Caltech-101 CNN Studio: `streamlit run streamlit_app.py`.

The entry point only sets up navigation; every screen is a page script in dashboard/ and all work happens
in caltech_core (training runs in the job manager's thread, never in a page's script run). The scripts are not
in a pages/ folder on purpose: beside the entry point, that folder puts a fresh server in Streamlit's old
auto-discovered "pages folder" mode (see docs/architecture.md, "Dashboard navigation").
"""

import importlib
from pathlib import Path

import streamlit as st

from dashboard._auth import require_password

st.set_page_config(page_title="Caltech-101 CNN Studio", page_icon=":material/photo_library:", layout="wide")

PAGES = Path(__file__).parent / "dashboard"
HEAVY_LIBRARIES = ("torch", "torchvision", "sklearn.model_selection", "sklearn.metrics")
pages = [
    st.Page("dashboard/data.py", title="Data", icon=":material/dataset:", default=True),
    st.Page("dashboard/train.py", title="Train", icon=":material/model_training:"),
    st.Page("dashboard/monitor.py", title="Monitor", icon=":material/monitoring:"),
    st.Page("dashboard/errors.py", title="Errors", icon=":material/error_med:"),
    st.Page("dashboard/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("dashboard/sweeps.py", title="Sweeps", icon=":material/tune:"),
    st.Page("dashboard/classify.py", title="Classify", icon=":material/image_search:"),
]
# The report page is added by its own module; show it as soon as it exists.
if (PAGES / "report.py").is_file():
    pages.append(st.Page("dashboard/report.py", title="Report", icon=":material/summarize:"))

page = st.navigation(pages)  # registered first, so Streamlit never runs a page script on its own
require_password()  # every page: nothing runs until the password (if one is set) is given
# The pages' heavy libraries, imported here first. Sessions run their scripts in threads, and two first imports
# of a package at once can break it: one session's page imported a submodule (torch.hub) while another's was
# still initialising the package, and got the half-made module (tests/test_browser_navigation.py saw
# "cannot import name 'tqdm' from partially initialized module 'torch.hub'"). Every session runs this line
# before its page, and an import of a name already in progress waits for it.
for library in HEAVY_LIBRARIES:
    importlib.import_module(library)
page.run()
