"""Datasets: where they live (manifest.py), the embedded generator (synth.py), image folders and
loaders (images.py) and the shared transforms (transforms.py)."""
