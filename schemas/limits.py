"""The fixed numeric limits of the APIs, in one place.

The schemas declare them on their fields (``msgspec.Meta``), so decoding refuses a value out
of range and the OpenAPI document shows the range; server code that still needs a number
(sizes derived from an input image, the checks that depend on settings) imports it from here.
"""

from __future__ import annotations

# Images, /v3 and OpenAI: each side a multiple of SIDE_MULTIPLE in [MIN_IMAGE_SIDE, MAX_IMAGE_SIDE].
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 128, 2048
SIDE_MULTIPLE = 8  # the pipelines draw in multiples of 8 (the latents are 1/8 of the image)
MAX_IMAGE_NUM = 8
MAX_STEPS = 100
MAX_GUIDANCE_SCALE = 30.0
MAX_CLIP_SKIP = 12
MAX_PROMPT_CHARS = 4096
# A name the server looks up (model, LoRA, embedding, VAE, sampler, ControlNet, preprocessor):
# far longer than any catalog name, short enough to quote back in a refusal.
MAX_NAME_CHARS = 256
# Seeds are 32-bit; -1 (or null) asks the server to draw one.
SEED_LIMIT = 2**32 - 1
# Chat and completions seeds go to vLLM as a signed 64-bit integer (its own server's range).
MIN_SAMPLING_SEED, MAX_SAMPLING_SEED = -(2**63), 2**63 - 1
MAX_CONTROL_UNITS = 4
MAX_CONTROL_STRENGTH = 2.0  # A1111's upper bound for a unit's weight
MAX_NSFW_DETECTION_LEVEL = 2

# /v3 upscale: the factor for each side, in (1, MAX_SCALE].
MAX_SCALE = 4.0

# /v3 txt2speech (Novita's limits).
MAX_SPEECH_TEXT_CHARS = 512  # each text
MIN_SPEECH_VOLUME, MAX_SPEECH_VOLUME = 1.0, 2.0
MIN_SPEECH_SPEED, MAX_SPEECH_SPEED = 0.8, 3.0

# OpenAI /audio/speech.
MIN_OPENAI_SPEECH_SPEED, MAX_OPENAI_SPEECH_SPEED = 0.25, 4.0

# /v3 video tasks. 64 keeps CPU tests fast and is the smallest side at which the x8 latents
# still have room; 1280 is the long side of Wan's and HunyuanVideo's 720p (the output pixel
# limit still bounds a whole video).
MIN_VIDEO_SIDE, MAX_VIDEO_SIDE = 64, 1280
MAX_VIDEO_STEPS = 50
MAX_TXT2VIDEO_FRAMES = 128  # Novita's limit, all prompt segments together
MAX_IMG2VIDEO_FRAMES = 128  # before interpolation; Wan's 5 s clips (81 frames at 16 fps) fit
MAX_VIDEO_FPS = 30
MIN_MOTION_BUCKET_ID, MAX_MOTION_BUCKET_ID = 1, 255
# OpenAI /videos: the longest clip asked for; the frame limits above still apply to seconds x fps.
MAX_VIDEO_SECONDS = 3600

# Novassium (its documented ranges).
MIN_NOVASSIUM_SIDE, MAX_NOVASSIUM_SIDE = 64, 16384
MIN_NOVASSIUM_PIXELS = 4096
MAX_NOVASSIUM_SAMPLES = 7
MAX_NOVASSIUM_SEED = 4294967294

# The Stable Diffusion API (its documented ranges).
MIN_SDAPI_SIDE, MAX_SDAPI_SIDE = 128, 1024
MAX_SDAPI_SAMPLES = 4
MAX_SDAPI_STEPS = 50
MIN_SDAPI_GUIDANCE, MAX_SDAPI_GUIDANCE = 1.0, 20.0

# Speech and transcription text: a ceiling for every free string of the audio routes. What a
# speech request may have spoken in all is limited further by the setting audio.max_speech_chars.
MAX_SPEECH_INPUT_CHARS = 4096  # OpenAI's limit on /audio/speech input
MAX_SPEECH_INSTRUCTIONS_CHARS = 4096  # as long as the input it would steer
MAX_TRANSCRIPTION_PROMPT_CHARS = 4096  # Whisper reads at most 223 tokens of it
MAX_AUDIO_NAME_CHARS = 256  # a model, voice or language name

# Token ids the text routes take (detokenize, prompts and inputs as ids, logit_bias, stop ids):
# vLLM and the tokenizers hold them as 32-bit integers, and no vocabulary comes near the limit.
# Each model's own vocabulary size bounds them further (EngineInfo.vocab_size).
MAX_TOKEN_ID = 2**31 - 1
