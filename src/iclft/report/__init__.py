"""Figures (matplotlib SVG, 300 dpi PNGs on demand) and one self-contained HTML page per run directory."""
