"""Novassium and the Stable Diffusion API over HTTP against a running server on the demo models."""

from __future__ import annotations

import io

import httpx
from PIL import Image

from tests.e2e.conftest import RunningServer

NOVASSIUM_EXAMPLES = [
    {
        "prompt": "The exterior of a beautiful royal mansion",
        "style_preset": "photographic",
        "aspect_ratio": "16:9",
        "samples": 1,
        "negative_prompt": "No buildings or humans",
        "seed": 123456789,
        "output_format": "png",
        "width": 1920,
        "height": 1080,
    },
    {
        "prompt": "A yummy-looking chocolate cake",
        "style_preset": "digital-art",
        "aspect_ratio": "16:9",
        "samples": 1,
        "output_format": "jpeg",
        "width": 1920,
        "height": 1080,
    },
]


def test_novassium_seed_examples(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        for example in NOVASSIUM_EXAMPLES:
            response = client.post("/api/novassium/v1/generate", json=example, headers={"X-API-Key": server.api_key})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["success"] is True and len(body["images"]) == 1
            assert "remaining_credits" in body
            image = Image.open(io.BytesIO(httpx.get(body["images"][0], timeout=60).content))
            assert image.size == (1920, 1080)
            assert image.format == example["output_format"].upper()
        missing = client.post("/api/novassium/v1/generate", json=NOVASSIUM_EXAMPLES[0])
        assert missing.status_code == 401
        assert missing.json()["message"] == "API key is missing."


def test_sdapi_text2img_and_fetch(server: RunningServer) -> None:
    body = {
        "key": server.api_key,
        "prompt": "ultra realistic close up portrait ((beautiful pale cyberpunk female with heavy black eyeliner))",
        "negative_prompt": "bad quality",
        "width": "256",
        "height": "256",
        "samples": "1",
        "num_inference_steps": "4",
        "safety_checker": "no",
        "enhance_prompt": "yes",
        "seed": None,
        "guidance_scale": 7.5,
        "multi_lingual": "no",
        "panorama": "no",
        "self_attention": "no",
        "upscale": "no",
        "webhook": None,
        "track_id": None,
    }
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        response = client.post("/api/v3/text2img", json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["status"] == "success" and len(result["output"]) == 1
        image = Image.open(io.BytesIO(httpx.get(result["output"][0], timeout=60).content))
        assert image.size == (256, 256)
        fetched = client.post(f"/api/v3/fetch/{result['id']}", json={"key": server.api_key}).json()
        # The same files; each answer signs its URLs as it is rendered, so the expiry may differ.
        assert fetched["status"] == "success"
        assert [url.split("?", 1)[0] for url in fetched["output"]] == [url.split("?", 1)[0] for url in result["output"]]
        assert httpx.get(fetched["output"][0], timeout=60).content.startswith(b"\x89PNG")
        invalid = client.post("/api/v3/text2img", json={**body, "key": "wrong"})
        assert invalid.status_code == 403 and invalid.json()["message"] == "Invalid Api Key"


def test_v3_user_reports_an_unmetered_key(server: RunningServer) -> None:
    response = httpx.get(
        f"{server.base_url}/v3/user", headers={"Authorization": f"Bearer {server.api_key}"}, timeout=30
    )
    assert response.status_code == 200 and response.json()["credit_balance"] is None
