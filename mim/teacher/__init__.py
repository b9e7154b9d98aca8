"""Img2Vec's teachers: DINO pretraining (dino.py), official DINO weights (official_dino.py), and the frozen
teacher students read (frozen.py)."""
