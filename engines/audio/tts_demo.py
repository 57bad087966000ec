"""The text-to-speech part of the demo catalog: `demo-tts`, a tiny random multi-speaker VITS.

Built locally in a couple of seconds (no download): hidden width 32, one layer in each
block, a character tokenizer (no phonemizer, so no espeak at synthesis), four speakers through
Coqui's SpeakerManager (their names in `config.json`). The weights are random but seeded, so
every build speaks the same noise; the duration predictor is set to about 70 ms per character,
near real speech, so durations and speed changes are meaningful. Aliased as `tts-1` and
`tts-1-hd` so the openai SDK's model names work.
"""

from __future__ import annotations

import math
from pathlib import Path

from engines.audio.coqui import NOVITA_VOICES, OPENAI_VOICES
from engines.base import ModelKind, ModelSpec
from engines.model_build import build_atomically

# Changing the recipe below? Bump this: a marker with another text triggers a rebuild.
BUILD_VERSION = "omniserve-tts-demo-2"

TTS_MODEL = "demo-tts"
SPEAKERS = ["ava", "ben", "cleo", "dan"]
SAMPLE_RATE = 22050
_HOP = 256  # samples per frame; the decoder's upsampling rates multiply to it
# VITS rounds each token's duration up to whole frames: 2.9 gives 3 frames a token, 70 ms a
# character with the blanks between characters (2 x 3 x 256 / 22050 s), 6 at speed 0.5, 2 at speed 2.
_FRAMES_PER_TOKEN = 2.9


def _build(out: Path) -> None:
    import torch
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.shared_configs import CharactersConfig
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits, VitsArgs

    torch.manual_seed(0)
    args = VitsArgs(
        hidden_channels=32,
        hidden_channels_ffn_text_encoder=64,
        num_heads_text_encoder=2,
        num_layers_text_encoder=1,
        num_layers_posterior_encoder=1,
        num_layers_flow=1,
        upsample_initial_channel_decoder=32,
        upsample_rates_decoder=[8, 8, 2, 2],
        resblock_kernel_sizes_decoder=[3],
        resblock_dilation_sizes_decoder=[[1, 3, 5]],
        use_speaker_embedding=True,
        speaker_embedding_channels=16,
        # The deterministic duration predictor: the stochastic one's random flow gives wild lengths.
        use_sdp=False,
        init_discriminator=False,  # training only
    )
    config = VitsConfig(
        model_args=args,
        # No silence trimming: random weights speak quietly in places, and a trim there would cut
        # sentences short at random.
        audio=BaseAudioConfig(
            sample_rate=SAMPLE_RATE, hop_length=_HOP, win_length=1024, fft_size=1024, do_trim_silence=False
        ),
        use_phonemes=False,
        phoneme_language="en",  # also the text cleaner's language
        text_cleaner="basic_cleaners",  # lower case, collapse whitespace
        characters=CharactersConfig(
            characters_class="TTS.tts.models.vits.VitsCharacters",
            characters="abcdefghijklmnopqrstuvwxyz0123456789",
            punctuations=" !'(),-.:;?\"",
            pad="<PAD>",
            eos="<EOS>",
            bos="<BOS>",
            blank="<BLNK>",
            phonemes=None,
            is_unique=True,
            is_sorted=True,
        ),
        use_speaker_embedding=True,
        speakers=SPEAKERS,
    )
    model = Vits(config)
    with torch.no_grad():
        # Random weights would predict about one frame per token whatever the text; a fixed
        # duration makes speech length follow the text and halve at speed 2.
        model.duration_predictor.proj.weight.mul_(0.01)
        model.duration_predictor.proj.bias.fill_(math.log(_FRAMES_PER_TOKEN))
    config.save_json(str(out / "config.json"))
    torch.save({"model": model.state_dict()}, out / "model.pth")


def _voices() -> dict[str, str]:
    """Every OpenAI voice and Novita voice_id on one of the four speakers, in turn."""
    names = [*OPENAI_VOICES, *NOVITA_VOICES]
    return {name: SPEAKERS[index % len(SPEAKERS)] for index, name in enumerate(names)}


def tts_demo_catalog(root: Path) -> list[ModelSpec]:
    return [
        ModelSpec(
            name=TTS_MODEL,
            kind=ModelKind.SPEECH,
            engine="coqui",
            path=str(Path(root) / TTS_MODEL),
            options={"voices": _voices()},
            aliases=["tts-1", "tts-1-hd"],
        )
    ]


def build_tts_demo_models(root: Path, *, force: bool = False) -> list[ModelSpec]:
    """Build `demo-tts` under `root` if missing (or, with `force`, again); return the specs."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    build_atomically(root / TTS_MODEL, _build, BUILD_VERSION, force=force)
    specs = tts_demo_catalog(root)
    for spec in specs:
        if not Path(spec.path, "config.json").is_file():
            raise FileNotFoundError(f"{spec.name}: no model at {spec.path}")
    return specs
