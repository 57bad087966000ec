"""Novassium's 17 style presets as prompt templates: ``{prompt}`` is the caller's text.

Each preset adds the words that steer a Stable Diffusion checkpoint towards the style and a
negative prompt that keeps the styles apart (a photograph should not look drawn, line art
should not be shaded). The caller's own negative prompt is appended to the preset's.
"""

from __future__ import annotations

from typing import NamedTuple


class StylePreset(NamedTuple):
    prompt: str
    negative: str


_COMMON_NEGATIVE = "lowres, blurry, jpeg artifacts, watermark, signature, text, deformed"

STYLE_PRESETS: dict[str, StylePreset] = {
    "enhance": StylePreset(
        "breathtaking {prompt}, award-winning, professional, highly detailed",
        "ugly, distorted, low quality",
    ),
    "anime": StylePreset(
        "anime artwork of {prompt}, anime style, key visual, vibrant, studio anime, highly detailed",
        "photo, photorealistic, realism, 3d render",
    ),
    "photographic": StylePreset(
        "cinematic photo of {prompt}, 35mm photograph, film, bokeh, professional, 4k, highly detailed",
        "drawing, painting, crayon, sketch, graphite, impressionist, cartoon, anime",
    ),
    "digital-art": StylePreset(
        "concept art of {prompt}, digital artwork, illustrative, painterly, matte painting, highly detailed",
        "photo, photorealistic, realism",
    ),
    "comic-book": StylePreset(
        "comic of {prompt}, graphic illustration, comic art, graphic novel art, vibrant, highly detailed",
        "photograph, deformed, glitch, noisy, realistic, stock photo",
    ),
    "fantasy-art": StylePreset(
        "ethereal fantasy concept art of {prompt}, magnificent, celestial, ethereal, painterly, epic, majestic, "
        "magical, fantasy art, dreamy",
        "photographic, realistic, realism, 35mm film, dslr, cropped, frame, ugly, grainy",
    ),
    "line-art": StylePreset(
        "line art drawing of {prompt}, professional, sleek, modern, minimalist, graphic, line art, vector graphics",
        "anime, photorealistic, 35mm film, deformed, glitch, blurry, noisy, shading, colour fill",
    ),
    "analog-film": StylePreset(
        "analog film photo of {prompt}, faded film, desaturated, 35mm photo, grainy, vignette, vintage, "
        "Kodachrome, Lomography, stained, highly detailed, found footage",
        "painting, drawing, illustration, glitch, deformed, cartoon, anime, digital art",
    ),
    "neon-punk": StylePreset(
        "neonpunk style {prompt}, cyberpunk, vaporwave, neon, vibes, vibrant, stunningly beautiful, crisp, "
        "detailed, sleek, ultramodern, magenta highlights, dark purple shadows, high contrast, cinematic",
        "painting, drawing, illustration, glitch, deformed, photographic, washed out colours",
    ),
    "isometric": StylePreset(
        "isometric style {prompt}, vibrant, beautiful, crisp, detailed, ultra detailed, intricate",
        "deformed, mutated, ugly, disfigured, realism, photorealistic, perspective distortion",
    ),
    "low-poly": StylePreset(
        "low-poly style {prompt}, low-poly game art, polygon mesh, jagged, blocky, wireframe edges, "
        "centered composition",
        "noisy, sloppy, messy, grainy, ultra textured, photorealistic, smooth surfaces",
    ),
    "origami": StylePreset(
        "origami style {prompt}, paper art, pleated paper, folded, origami art, pleats, cut and fold, "
        "centered composition",
        "noisy, sloppy, messy, grainy, ultra textured, photorealistic, painting",
    ),
    "modeling-compound": StylePreset(
        "play-doh style {prompt}, sculpture, clay art, centered composition, claymation",
        "sloppy, messy, grainy, ultra textured, photorealistic, painting, drawing",
    ),
    "cinematic": StylePreset(
        "cinematic film still of {prompt}, shallow depth of field, vignette, highly detailed, high budget, "
        "bokeh, cinemascope, moody, epic, gorgeous, film grain, grainy",
        "anime, cartoon, graphic, painting, crayon, graphite, abstract, glitch, deformed",
    ),
    "3d-model": StylePreset(
        "professional 3d model of {prompt}, octane render, highly detailed, volumetric, dramatic lighting",
        "ugly, deformed, noisy, low poly, blurry, painting, drawing, sketch",
    ),
    "pixel-art": StylePreset(
        "pixel-art {prompt}, low-res, blocky, pixel art style, 8-bit graphics, limited palette",
        "sloppy, messy, blurry, noisy, highly detailed, ultra textured, photo, realistic, anti-aliasing",
    ),
    "tile-texture": StylePreset(
        "{prompt}, seamless tileable texture, repeating pattern, flat lighting, top-down view, "
        "uniform, highly detailed",
        "perspective, vignette, shadows, objects cut off at the edges, seams, horizon",
    ),
}


def styled_prompts(style: str, prompt: str, negative_prompt: str | None) -> tuple[str, str]:
    """The prompt and negative prompt to run for ``style`` (one of STYLE_PRESETS)."""
    preset = STYLE_PRESETS[style]
    negatives = [preset.negative, _COMMON_NEGATIVE]
    if negative_prompt and negative_prompt.strip():
        negatives.append(negative_prompt.strip())
    return preset.prompt.format(prompt=prompt.strip()), ", ".join(negatives)
