"""Cluster configurations (YAML) and their schema (`cluster.py`) for `python -m adrenaline_sgl.launch`."""
