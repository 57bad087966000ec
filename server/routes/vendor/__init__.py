"""Routes of the vendor APIs: Novassium and the Stable Diffusion API."""
