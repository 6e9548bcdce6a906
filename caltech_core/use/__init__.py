"""Using trained runs: classification, Grad-CAM, export."""
