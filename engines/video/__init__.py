"""Video engines: diffusers text-to-video (AnimateDiff) and image-to-video (Stable Video Diffusion)."""
