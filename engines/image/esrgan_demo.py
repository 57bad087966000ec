"""`demo-esrgan`: a tiny random RRDBNet (ESRGAN) upscaler for the demo catalog and tests.

Real-ESRGAN's x4 layout (new-style keys, x4 by two nearest-neighbour stages) at a fraction of its
size: 8 features instead of 64, one RRDB block instead of 23 (the anime model has 6), growth 4
instead of 32. Seeded, so every build holds the same weights and pixel comparisons mean something.
"""

from __future__ import annotations

from pathlib import Path

ESRGAN_DEMO_MODEL = "demo-esrgan"
ESRGAN_DEMO_FILE = f"{ESRGAN_DEMO_MODEL}.safetensors"


def build_esrgan_demo(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from engines.image.esrgan import RrdbConfig, build_rrdbnet

    torch.manual_seed(0)
    net = build_rrdbnet(RrdbConfig(num_feat=8, num_block=1, num_grow_ch=4))
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    save_file(state, str(Path(out) / ESRGAN_DEMO_FILE))
