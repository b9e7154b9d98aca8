"""BEiT's tokenizer: trained here (vqvae.py) or DALL-E's (official_dalle.py), read frozen by students (frozen.py)."""
