"""The ControlNet preprocessors that need no model, and the upscaler's tile layout."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from engines.image.control import PREPROCESSORS, control_image
from engines.image.upscale import tile_origins


def encoded(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def square() -> np.ndarray:
    """A white 24x24 square on black in a 64x64 RGB image."""
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[20:44, 20:44] = 255
    return pixels


def test_canny_marks_the_outline_of_a_square_and_nothing_else() -> None:
    edges = np.asarray(control_image(encoded(square()), (64, 64), "canny"))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255}
    on = edges[..., 0] == 255
    assert on[20:44, 18:23].any(axis=1).all()  # every row of the left side has an edge pixel near x=20
    assert on[18:23, 20:44].any(axis=0).all()  # and every column of the top side near y=20
    assert not on[:14].any() and not on[50:].any()  # flat regions away from the outline stay black
    assert not on[27:37, 27:37].any()  # and so does the square's inside
    # Thin lines: non-maximum suppression leaves at most two pixels across an edge.
    assert on[32, :32].sum() <= 2


def test_canny_finds_nothing_in_a_flat_image() -> None:
    flat = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert not np.asarray(control_image(encoded(flat), (32, 32), "canny")).any()


def test_the_cheap_preprocessors() -> None:
    gradient = np.tile(np.linspace(0, 255, 64), (64, 1))
    rgb = np.stack([gradient] * 3, axis=-1)
    none = np.asarray(control_image(encoded(rgb), (64, 64), "none"), dtype=np.int16)
    inverted = np.asarray(control_image(encoded(rgb), (64, 64), "invert"), dtype=np.int16)
    assert np.array_equal(none + inverted, np.full_like(none, 255))
    threshold = np.asarray(control_image(encoded(rgb), (64, 64), "threshold"))
    assert set(np.unique(threshold)) == {0, 255}
    assert (threshold[:, :30] == 0).all() and (threshold[:, 34:] == 255).all()
    resized = control_image(encoded(rgb), (96, 48), "none")
    assert resized.size == (96, 48) and resized.mode == "RGB"
    with pytest.raises(KeyError):
        control_image(encoded(rgb), (64, 64), "openpose")
    assert "openpose" not in PREPROCESSORS and "depth" not in PREPROCESSORS


@pytest.mark.parametrize(("length", "tile", "overlap"), [(200, 128, 16), (152, 32, 8), (36, 32, 8), (1000, 128, 40)])
def test_tiles_cover_the_side_overlap_and_stay_on_the_grid(length: int, tile: int, overlap: int) -> None:
    origins = tile_origins(length, tile, overlap, 4)
    assert origins[0] == 0 and origins[-1] + tile == length
    assert all(origin % 4 == 0 for origin in origins)
    assert all(0 < b - a <= tile - overlap for a, b in itertools.pairwise(origins))


def test_a_side_within_one_tile_is_one_tile() -> None:
    assert tile_origins(128, 128, 16, 4) == [0]
    assert tile_origins(40, 128, 16, 4) == [0]
