"""The frozen Anima from its published files: DiT file format, loading, text encoding, VAE, CLIP, tiny twins."""
