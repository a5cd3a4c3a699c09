"""retrodb plan: the arithmetic is what it says it is."""

from __future__ import annotations

import pytest

from retrodb.core.errors import RetrodbError
from retrodb.ops.plan import PlanConfig, Rates, parse_factory, plan


def test_plan_for_the_paper_scale():
    p = plan(PlanConfig(tokens=2e12, gpus=64, cpus=512))
    assert p["chunks"] == pytest.approx(3.125e10)
    by = {s["stage"]: s for s in p["stages"]}
    assert by["embed"]["bytes"] == pytest.approx(3.125e10 * 384 * 2)  # float16 keys
    assert by["index add"]["bytes"] == pytest.approx(3.125e10 * (64 + 8))  # PQ64 + id
    assert by["chunk"]["hours"] == pytest.approx(2e12 / (Rates().chunk_tokens_per_cpu * 512)
                                                 / 3600)
    # twice the hardware halves the time of every parallel stage
    q = plan(PlanConfig(tokens=2e12, gpus=128, cpus=1024))
    for a, b in zip(p["stages"], q["stages"]):
        assert b["hours"] == pytest.approx(a["hours"] / 2)
    assert p["total_bytes"] == pytest.approx(sum(s["bytes"] for s in p["stages"]))


def test_factory_parsing_and_errors():
    assert parse_factory("OPQ32_128,IVF65536_HNSW32,PQ32") == (65536, 40)
    assert parse_factory("IVF4096,PQ32x4fs") == (4096, 24)
    with pytest.raises(RetrodbError, match="--factory Flat"):
        plan(PlanConfig(tokens=1e9, factory="Flat"))
    with pytest.raises(RetrodbError, match="--tokens"):
        plan(PlanConfig(tokens=0))
