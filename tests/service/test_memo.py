"""The runtime's bounded memo, alone and in a real server: entries and bytes stay within the
configured budget whatever values requests carry, and lookups are counted in /metrics."""

from __future__ import annotations

import re
from pathlib import Path

from service.memo import Memo, MemoStats
from tests.service.conftest import CONTEXT, start_server, stop_server


def test_memo_evicts_the_least_recently_used_beyond_its_entries_or_bytes() -> None:
    memo: Memo[int] = Memo(max_entries=3, max_bytes=100)
    for i in range(5):
        memo.put(i, i * 10, 10)
    assert memo.stats() == MemoStats(hits=0, misses=0, entries=3, bytes=30)
    assert memo.get(0) is None and memo.get(2) == 20
    memo.put("big", 1, 90)
    assert memo.stats().entries == 2 and memo.stats().bytes == 100
    assert memo.get(3) is None and memo.get(4) is None
    assert memo.get(2) == 20 and memo.get("big") == 1
    memo.put("too big", 1, 101)
    assert memo.get("too big") is None
    assert (memo.stats().hits, memo.stats().misses) == (3, 4)


def test_a_memo_of_zero_entries_keeps_nothing() -> None:
    memo: Memo[int] = Memo(max_entries=0, max_bytes=1000)
    memo.put("a", 1, 1)
    assert memo.get("a") is None and memo.stats().entries == 0


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert found, f"{name}{{{wanted}}} not in /metrics"
    return float(found.group(1))


def test_context_values_of_many_requests_stay_within_the_cache_budget(
    models_dir: Path, tmp_path: Path
) -> None:
    server = start_server(
        models_dir, tmp_path, AFM_VALUE_CACHE_ENTRIES="40", AFM_VALUE_CACHE_BYTES="100000"
    )
    try:
        with server.client() as afm:
            for i in range(120):
                context = {**CONTEXT, "user": f"visitor-{i:04d}" + "x" * 900}
                assert len(afm.rank(context, [{"item": "1"}])["scores"]) == 1
            text = afm.metrics()
    finally:
        stop_server(server)
    assert metric(text, "afm_cache_entries", cache="values") <= 40
    assert metric(text, "afm_cache_bytes", cache="values") <= 100000
    assert metric(text, "afm_cache_lookups_total", cache="values", result="miss") >= 120
    assert metric(text, "afm_cache_lookups_total", cache="values", result="hit") >= 119 * 9
    assert metric(text, "afm_cache_lookups_total", cache="splits", result="hit") >= 119


def test_a_disabled_value_cache_still_answers(models_dir: Path, tmp_path: Path) -> None:
    server = start_server(models_dir, tmp_path, AFM_VALUE_CACHE_ENTRIES="0")
    try:
        with server.client() as afm:
            first = afm.rank(CONTEXT, [{"item": "1"}])["scores"]
            assert afm.rank(CONTEXT, [{"item": "1"}])["scores"] == first
            assert metric(afm.metrics(), "afm_cache_entries", cache="values") == 0
    finally:
        stop_server(server)
