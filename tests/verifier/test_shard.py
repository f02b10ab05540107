"""Shards: the round-robin split, shard file names, and merging rows in the unsharded run's order."""

from __future__ import annotations

import pytest

from nncert.verifier.results import ResultsFile
from nncert.verifier.shard import Shard, ShardsIncomplete, merge_results, shard_files
from nncert.verifier.spec import SpecError


def test_shards_partition_the_items_round_robin():
    items = list(range(11))
    shards = [Shard(i, 3) for i in range(3)]
    parts = [shard.take(items) for shard in shards]
    assert parts[1] == [1, 4, 7, 10]
    assert sorted(x for part in parts for x in part) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_parse_rejects_invalid_shards(text):
    with pytest.raises(SpecError, match="--shard"):
        Shard.parse(text)


def test_parse_and_paths(tmp_path):
    shard = Shard.parse(" 1 / 4 ")
    assert (shard.index, shard.count, str(shard)) == (1, 4, "1/4")
    out = tmp_path / "r.json"
    assert shard.path(out) == tmp_path / "r.json.shard-1-of-4"
    for name in ("r.json.shard-1-of-4", "r.json.shard-0-of-4", "r.json.shard-10-of-12", "r.json.shard-0-of-4.tmp",
                 "rr.json.shard-0-of-4", "r.json"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in shard_files(out)] == ["r.json.shard-0-of-4", "r.json.shard-1-of-4",
                                                  "r.json.shard-10-of-12"]


def _rows(indices, domains=("box", "deeppoly"), status="certified"):
    return [{"index": i, "label": 0, "predicted": 0, "domain": d, "status": status, "time_s": 1.0}
            for i in indices for d in domains]


def test_merge_orders_rows_like_the_run_and_needs_every_sample(tmp_path):
    out, domains = tmp_path / "r.json", ["box", "deeppoly"]
    meta = {"command": "certify", "eps": 0.1, "seed": 0}
    ResultsFile(Shard(1, 2).path(out), {**meta, "shard": "1/2"}, domains, _rows([5, 3])).write()
    with pytest.raises(ShardsIncomplete, match="4 of 8 results are missing"):
        merge_results(out, meta, domains, [2, 3, 4, 5], include_out=False)
    # shard 0 with a partly done sample (4 lacks deeppoly): partly done samples do not count
    ResultsFile(Shard(0, 2).path(out), {**meta, "shard": "0/2"}, domains,
                _rows([2]) + _rows([4], ["box"])).write()
    with pytest.raises(ShardsIncomplete, match="2 of 8"):
        merge_results(out, meta, domains, [2, 3, 4, 5], include_out=False)
    ResultsFile(Shard(0, 2).path(out), {**meta, "shard": "0/2"}, domains, _rows([4, 2])).write()
    merged = merge_results(out, meta, domains, [2, 3, 4, 5], include_out=False)
    assert [(r["index"], r["domain"]) for r in merged.rows] == [(i, d) for i in (2, 3, 4, 5) for d in domains]
    assert [s["shard"] for s in merged.meta["shards"]] == ["0/2", "1/2"]
    assert "shard" not in merged.meta and out.exists()


def test_merge_ignores_shard_files_of_another_setup(tmp_path):
    out, domains = tmp_path / "r.json", ["box"]
    meta = {"command": "certify", "eps": 0.1}
    ResultsFile(Shard(0, 1).path(out), {**meta, "eps": 0.2}, domains, _rows([0], domains)).write()
    with pytest.raises(ShardsIncomplete, match="ignored .*r.json.shard-0-of-1"):
        merge_results(out, meta, domains, [0], include_out=False)
