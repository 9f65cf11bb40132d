"""Figures (matplotlib, PNG) and one self-contained HTML page per run directory."""
