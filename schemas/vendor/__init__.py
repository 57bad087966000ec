"""Wire formats of the vendor APIs served as thin adapters (Novassium, the Stable Diffusion API)."""
