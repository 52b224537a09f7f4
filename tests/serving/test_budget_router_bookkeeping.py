"""The budget-aware request router's in-flight bookkeeping (serving.replica.budget_router), without
Serve's routing loop: a call counts on its first choice as soon as it is ranked (Serve's routing
tasks otherwise rank a burst against the same reports and send it all to one replica), moves when
Serve routes it elsewhere, counts once however often it is ranked, and goes when it completes.
The routing itself is tested on a real Serve in tests/e2e/test_replica_choice.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from controller.knobs import Knobs
from serving.replica.budget_router import BudgetAwareRequestRouter
from serving.wire import ModelCall


def _router() -> BudgetAwareRequestRouter:
    router = BudgetAwareRequestRouter.__new__(BudgetAwareRequestRouter)  # Serve's constructor not needed
    router.initialize_state()
    return router


def _pending(rid: str) -> Any:
    call = ModelCall(Knobs("high", 8, 16), "hi", 1, expected_ms=89.0, budget_ms=150.0)
    return SimpleNamespace(args=(call,), metadata=SimpleNamespace(internal_request_id=rid))


def _counts(router: BudgetAwareRequestRouter) -> dict[Any, list[str]]:
    return {replica: [rid for rid, _ in sent] for replica, sent in router._sent.items() if sent}


def test_a_call_counts_once_on_its_first_choice_and_moves_where_serve_routes_it() -> None:
    router = _router()
    a, b = _pending("a"), _pending("b")
    router._remember("r1", a)  # ranked: counted on r1 at once
    router._remember("r1", a)  # ranked again (a retry): still once
    router._remember("r1", b)
    assert _counts(router) == {"r1": ["a", "b"]}
    router.on_request_routed(b, "r2", None)  # r1 was full: Serve sent b to r2
    router.on_request_routed(a, "r1", None)  # a went where it was ranked: unchanged
    assert _counts(router) == {"r1": ["a"], "r2": ["b"]}
    router.on_request_completed("r2", "b")
    router.on_request_completed("r1", "a")
    assert _counts(router) == {} and router._where == {}


def test_a_call_that_is_not_a_model_call_is_not_counted() -> None:
    router = _router()
    router._remember("r1", SimpleNamespace(args=("stats",), metadata=SimpleNamespace(internal_request_id="x")))
    assert _counts(router) == {} and router._where == {}
