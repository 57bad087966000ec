"""Replicas that run different models (cluster.serve): A runs demo-sd and demo-esrgan, B only
demo-esrgan. Any replica accepts a task for a model some live replica runs, and the one that
runs it takes it; a synchronous request for a model run elsewhere is a 404 naming where it runs;
both replicas list what the cluster runs; a model no live replica runs is refused with a 503."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from novita_client import NovitaClient
from novita_client.proto import Txt2ImgV3Request

from engines.base import ModelSpec
from tests.replicas.cluster import MODEL, UPSCALER, Cluster, running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CLIENT_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, replica_catalog: list[ModelSpec]) -> Iterator[Cluster]:
    serve = {"a": [MODEL, UPSCALER], "b": [UPSCALER]}
    with running_cluster(tmp_path_factory.mktemp("replica-routing"), replica_catalog, serve=serve) as cluster:
        yield cluster


def _admin_view(cluster: Cluster, via: str) -> dict[str, list[str]]:
    """/admin/cluster on one replica: each live replica's URL and the models it runs."""
    replica = cluster.a if via == "a" else cluster.b
    response = httpx.get(
        f"{replica.base_url}/admin/cluster",
        headers={"Authorization": f"Bearer {cluster.admin_key}"},
        timeout=CLIENT_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return {entry["url"]: sorted(entry["models"]) for entry in response.json()["replicas"]}


def test_a_task_submitted_where_its_model_does_not_run_runs_where_it_does(cluster: Cluster) -> None:
    key_id, key = cluster.create_key("routed", credits=2.0)
    request = Txt2ImgV3Request(model_name=MODEL, prompt="a lighthouse", width=128, height=128, image_num=1, steps=1)
    task_id = NovitaClient(key, base_url=cluster.b.base_url).raw_txt2img_v3(request).task_id
    result = NovitaClient(key, base_url=cluster.b.base_url).wait_for_task_v3(task_id, wait_for=60)
    assert result.task.status.value == "TASK_STATUS_SUCCEED"
    on_a = NovitaClient(key, base_url=cluster.a.base_url).wait_for_task_v3(task_id, wait_for=10)
    assert on_a.task.status.value == "TASK_STATUS_SUCCEED"
    assert [image.image_url.split("?")[0] for image in on_a.images] == [
        image.image_url.split("?")[0].replace(cluster.b.base_url, cluster.a.base_url) for image in result.images
    ]
    # B cannot run demo-sd (its scheduler refuses the model), so the image is A's work.
    assert cluster.charges(key_id) == {"committed": 1}


def test_a_synchronous_request_for_a_model_run_elsewhere_names_where(cluster: Cluster) -> None:
    _, key = cluster.create_key("sync-elsewhere")
    client = openai.OpenAI(api_key=key, base_url=cluster.b.openai_url, max_retries=0, timeout=CLIENT_TIMEOUT_S)
    with pytest.raises(openai.NotFoundError) as refused:
        client.images.generate(model=MODEL, prompt="a lighthouse", size="128x128", n=1)
    assert cluster.a.base_url in str(refused.value), refused.value
    # The same request to A, which runs the model, is served.
    served = openai.OpenAI(api_key=key, base_url=cluster.a.openai_url, max_retries=0, timeout=CLIENT_TIMEOUT_S)
    images = served.images.generate(model=MODEL, prompt="a lighthouse", size="128x128", n=1).data
    assert images is not None and len(images) == 1


def test_every_replica_sees_which_replica_runs_which_model(cluster: Cluster) -> None:
    expected = {cluster.a.base_url: sorted([MODEL, UPSCALER]), cluster.b.base_url: [UPSCALER]}
    assert _admin_view(cluster, "a") == expected
    assert _admin_view(cluster, "b") == expected
    _, key = cluster.create_key("lister")
    listed = openai.OpenAI(api_key=key, base_url=cluster.b.openai_url, max_retries=0, timeout=CLIENT_TIMEOUT_S)
    assert {MODEL, UPSCALER} <= {model.id for model in listed.models.list()}


def test_a_model_no_live_replica_runs_is_refused_until_one_comes_back(cluster: Cluster) -> None:
    _, key = cluster.create_key("nobody-runs-it")
    cluster.a.stop()  # a clean stop leaves the cluster catalog at once
    deadline = time.monotonic() + 30
    while cluster.a.base_url in _admin_view(cluster, "b"):  # B reads the catalog every heartbeat
        assert time.monotonic() < deadline, cluster.log_tails()
        time.sleep(0.1)
    request = {"request": {"model_name": MODEL, "prompt": "a lighthouse", "width": 128, "height": 128, "steps": 1}}
    refused = httpx.post(
        f"{cluster.b.base_url}/v3/async/txt2img",
        json=request,
        headers={"Authorization": f"Bearer {key}"},
        timeout=CLIENT_TIMEOUT_S,
    )
    assert refused.status_code == 503, refused.text
    assert "Retry-After" in refused.headers
    cluster.a.start()
    cluster.a.wait_ready()
    # B learns of A within a heartbeat; then B accepts the task again.
    deadline = time.monotonic() + 30
    while True:
        accepted = httpx.post(
            f"{cluster.b.base_url}/v3/async/txt2img",
            json=request,
            headers={"Authorization": f"Bearer {key}"},
            timeout=CLIENT_TIMEOUT_S,
        )
        if accepted.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert accepted.status_code == 200, accepted.text
