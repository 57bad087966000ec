"""Two omniserve replicas on one real Redis per test module (tests/replicas/cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engines.base import ModelSpec
from tests.replicas.cluster import Cluster, build_catalog, running_cluster


@pytest.fixture(scope="session")
def replica_catalog(tmp_path_factory: pytest.TempPathFactory) -> list[ModelSpec]:
    """The replicas' models, built once per session."""
    return build_catalog(tmp_path_factory.mktemp("replica-models"))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, replica_catalog: list[ModelSpec]) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("replicas"), replica_catalog) as cluster:
        yield cluster


@pytest.fixture
def cluster(running: Cluster) -> Cluster:
    """The module's cluster with Redis and both replicas up, whatever an earlier test stopped."""
    running.ensure_up()
    return running
