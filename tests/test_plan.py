"""retrodb plan: the arithmetic is what it says it is."""

from __future__ import annotations

import json

import pytest

from retrodb.core.errors import RetrodbError
from retrodb.ops.plan import PlanConfig, load_rates, parse_factory, plan


def test_plan_for_the_paper_scale():
    rates = load_rates()
    p = plan(PlanConfig(tokens=2e12, gpus=64, cpus=512), rates)
    assert p["chunks"] == pytest.approx(3.125e10)
    by = {s["stage"]: s for s in p["stages"]}
    assert by["embed"]["bytes"] == pytest.approx(3.125e10 * 384 * 2)  # float16 keys
    # the default is `retrodb index`'s rule: 2^19 lists, 96 × 4-bit codes (48 B) + id
    assert p["factory"] == "IVF524288_HNSW32,PQ96x4"
    assert by["index add"]["bytes"] == pytest.approx(3.125e10 * (48 + 8))
    tps = rates["chunk_tokens_per_cpu_s"]["value"]
    assert by["chunk"]["device_hours"] == pytest.approx(2e12 / tps / 3600)
    assert by["chunk"]["hours"] == pytest.approx(2e12 / tps / 3600 / 512)
    # machines to finish in a day: device-hours / 24 / cores per machine, rounded up
    assert by["chunk"]["machines_in_a_day"] == -(-by["chunk"]["device_hours"] // (24 * 64))
    # one coordinator keeps up with (worker seconds per shard / its seconds per shard)
    coord = rates["chunk_coordinator_s_per_shard"]["value"]
    per_shard = 2e12 / p["shards"] / tps
    assert by["chunk"]["coordinator_limit_devices"] == pytest.approx(per_shard / coord)
    # twice the hardware halves the time of every parallel stage
    q = plan(PlanConfig(tokens=2e12, gpus=128, cpus=1024), rates)
    for a, b in zip(p["stages"], q["stages"]):
        assert b["hours"] == pytest.approx(a["hours"] / 2)
    assert p["total_bytes"] == pytest.approx(sum(s["bytes"] for s in p["stages"]))


def test_rates_come_from_the_benchmark_results_when_measured(tmp_path):
    f = tmp_path / "rates.json"
    f.write_text(json.dumps({"chunk_tokens_per_cpu_s": {"value": 2e6, "source": "x"}}))
    r = load_rates(f)
    assert r["chunk_tokens_per_cpu_s"] == {"value": 2e6, "source": "x"}
    assert r["embed_chunks_per_gpu_s"]["source"].startswith("estimate")


def test_factory_parsing_and_errors():
    assert parse_factory("OPQ32_128,IVF65536_HNSW32,PQ32") == (65536, 40)
    assert parse_factory("IVF4096,PQ32x4fs") == (4096, 24)
    with pytest.raises(RetrodbError, match="--factory Flat"):
        plan(PlanConfig(tokens=1e9, factory="Flat"))
    with pytest.raises(RetrodbError, match="--tokens"):
        plan(PlanConfig(tokens=0))


def test_index_training_reaches_the_paper_scale_in_a_day():
    """Two-level k-means (nlist/512 groups, then each into its share, then refinement
    rounds): at 2e12 tokens the default index trains within 24 h on 64 CPUs, and
    Megatron's 4.2M-list index too; flat k-means of 4.2M lists would not."""
    from retrodb.stages.index.kmeans import distances_per_vector

    rates = load_rates()
    for factory in (None, "IVF4194304_HNSW32,PQ64"):
        p = plan(PlanConfig(tokens=2e12, cpus=64, factory=factory), rates)
        train = {s["stage"]: s for s in p["stages"]}["index train"]
        assert train["hours"] <= 24 and "two-level" in train["how"], train
        nlist, n = p["nlist"], p["index_train_vectors"]
        units = n * distances_per_vector(nlist, "two-level") * 384
        per = rates["kmeans2_core_s_per_unit"]["value"]
        assert train["device_hours"] == pytest.approx(units * per / 3600)
    flat_hours = 4.19e8 * distances_per_vector(4194304, "flat") * 384 \
        * rates["kmeans_core_s_per_unit"]["value"] / 3600
    assert flat_hours / 64 > 24
    # on 8 GPUs, within 4 h
    p = plan(PlanConfig(tokens=2e12, gpus=8, factory="IVF4194304_HNSW32,PQ64"), rates)
    assert {s["stage"]: s for s in p["stages"]}["index train"]["hours"] <= 4
