"""Static-shape target assigners."""
