"""Weighted prompt embeddings in time and memory linear in the prompt's length.

compel's `EmbeddingsProvider.get_embeddings_for_weighted_prompt_fragments` gives A1111 weighting
and prompts longer than CLIP's 77-token window, but its cost grows with the square of the prompt:
choosing each chunk's split point converts every remaining token id back to text, and each
down-weighted fragment ((x:0.5), [x]) re-encodes and keeps the whole prompt once more. This module
computes the same embeddings (compel's defaults: sentence-aware splits, down-weighting by masking,
the first chunk's CLS token copied to the others) from one tokenization:

- the tokens are split into chunks in one pass, each split point chosen within its own window;
- every chunk is encoded once, and a down-weighted fragment re-encodes only the chunks it spans
  (the text encoder sees each chunk alone, so the others are unchanged);
- the blend of compel's embeddings is computed chunk by chunk.

So the text encoder runs at most (chunks + down-weighted fragments + chunks) times, and a prompt
longer than ``max_chunks`` windows is refused before any of it runs.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from engines.errors import InvalidJob

# Where compel prefers to split a long prompt: after a sentence, else after a phrase, else
# after a word, else at the window's end.
_SENTENCE_ENDS = (".</w>",)
_PHRASE_ENDS = (".</w>", ",</w>", ";</w>", ":</w>")
_WORD_END = "</w>"
# compel's floor for a weight near 0 (its blend weight tan((1 - w) * pi / 2) grows without bound).
_EPSILON = 1e-5
# Chunks passed through the text encoder together.
_ENCODE_BATCH = 16


def split_points(tokens_text: list[str], window: int) -> list[tuple[int, int]]:
    """The [start, end) token ranges of the chunks, as compel splits them; at least one chunk."""
    chunks: list[tuple[int, int]] = []
    start, count = 0, len(tokens_text)
    while True:
        end = count if count - start <= window else start + _split_in(tokens_text, start, window)
        chunks.append((start, end))
        start = end
        if start >= count:
            return chunks


def _split_in(tokens_text: list[str], start: int, window: int) -> int:
    """How many tokens from ``start`` the next chunk takes (the window holds more than that)."""
    stop = start + window
    for ends in (_SENTENCE_ENDS, _PHRASE_ENDS):
        for index in range(stop - 1, start - 1, -1):
            if tokens_text[index] in ends:
                return index - start + 1
    for index in range(stop - 1, start - 1, -1):
        if tokens_text[index].endswith(_WORD_END):
            return index - start + 1
    return window


def encode_weighted(provider: Any, runs: list[tuple[str, float]], *, device: Any, max_chunks: int, field: str) -> Any:
    """The embeddings of ``runs`` ((text, weight) fragments) through compel's ``provider``: a
    tensor (1, chunks x 77, dim), as ``get_embeddings_for_weighted_prompt_fragments`` returns it.
    A prompt over ``max_chunks`` windows is refused (InvalidJob naming ``field``)."""
    import torch

    with torch.no_grad():
        return _encode_weighted(provider, runs, device=device, max_chunks=max_chunks, field=field)


def _encode_weighted(provider: Any, runs: list[tuple[str, float]], *, device: Any, max_chunks: int, field: str) -> Any:
    import torch

    texts = [text for text, _ in runs] or [""]
    weights = [weight for _, weight in runs] or [1.0]
    tokenizer = provider.tokenizer
    per_fragment = provider.get_token_ids(texts, include_start_and_end_markers=False)
    ids: list[int] = []
    token_weights: list[float] = []
    fragment_spans: list[tuple[int, int, float]] = []  # [start, end) in ids, weight < 1 only
    for fragment_ids, weight in zip(per_fragment, weights, strict=True):
        if weight < 1 and fragment_ids:
            fragment_spans.append((len(ids), len(ids) + len(fragment_ids), weight))
        ids += fragment_ids
        token_weights += [float(weight)] * len(fragment_ids)

    bos, eos = provider.bos_sequence, provider.eos_sequence
    size = provider.max_token_count
    window = size - len(bos) - len(eos)
    if math.ceil(len(ids) / window) > max_chunks:
        raise InvalidJob(
            f"{field} is {len(ids)} tokens; this model takes at most {max_chunks * window} "
            f"({max_chunks} windows of {window}).",
            field,
        )
    chunks = split_points(tokenizer.convert_ids_to_tokens(ids), window)

    # Each chunk as the text encoder sees it: [bos, tokens, eos, pad...], its weights and mask.
    chunk_ids, chunk_weights, chunk_masks, offsets = [], [], [], []
    for start, end in chunks:
        pad = size - len(bos) - (end - start) - len(eos)
        chunk_ids.append(bos + ids[start:end] + eos + [tokenizer.pad_token_id] * pad)
        chunk_weights.append([1.0] * len(bos) + token_weights[start:end] + [1.0] * (len(eos) + pad))
        chunk_masks.append([1] * (size - pad) + [provider.padding_attention_mask_value] * pad)
        offsets.append(start - len(bos))  # chunk position = token index - offset
    id_tensor = torch.tensor(chunk_ids, dtype=torch.long, device=device)
    weight_tensor = torch.tensor(chunk_weights, dtype=provider.get_dtype_for_device(device), device=device)
    mask_tensor = torch.tensor(chunk_masks, dtype=torch.long, device=device)

    def encode(rows: list[int], masks: Any) -> Any:
        """Weighted embeddings of the chunks ``rows`` under ``masks``, as compel weights them."""
        parts = []
        for first in range(0, len(rows), _ENCODE_BATCH):
            batch = rows[first : first + _ENCODE_BATCH]
            z = provider._encode_token_ids_to_embeddings(id_tensor[batch], masks[first : first + _ENCODE_BATCH])
            w = weight_tensor[batch].unsqueeze(-1).expand(z.shape).to(z.device)
            identity = w == 1
            if not bool(torch.all(identity)):
                empty = provider.empty_z.to(z.device)
                z = torch.where(identity, z, empty + (z - empty) * w)
            parts.append(z)
        return torch.cat(parts)

    base = encode(list(range(len(chunks))), mask_tensor)  # (chunks, 77, dim)
    if fragment_spans:
        # compel blends the prompt with, for each down-weighted fragment, the prompt with that
        # fragment masked out, weighted 1 and tan((1 - w) * pi / 2), normalized. Where a fragment
        # is not, its masked prompt equals the prompt: only the chunks it spans differ.
        lerp = [math.tan((1.0 - max(_EPSILON, weight)) * math.pi / 2) for _, _, weight in fragment_spans]
        total = 1.0 + sum(lerp)
        blended = base.clone()
        starts = [chunk_start for chunk_start, _ in chunks]
        touched: dict[int, list[int]] = {}
        for index, (start, end, _) in enumerate(fragment_spans):
            for chunk in _chunks_spanned(chunks, starts, start, end):
                touched.setdefault(chunk, []).append(index)
        for chunk, fragments in touched.items():
            rows, masks = [], []
            for index in fragments:
                start, end, _ = fragment_spans[index]
                mask = mask_tensor[chunk].clone()
                # compel masks from the fragment's first token to its last, then unmasks each
                # chunk's first and last position.
                first = max(start - offsets[chunk], 0)
                last = min(end - 1 - offsets[chunk], size - 1)
                mask[first : last + 1] = 0
                mask[0] = mask[size - 1] = 1
                rows.append(chunk)
                masks.append(mask)
            without = encode(rows, torch.stack(masks))
            kept = 1.0 + sum(lerp) - sum(lerp[index] for index in fragments)
            value = base[chunk] * (kept / total)
            for row, index in enumerate(fragments):
                value = value + without[row] * (lerp[index] / total)
            blended[chunk] = value
        base = blended
    embeddings = base.reshape(1, -1, base.shape[-1])
    if len(chunks) > 1 and provider.eos_sequence:
        # compel's default: every chunk's CLS (its first eos) takes the first chunk's.
        positions = [
            chunk * size + int(torch.where(id_tensor[chunk] == tokenizer.eos_token_id)[0][0])
            for chunk in range(len(chunks))
        ]
        embeddings[0, positions[1:]] = embeddings[0, positions[0]].clone()
    return embeddings.to(provider.text_encoder.device, dtype=provider.text_encoder.dtype)


def _chunks_spanned(chunks: list[tuple[int, int]], starts: list[int], start: int, end: int) -> list[int]:
    """The chunks holding any of the tokens [start, end); ``starts``: each chunk's first token."""
    first = bisect.bisect_right(starts, start) - 1
    spanned = []
    for index in range(max(first, 0), len(chunks)):
        chunk_start, chunk_end = chunks[index]
        if chunk_start >= end:
            break
        if chunk_end > start:
            spanned.append(index)
    return spanned
