from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from engines.admission import AdmissionPolicy, Priority, lease_owner
from engines.base import ModelKind, ModelSpec
from engines.devices import DeviceMemory, parse_budget
from engines.errors import ModelNotFound, Overloaded
from engines.registry import ModelRegistry
from engines.residency import Residency
from engines.scheduler import Scheduler
from server.app import create_app
from tests.fakes import FAKE_SPECS, FakeSleepableTextEngine, fake_factory, sleepable_factory
from tests.unit.conftest import make_state


def make_scheduler(**policy: float) -> Scheduler:
    return Scheduler(ModelRegistry(FAKE_SPECS, {"fake": fake_factory}), AdmissionPolicy(**policy))  # type: ignore[arg-type]


async def test_lease_loads_on_demand_and_resolves_aliases() -> None:
    scheduler = make_scheduler()
    assert scheduler.residency()["fake-chat"] is Residency.UNLOADED
    async with scheduler.lease("fake-chat-alias") as engine:
        assert engine.spec.name == "fake-chat"
    assert scheduler.residency()["fake-chat"] is Residency.RESIDENT


async def test_unknown_model() -> None:
    with pytest.raises(ModelNotFound) as caught:
        async with make_scheduler().lease("nope"):
            pass
    assert caught.value.field == "model" and caught.value.model == "nope"
    assert caught.value.message == "The model 'nope' does not exist."


async def test_full_queue_is_429_and_slow_queue_is_503() -> None:
    scheduler = make_scheduler(max_concurrency=1, max_queue_depth=1, queue_timeout_s=0.2)
    holder_entered = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with scheduler.lease("fake-chat"):
            holder_entered.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holder_entered.wait()

    async def wait_in_queue() -> None:
        async with scheduler.lease("fake-chat"):
            pass

    waiter = asyncio.create_task(wait_in_queue())
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as full:
        async with scheduler.lease("fake-chat"):
            pass
    assert full.value.queue_full and full.value.retry_after == 1.0
    with pytest.raises(Overloaded) as timed_out:
        await waiter
    assert not timed_out.value.queue_full and timed_out.value.retry_after >= 1.0
    release.set()
    await holder
    # The slot is free again.
    async with scheduler.lease("fake-chat"):
        pass


# -- turns: priority classes, then round-robin by owner ------------------------------------------


async def _served_order(scheduler: Scheduler, arrivals: list[tuple[str, Priority, str | None]]) -> list[str]:
    """Hold the only slot, queue `arrivals` (label, priority, owner) in order, then release:
    the labels in the order the waiters got the slot."""
    release = asyncio.Event()
    holding = asyncio.Event()
    order: list[str] = []

    async def hold() -> None:
        async with scheduler.lease("fake-chat"):
            holding.set()
            await release.wait()

    async def wait(label: str, priority: Priority, owner: str | None) -> None:
        async with scheduler.lease("fake-chat", priority=priority, owner=owner):
            order.append(label)
            await asyncio.sleep(0)

    holder = asyncio.create_task(hold())
    await holding.wait()
    waiters = []
    for label, priority, owner in arrivals:
        waiters.append(asyncio.create_task(wait(label, priority, owner)))
        await asyncio.sleep(0)  # queued in this order
    assert scheduler.queue_state()["fake-chat"] == (len(arrivals), 1)
    release.set()
    await asyncio.gather(holder, *waiters)
    assert scheduler.queue_state()["fake-chat"] == (0, 0)
    return order


async def test_interactive_requests_go_ahead_of_background_work() -> None:
    scheduler = make_scheduler(max_concurrency=1)
    background, interactive = Priority.BACKGROUND, Priority.INTERACTIVE
    arrivals = [("task1", background, "k"), ("task2", background, "k"), ("chat1", interactive, "k")]
    arrivals += [("task3", background, "k"), ("chat2", interactive, "k")]
    assert await _served_order(scheduler, arrivals) == ["chat1", "chat2", "task1", "task2", "task3"]


async def test_waiters_take_turns_by_owner_within_a_priority() -> None:
    scheduler = make_scheduler(max_concurrency=1)
    arrivals = [(f"a{i}", Priority.INTERACTIVE, "key-a") for i in range(1, 4)]
    arrivals += [("b1", Priority.INTERACTIVE, "key-b"), ("c1", Priority.INTERACTIVE, "key-c")]
    arrivals += [("a4", Priority.INTERACTIVE, "key-a"), ("b2", Priority.INTERACTIVE, "key-b")]
    assert await _served_order(scheduler, arrivals) == ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]


async def test_turns_by_owner_apply_to_background_work_too() -> None:
    scheduler = make_scheduler(max_concurrency=1)
    arrivals = [(f"a{i}", Priority.BACKGROUND, "key-a") for i in range(1, 4)]
    arrivals += [("b1", Priority.BACKGROUND, "key-b"), ("chat", Priority.INTERACTIVE, "key-a")]
    assert await _served_order(scheduler, arrivals) == ["chat", "a1", "b1", "a2", "a3"]


async def test_owner_defaults_to_the_context_key() -> None:
    scheduler = make_scheduler(max_concurrency=1)
    release = asyncio.Event()
    holding = asyncio.Event()
    order: list[str] = []

    async def hold() -> None:
        async with scheduler.lease("fake-chat"):
            holding.set()
            await release.wait()

    async def request(label: str, key: str) -> None:
        lease_owner.set(key)  # what the auth guard does for each request
        async with scheduler.lease("fake-chat"):
            order.append(label)

    holder = asyncio.create_task(hold())
    await holding.wait()
    waiters = []
    for label, key in [("a1", "key-a"), ("a2", "key-a"), ("a3", "key-a"), ("b1", "key-b")]:
        waiters.append(asyncio.create_task(request(label, key)))
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, *waiters)
    assert order == ["a1", "b1", "a2", "a3"]


async def test_a_waiter_that_gives_up_leaves_its_turn() -> None:
    scheduler = make_scheduler(max_concurrency=1, queue_timeout_s=0.05)
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold() -> None:
        async with scheduler.lease("fake-chat"):
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    with pytest.raises(Overloaded) as timed_out:
        async with scheduler.lease("fake-chat", owner="key-a"):
            pass
    assert not timed_out.value.queue_full
    cancelled = asyncio.create_task(use_chat(scheduler, "key-b"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert scheduler.queue_state()["fake-chat"] == (0, 1)
    release.set()
    await holder
    await use_chat(scheduler, "key-c")  # the slot is free: no waiter was left holding it
    assert scheduler.queue_state()["fake-chat"] == (0, 0)


async def use_chat(scheduler: Scheduler, owner: str) -> None:
    async with scheduler.lease("fake-chat", owner=owner):
        pass


# -- device memory: footprints declared in the catalog, one host budget ---------------------------

MB = 1024 * 1024


def sized(name: str, megabytes: int, *, pinned: bool = False) -> ModelSpec:
    return ModelSpec(
        name=name, kind=ModelKind.CHAT, engine="fake", path="-", memory_bytes=megabytes * MB, pinned=pinned
    )


def budgeted(specs: list[ModelSpec], budget_mb: int, **policy: float) -> Scheduler:
    host = DeviceMemory(name="cpu", total_bytes=1024 * MB, budget_bytes=budget_mb * MB)
    registry = ModelRegistry(specs, {"fake": fake_factory, "sleepy": sleepable_factory})
    return Scheduler(registry, AdmissionPolicy(**policy), [host])  # type: ignore[arg-type]


async def use(scheduler: Scheduler, name: str) -> None:
    async with scheduler.lease(name):
        # Within the budget at every moment a model runs.
        assert scheduler.used_bytes("cpu") <= scheduler.devices["cpu"].budget_bytes


def loaded(scheduler: Scheduler) -> set[str]:
    return {name for name, state in scheduler.residency().items() if state is Residency.RESIDENT}


async def test_parse_budget() -> None:
    assert parse_budget("0.5", 1000) == 500
    assert parse_budget(0.25, 1000) == 250
    assert parse_budget("8000000000", 1000) == 8_000_000_000
    assert parse_budget("12GiB", 1000) == 12 * 1024**3
    assert parse_budget("512M", 1000) == 512 * MB
    with pytest.raises(ValueError):
        parse_budget("half", 1000)


async def test_evicts_least_recently_used_first() -> None:
    scheduler = budgeted([sized("a", 100), sized("b", 100), sized("c", 100)], budget_mb=200)
    await use(scheduler, "a")
    await use(scheduler, "b")
    await use(scheduler, "a")  # now b is the least recently used
    await use(scheduler, "c")
    assert loaded(scheduler) == {"a", "c"}
    assert scheduler.engine("b").loaded is False  # type: ignore[attr-defined]
    await use(scheduler, "b")  # a was used before c
    assert loaded(scheduler) == {"b", "c"}
    models = scheduler.report().models
    assert models["b"].evictions == {"lru": 1} and models["a"].evictions == {"lru": 1}
    assert models["c"].evictions == {} and models["b"].loads == 2


async def test_leased_model_is_never_evicted_the_newcomer_waits() -> None:
    scheduler = budgeted([sized("a", 100), sized("b", 100), sized("c", 150)], budget_mb=200, queue_timeout_s=0.2)
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold_a() -> None:
        async with scheduler.lease("a"):
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold_a())
    await holding.wait()
    await use(scheduler, "b")
    # c needs 150 MB: evicting idle b alone is not enough and a is leased, so nothing is evicted.
    with pytest.raises(Overloaded) as refused:
        await use(scheduler, "c")
    assert not refused.value.queue_full and refused.value.retry_after >= 1.0
    assert loaded(scheduler) == {"a", "b"}
    assert scheduler.engine("a").loaded is True  # type: ignore[attr-defined]

    # A request that waits gets the model once the lease ends.
    waiter = asyncio.create_task(use(scheduler, "c"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    release.set()
    await holder
    await waiter
    assert loaded(scheduler) == {"c"}


async def test_pinned_model_is_never_evicted() -> None:
    scheduler = budgeted([sized("p", 100, pinned=True), sized("b", 100), sized("c", 100)], budget_mb=200)
    await scheduler.load_all()
    assert loaded(scheduler) == {"p", "b"}
    await use(scheduler, "b")
    await use(scheduler, "c")  # p is least recently used, but pinned: b goes
    assert loaded(scheduler) == {"p", "c"}
    assert scheduler.report().models["p"].evictions == {}


async def test_startup_loads_pinned_first_and_the_rest_lazily_when_the_budget_is_small() -> None:
    specs = [sized("a", 100), sized("b", 100), sized("p", 100, pinned=True)]
    scheduler = budgeted(specs, budget_mb=250)
    assert not scheduler.ready()
    await scheduler.load_all()
    assert loaded(scheduler) == {"p", "a"}
    assert scheduler.ready()  # b loads on first use and does not hold readiness back
    await use(scheduler, "b")
    assert loaded(scheduler) == {"p", "b"}
    assert scheduler.ready()


async def test_everything_loads_at_startup_when_it_fits() -> None:
    scheduler = budgeted([sized("a", 100), sized("b", 100)], budget_mb=200)
    await scheduler.load_all()
    assert scheduler.all_resident() and scheduler.ready()


async def test_idle_ttl_unloads_unused_models_but_not_pinned_ones() -> None:
    scheduler = budgeted([sized("a", 10), sized("p", 10, pinned=True)], budget_mb=200, idle_ttl_s=0.05)
    await scheduler.load_all()
    assert await scheduler.unload_idle() == []  # just loaded: not idle yet
    scheduler.start()
    try:
        await asyncio.sleep(0.3)
    finally:
        await scheduler.stop()
    assert loaded(scheduler) == {"p"}
    assert scheduler.report().models["a"].evictions == {"idle": 1}
    await use(scheduler, "a")  # loads again on use
    assert loaded(scheduler) == {"a", "p"}


async def test_idle_ttl_spares_a_model_in_use() -> None:
    scheduler = budgeted([sized("a", 10)], budget_mb=200, idle_ttl_s=0.01)
    async with scheduler.lease("a"):
        await asyncio.sleep(0.05)
        assert await scheduler.unload_idle() == []
    await asyncio.sleep(0.05)
    assert await scheduler.unload_idle() == ["a"]


async def test_flood_for_a_model_without_room_is_refused_with_retry_after_then_served() -> None:
    scheduler = budgeted(
        [sized("a", 100), sized("b", 100)], budget_mb=100, max_concurrency=1, max_queue_depth=2, queue_timeout_s=0.2
    )
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold_a() -> None:
        async with scheduler.lease("a"):
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold_a())
    await holding.wait()
    flood = await asyncio.gather(*(use(scheduler, "b") for _ in range(6)), return_exceptions=True)
    assert all(isinstance(outcome, Overloaded) for outcome in flood)
    full = [outcome.queue_full for outcome in flood if isinstance(outcome, Overloaded)]
    assert True in full and False in full  # some refused at once (429), some waited in vain (503)
    assert all(outcome.retry_after for outcome in flood if isinstance(outcome, Overloaded))
    assert loaded(scheduler) == {"a"}
    release.set()
    await holder
    await use(scheduler, "b")  # the retry succeeds: a is idle now and gets evicted
    assert loaded(scheduler) == {"b"}


async def test_measured_footprint_is_remembered() -> None:
    scheduler = budgeted([ModelSpec(name="m", kind=ModelKind.CHAT, engine="fake", path="-")], budget_mb=200)
    assert scheduler.report().models["m"].footprint_source == "unknown"
    await use(scheduler, "m")
    model = scheduler.report().models["m"]
    assert model.footprint_source == "measured" and model.loads == 1 and model.last_load_s is not None


async def test_metrics_count_evictions_and_loads() -> None:
    from server.metrics import Metrics

    scheduler = budgeted([sized("a", 100), sized("b", 100)], budget_mb=100)
    await use(scheduler, "a")
    await use(scheduler, "b")
    text = Metrics(scheduler).render().decode()
    assert 'omniserve_model_evictions_total{model="a",reason="lru"} 1.0' in text
    assert 'omniserve_model_load_seconds_count{model="b"} 1.0' in text


async def test_admin_scheduler_route(tmp_path: Path) -> None:
    state = make_state(tmp_path, auth={"static_admin_keys": ["admin-key"]})
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        assert (await client.get("/admin/scheduler")).status_code == 401
        response = await client.get("/admin/scheduler", headers={"Authorization": "Bearer admin-key"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"devices", "models", "idle_ttl_s"}
    host = next(device for device in body["devices"] if device["name"] == "cpu")
    assert 0 < host["budget_bytes"] <= host["total_bytes"] and host["used_bytes"] >= 0
    assert set(body["models"]) == {spec.name for spec in FAKE_SPECS}
    chat = body["models"]["fake-chat"]
    assert chat["state"] == "resident" and chat["device"] == "cpu" and chat["loads"] == 1
    assert set(chat) == {
        "state",
        "device",
        "pinned",
        "footprint_bytes",
        "footprint_source",
        "idle_s",
        "leases",
        "queue_depth",
        "loads",
        "last_load_s",
        "total_load_s",
        "evictions",
        "sleeps",
        "wakes",
        "total_wake_s",
    }


# -- sleep and wake: engines that can free device memory without unloading ----------------------


def sleepy(name: str, megabytes: int) -> ModelSpec:
    return ModelSpec(name=name, kind=ModelKind.CHAT, engine="sleepy", path="-", memory_bytes=megabytes * MB)


async def test_a_sleepable_model_is_evicted_by_sleeping_and_woken_on_next_lease() -> None:
    from server.metrics import Metrics

    scheduler = budgeted([sleepy("a", 100), sleepy("b", 100)], budget_mb=100)
    a = scheduler.engine("a")
    assert isinstance(a, FakeSleepableTextEngine)
    await use(scheduler, "a")
    await use(scheduler, "b")  # no room for both: a sleeps
    assert scheduler.residency() == {"a": Residency.SLEEPING, "b": Residency.RESIDENT}
    assert a.asleep and a.loaded and a.sleep_calls == 1
    assert scheduler.used_bytes("cpu") == 100 * MB  # a sleeping model holds no device memory

    await use(scheduler, "a")  # woken, not loaded again; b sleeps in turn
    assert scheduler.residency() == {"a": Residency.RESIDENT, "b": Residency.SLEEPING}
    assert a.wake_calls == 1 and a.load_calls == 1 and not a.asleep
    model = scheduler.report().models["a"]
    assert model.loads == 1 and model.wakes == 1 and model.sleeps == 1 and model.evictions == {"lru": 1}

    text = Metrics(scheduler).render().decode()
    assert 'omniserve_model_wake_seconds_count{model="a"} 1.0' in text
    assert 'omniserve_model_sleeps_total{model="b"} 1.0' in text
    assert 'omniserve_model_state{model="b",state="sleeping"} 1.0' in text


async def test_an_engine_that_cannot_sleep_now_is_unloaded() -> None:
    scheduler = budgeted([sleepy("a", 100), sized("b", 100)], budget_mb=100)
    a = scheduler.engine("a")
    assert isinstance(a, FakeSleepableTextEngine)
    await use(scheduler, "a")
    a.loaded = False  # supports_sleep is false for this fake when it is not loaded
    await use(scheduler, "b")
    assert scheduler.residency()["a"] is Residency.UNLOADED and a.sleep_calls == 0


async def test_a_model_that_fails_to_wake_is_loaded_again() -> None:
    scheduler = budgeted([sleepy("a", 100), sized("b", 100)], budget_mb=100)
    a = scheduler.engine("a")
    assert isinstance(a, FakeSleepableTextEngine)
    await use(scheduler, "a")
    await use(scheduler, "b")
    assert scheduler.residency()["a"] is Residency.SLEEPING
    a.asleep = False  # the fake's wake() now fails
    await use(scheduler, "a")
    assert scheduler.residency() == {"a": Residency.RESIDENT, "b": Residency.UNLOADED}
    assert a.load_calls == 2 and a.wake_calls == 0 and scheduler.report().models["a"].wakes == 0


async def test_idle_ttl_unloads_a_sleeping_model() -> None:
    scheduler = budgeted([sleepy("a", 100), sized("b", 100)], budget_mb=100, idle_ttl_s=0.05)
    await use(scheduler, "a")
    await use(scheduler, "b")
    assert scheduler.residency()["a"] is Residency.SLEEPING
    await asyncio.sleep(0.1)
    assert sorted(await scheduler.unload_idle()) == ["a", "b"]
    assert scheduler.residency() == {"a": Residency.UNLOADED, "b": Residency.UNLOADED}
    assert scheduler.engine("a").loaded is False  # type: ignore[attr-defined]


# -- typed leases: the engine protocol asked for, checked from the catalog -------------------------


async def test_a_typed_lease_narrows_to_the_protocol_asked_for() -> None:
    from engines.base import Engine, ImageEngine, ScoreEngine, TextGenerationEngine

    scheduler = make_scheduler()
    async with scheduler.lease("fake-chat-alias", TextGenerationEngine) as chat:
        assert chat.spec.name == "fake-chat" and chat.render_chat([{"role": "user", "content": "x"}])
    assert (await scheduler.resident_engine("fake-rerank", ScoreEngine)).spec.kind is ModelKind.RERANK
    assert scheduler.engine("fake-sd", ImageEngine).spec.options == {"loras": {"ok-lora": "-"}}
    assert scheduler.spec("fake-chat-alias").name == "fake-chat"
    # Untyped calls (the default kind, Engine) take a model of any kind.
    async with scheduler.lease("fake-sd") as any_engine:
        assert isinstance(any_engine, Engine)
    assert scheduler.engine("fake-embed").spec.kind is ModelKind.EMBEDDING


async def test_a_wrong_kind_is_refused_from_the_catalog_loading_and_evicting_nothing() -> None:
    from engines.base import EmbeddingEngine, ImageEngine, TextGenerationEngine
    from engines.errors import WrongModelKind

    image = ModelSpec(name="img", kind=ModelKind.IMAGE, engine="fake", path="-", memory_bytes=100 * MB)
    scheduler = budgeted([sized("chat", 100), image], budget_mb=100)
    await use(scheduler, "chat")  # the budget is full: loading img would evict chat
    before = scheduler.residency()
    assert before == {"chat": Residency.RESIDENT, "img": Residency.UNLOADED}

    with pytest.raises(WrongModelKind) as leased:
        async with scheduler.lease("img", TextGenerationEngine):
            raise AssertionError("a wrong-kind lease was granted")
    with pytest.raises(WrongModelKind) as resident:
        await scheduler.resident_engine("img", EmbeddingEngine)
    with pytest.raises(WrongModelKind):
        scheduler.engine("chat", ImageEngine)

    assert leased.value.field == "model" and leased.value.model == "img"
    assert leased.value.kind is ModelKind.IMAGE and leased.value.wanted == {ModelKind.CHAT}
    assert leased.value.message == "The model 'img' is a image model and does not serve chat."
    assert resident.value.wanted == {ModelKind.EMBEDDING}
    # Nothing loaded, nothing evicted, nothing left waiting.
    assert scheduler.engine("img").loaded is False  # type: ignore[attr-defined]
    assert scheduler.engine("chat").loaded is True  # type: ignore[attr-defined]
    assert scheduler.residency() == before
    models = scheduler.report().models
    assert models["img"].loads == 0 and models["chat"].loads == 1 and models["chat"].evictions == {}
    assert scheduler.queue_state() == {"chat": (0, 0), "img": (0, 0)}


async def test_an_unknown_model_is_not_found_whatever_the_kind() -> None:
    from engines.base import TextGenerationEngine

    with pytest.raises(ModelNotFound):
        await make_scheduler().resident_engine("nope", TextGenerationEngine)


def test_served_kinds_cover_every_kind_and_refuse_a_non_protocol() -> None:
    from engines.base import SERVED_KINDS, BatchImageEngine, Engine, ImageEngine, ScoreEngine, served_kinds

    assert served_kinds(Engine) == frozenset(ModelKind)
    assert served_kinds(BatchImageEngine) == served_kinds(ImageEngine) == {ModelKind.IMAGE}
    assert served_kinds(ScoreEngine) == {ModelKind.RERANK}
    # Every kind is served by some protocol besides Engine itself.
    assert set().union(*(kinds for protocol, kinds in SERVED_KINDS.items() if protocol is not Engine)) == set(ModelKind)
    with pytest.raises(TypeError):
        served_kinds(int)
