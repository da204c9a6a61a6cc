"""The result backend the workers and publishers use (celery_service.redis_client): each
state a task stores is one script call that keeps Celery's rule, that a stored SUCCESS is
never overwritten, and stores, publishes and expires it as Celery's own backend does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from uuid import uuid4

import pytest
from celery import Celery, states

from celery_service.redis_client import ResultBackend
from tests.conftest import RedisServer
from tests.worker.harness import publisher, results_client


@pytest.fixture
def app(redis_server: Callable[..., RedisServer]) -> Iterator[Celery]:
    celery = publisher(redis_server().port)
    yield celery
    celery.close()


def test_the_platform_backend_is_the_one_in_use(app: Celery) -> None:
    assert isinstance(app.backend, ResultBackend)


def test_states_before_success_are_replaced_and_success_is_final(app: Celery) -> None:
    """A redelivered run of a task that already succeeded (its ack was lost with its worker)
    fails this time: the caller still reads the first run's result."""
    task_id = str(uuid4())
    app.backend.store_result(task_id, {"done": 1}, "PROGRESS")
    assert app.AsyncResult(task_id).state == "PROGRESS"
    app.backend.store_result(task_id, 42, states.SUCCESS)
    app.backend.store_result(task_id, ValueError("second run"), states.FAILURE)
    result = app.AsyncResult(task_id)
    assert (result.state, result.get(timeout=5)) == (states.SUCCESS, 42)


def test_a_stored_state_is_published_and_expires_as_configured(app: Celery) -> None:
    backend = app.backend
    client = results_client(backend.client)
    key = backend.get_key_for_task(task_id := str(uuid4()))
    subscriber = client.pubsub()
    subscriber.subscribe(key)
    assert subscriber.get_message(timeout=5)["type"] == "subscribe"
    backend.store_result(task_id, "report", states.SUCCESS)
    published = subscriber.get_message(timeout=5)
    subscriber.close()
    assert published is not None
    assert published["data"] == client.get(key)
    assert backend.expires - 5 <= client.ttl(key) <= backend.expires


@pytest.mark.parametrize(
    "settings",
    [
        {"result_serializer": "pickle", "result_accept_content": ["json", "pickle"]},
        {"result_compression": "zlib"},
    ],
    ids=["pickle", "compressed"],
)
def test_an_app_with_another_result_encoding_stores_as_celery_does(
    app: Celery, settings: dict[str, object]
) -> None:
    """The script reads the stored status as plain JSON; another serializer, or compressed
    results (an app's celeryconfig may set either), take Celery's path, whose SUCCESS is
    as final."""
    app.conf.update(settings)
    backend = ResultBackend(app=app, url=app.conf.result_backend)
    task_id = str(uuid4())
    backend.store_result(task_id, {"n": 1}, states.SUCCESS)
    backend.store_result(task_id, ValueError("later"), states.FAILURE)
    assert backend.get_task_meta(task_id)["status"] == states.SUCCESS
    assert backend.get_task_meta(task_id)["result"] == {"n": 1}


def test_a_state_is_stored_in_one_call(app: Celery) -> None:
    """Celery's own store is a GET, then MULTI, SETEX, PUBLISH, EXEC: two round trips for
    every task a pool process runs."""
    client = results_client(app.backend.client)
    app.backend.store_result(str(uuid4()), 0, states.SUCCESS)  # the script is loaded now

    def calls() -> dict[str, int]:
        stats = client.info("commandstats")
        return {
            name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "exec")
        }

    before = calls()
    app.backend.store_result(str(uuid4()), 1, states.SUCCESS)
    after = calls()
    assert (after["evalsha"] - before["evalsha"], after["exec"] - before["exec"]) == (1, 0)
