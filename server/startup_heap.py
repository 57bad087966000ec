"""Keep the heap built at startup out of the garbage collector's way.

Importing torch, transformers and vLLM and loading the models leaves hundreds of thousands
of long-lived objects in the oldest generation. Every full (generation-2) collection walks
all of them on the event loop's thread, which under streaming load stalled the loop for a
third of a second or more at a time, a stall every in-flight request paid in its latency.
Freezing them once the startup models are resident moves them to the permanent generation,
which collections skip; objects made later are collected as before (vLLM's own server does
the same after its startup).
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what startup left as garbage, then freeze what survives."""
    gc.collect()
    gc.freeze()
