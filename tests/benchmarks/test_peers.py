"""The peers harness's own logic (benchmarks/peers.py), without any peer installed: which configuration file,
how it is changed to run here, which instances, and the comparison with the reference answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nncert.verifier.instances import read_instances

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_benchmark(folder: Path, rows: list[tuple[str, str]], reference: dict | None = None) -> Path:
    """A benchmark folder: instances.csv with ``rows`` (onnx, vnnlib names) and optionally reference answers."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.csv").write_text("".join(f"onnx/{o},vnnlib/{v},116\n" for o, v in rows))
    if reference is not None:
        lines = ["onnx,vnnlib,timeout_s,best_known"]
        lines += [f"onnx/{o},vnnlib/{v},116,{answer}" for (o, v), answer in reference.items()]
        (folder / "reference_results.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_config_file_by_benchmark_name_without_its_year(peers, tmp_path):
    assert peers.abcrown_config_file(tmp_path / "2022_oval21", None) == "vnncomp22/oval22.yaml"
    assert peers.abcrown_config_file(tmp_path / "acasxu", None) == "vnncomp21/acasxu.yaml"
    assert peers.abcrown_config_file(tmp_path / "sri_resnet_b_2022", None) == "vnncomp22/resnet_B.yaml"
    assert peers.abcrown_config_file(tmp_path / "2022_oval21", "mine.yaml") == "mine.yaml"
    with pytest.raises(SystemExit, match="--abcrown-config"):
        peers.abcrown_config_file(tmp_path / "2023_unknown_bench", None)


def test_benchmark_folder_is_a_path_or_a_name_under_vnncomp(peers, tmp_path):
    bench = write_benchmark(tmp_path / "vnncomp" / "acasxu", [("a.onnx", "p.vnnlib")])
    assert peers.benchmark_folder("acasxu", tmp_path) == bench
    assert peers.benchmark_folder(str(bench), tmp_path / "elsewhere") == bench
    with pytest.raises(SystemExit, match="instances.csv"):
        peers.benchmark_folder("oval21", tmp_path)


def test_config_runs_here_and_keeps_the_peers_own_settings(peers, tmp_path):
    relu_split = {"general": {"complete_verifier": "bab-refine", "conv_mode": "matrix"},
                  "solver": {"batch_size": 2000, "beta-crown": {"lr_beta": 0.01}},
                  "bab": {"cut": {"enabled": True, "cplex_cuts": True}, "branching": {"candidates": 10}},
                  "model": {"input_shape": [-1, 1, 28, 28]}}
    config = peers.abcrown_config(relu_split, tmp_path, 7, 30.0, tmp_path / "r.pkl", (784,), 1024, None)
    assert config["general"] == {"complete_verifier": "bab", "conv_mode": "matrix", "device": "cpu",
                                 "root_path": str(tmp_path), "csv_name": "instances.csv",
                                 "results_file": str(tmp_path / "r.pkl")}
    assert config["data"] == {"start": 0, "end": 7}
    assert config["bab"]["timeout"] == config["bab"]["override_timeout"] == 30.0
    assert not config["bab"]["cut"]["enabled"] and not config["bab"]["cut"]["cplex_cuts"]
    assert config["bab"]["branching"] == {"candidates": 10} and config["solver"]["beta-crown"] == {"lr_beta": 0.01}
    assert config["solver"]["batch_size"] == 1024
    assert config["model"]["input_shape"] == [-1, 1, 28, 28]  # the configuration's own shape wins
    assert "attack" not in config
    assert relu_split["general"]["complete_verifier"] == "bab-refine"  # the peer's file is not changed

    input_split = {"solver": {"batch_size": 16384}, "bab": {"branching": {"input_split": {"enable": True}}},
                   "attack": {"pgd_restarts": 10000}}
    config = peers.abcrown_config(input_split, tmp_path, 3, 10.0, tmp_path / "r.pkl", (1, 1, 5), 1024, 50)
    assert config["solver"]["batch_size"] == 1024
    assert config["model"]["input_shape"] == [-1, 1, 1, 5]
    assert config["attack"]["pgd_restarts"] == 50


def test_instance_selection(peers, tmp_path):
    rows = [(f"n{i}.onnx", f"p{j}.vnnlib") for i in range(3) for j in range(4)]
    instances = read_instances(write_benchmark(tmp_path, rows) / "instances.csv")
    assert peers.select_instances(instances) == instances
    assert peers.select_instances(instances, 2, 3) == instances[2:5]
    assert [i.name for i in peers.select_instances(instances, only="n1__p0,n0__p3")] == ["n0__p3", "n1__p0"]
    with pytest.raises(SystemExit, match="n0__p0"):
        peers.select_instances(instances, 4, only="n0__p0")

    hard = {("n2.onnx", "p1.vnnlib"), ("n0.onnx", "p0.vnnlib")}
    assert [i.name for i in peers.select_instances(instances, hard=hard)] == ["n0__p0", "n2__p1"]
    picked = peers.select_instances(instances, hard=hard, sample=4, seed=3)
    assert len(picked) == 6 and {"n0__p0", "n2__p1"} <= {i.name for i in picked}
    assert picked == sorted(picked, key=instances.index)  # in csv order
    assert picked == peers.select_instances(instances, hard=hard, sample=4, seed=3)  # seeded
    assert picked != peers.select_instances(instances, hard=hard, sample=4, seed=4)
    assert len(peers.select_instances(instances, sample=5)) == 5


def test_undecided_or_slow_rows_of_our_results(peers, tmp_path):
    results = tmp_path / "ours.csv"
    results.write_text("# command: certify ...\nonnx,vnnlib,domain,status,result,time_s\n"
                       "/b/onnx/a.onnx,/b/vnnlib/p1.vnnlib,mnbab,certified,unsat,0.5\n"
                       "/b/onnx/a.onnx,/b/vnnlib/p2.vnnlib,mnbab,certified,unsat,7.5\n"
                       "/b/onnx/b.onnx,/b/vnnlib/p1.vnnlib,mnbab,timeout,timeout,10.1\n"
                       "/b/onnx/b.onnx,/b/vnnlib/p2.vnnlib,mnbab,falsified,sat,0.1\n")
    assert peers.undecided_or_slow(results, 4.0) == {("a.onnx", "p2.vnnlib"), ("b.onnx", "p1.vnnlib")}


def test_linked_benchmark_gives_both_tools_the_shared_timeout(peers, tmp_path):
    bench = write_benchmark(tmp_path / "bench", [("a.onnx", "p.vnnlib"), ("b.onnx", "p.vnnlib")])
    for name in ("onnx/a.onnx", "onnx/b.onnx", "vnnlib/p.vnnlib"):
        (bench / name).parent.mkdir(exist_ok=True)
        (bench / name).write_text(name)
    instances = read_instances(bench / "instances.csv")
    linked = read_instances(peers.linked_benchmark(instances, 30.0, tmp_path / "work") / "instances.csv")
    assert [i.name for i in linked] == [i.name for i in instances] and {i.timeout for i in linked} == {30.0}
    assert (linked[1].onnx.read_text(), linked[1].vnnlib.read_text()) == ("onnx/b.onnx", "vnnlib/p.vnnlib")


def test_answers_against_the_reference(peers, tmp_path):
    pairs = [("a.onnx", "p1.vnnlib"), ("a.onnx", "p2.vnnlib"), ("a.onnx", "p3.vnnlib")]
    bench = write_benchmark(tmp_path, pairs, {pairs[0]: "unsat", pairs[1]: "sat"})
    instances = read_instances(bench / "instances.csv")
    ours = [{"result": "unsat", "time_s": 1.0}, {"result": "timeout", "time_s": 9.0}, {"result": "sat", "time_s": 2.0}]
    theirs = [{"result": "sat", "time_s": 1.0}, {"result": "sat", "time_s": 3.0}, {"result": "unsat", "time_s": 2.0}]
    rows, contradictions = peers.compare_answers(instances, bench, ours, theirs)
    assert [r["reference"] for r in rows] == ["unsat", "sat", "?"]
    assert contradictions == ["abcrown a__p1: sat, reference unsat"]
    data = {"benchmark": "b", "start": 0, "num": None, "timeout_s": 10.0, "abcrown_config": {},
            "ours": peers.tally(ours, 12.0), "abcrown": peers.tally(theirs, 6.0), "rows": rows,
            "contradictions": contradictions}
    table = "\n".join(peers.complete_table(data))
    assert "| nncert mnbab | 3 | 1 | 1 | 1 | 0 | 2.00 | 12.0 | 12 |" in table
    assert "| alpha-beta-CROWN | 3 | 1 | 2 | 0 | 0 | 2.00 | 6.0 | 6 |" in table
    assert "Decided by alpha-beta-CROWN only: a__p2." in table
    assert "abcrown a__p1: sat, reference unsat" in table


def test_answer_of_the_peers_status(peers):
    assert [peers.abcrown_answer(s) for s in ("safe", "safe-incomplete", "unsafe-pgd", "unknown", "timed out")] == [
        "unsat", "unsat", "sat", "timeout", "timeout"]
