"""Sharded `certify` / `compare` / `--instances` runs give the results of the unsharded run once merged.

Shards by --shard I/N (batch schedulers) run in this process; one test runs 2 gloo processes under torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from nncert.cli.compare import main as compare_main
from nncert.verifier.instances import read_instance_rows
from tests.cli.test_certify import run, tiny_model  # noqa: F401 (the fixture)

REPO = Path(__file__).resolve().parents[2]


def _results(path: Path) -> list[tuple]:
    """(index, domain, status) of a results file, in the file's order."""
    return [(r["index"], r["domain"], r["status"]) for r in json.loads(path.read_text())["results"]]


def _base(tiny_model, out: Path) -> list:  # noqa: F811
    model, inputs, _ = tiny_model
    return [model, "--inputs", inputs, "--eps", "0.05", "--domain", "box,deeppoly", "--json", out, "--quiet",
            "--batch-size", "3"]


def test_shards_merge_into_the_unsharded_results(tiny_model, tmp_path, capsys):  # noqa: F811
    whole, sharded = tmp_path / "whole.json", tmp_path / "sharded.json"
    assert run(capsys, *_base(tiny_model, whole))[0] == 0
    statuses = {r[2] for r in _results(whole)}
    assert {"certified", "misclassified"} <= statuses and len(statuses) >= 3  # a mix worth merging

    code, out, err = run(capsys, *_base(tiny_model, sharded), "--shard", "1/2")
    assert code == 0 and out == "" and "shard 1/2 done" in err
    assert not sharded.exists()
    assert {r[0] for r in _results(sharded.with_name("sharded.json.shard-1-of-2"))} == {1, 3, 5, 7}
    code, _, err = run(capsys, *_base(tiny_model, sharded), "--merge")
    assert code == 2 and "8 of 16 results are missing" in err and len(err.strip().splitlines()) == 1

    code, out, err = run(capsys, *_base(tiny_model, sharded), "--shard", "0/2")  # the last shard merges
    assert code == 0 and "certified" in out, err
    assert _results(sharded) == sorted(_results(whole), key=lambda r: (r[0], ["box", "deeppoly"].index(r[1])))
    merged = json.loads(sharded.read_text())
    assert [s["shard"] for s in merged["meta"]["shards"]] == ["0/2", "1/2"]
    assert all(s["command"] and s["versions"]["torch"] and s["host"] for s in merged["meta"]["shards"])
    assert merged["summary"] == {d: {**s, "mean_time_s": merged["summary"][d]["mean_time_s"],
                                     "total_time_s": merged["summary"][d]["total_time_s"]}
                                 for d, s in json.loads(whole.read_text())["summary"].items()}
    first = json.loads(sharded.read_text())["results"]
    assert run(capsys, *_base(tiny_model, sharded), "--merge")[0] == 0  # merging again is harmless
    assert json.loads(sharded.read_text())["results"] == first


def test_resume_with_another_shard_count_skips_what_any_shard_finished(tiny_model, tmp_path, capsys):  # noqa: F811
    whole, sharded = tmp_path / "whole.json", tmp_path / "sharded.json"
    assert run(capsys, *_base(tiny_model, whole))[0] == 0
    assert run(capsys, *_base(tiny_model, sharded), "--shard", "0/3")[0] == 0  # samples 0, 3, 6; then stopped
    for i in range(2):
        assert run(capsys, *_base(tiny_model, sharded), "--shard", f"{i}/2", "--resume")[0] == 0
    new_rows = {r[0] for i in range(2) for r in _results(sharded.with_name(f"sharded.json.shard-{i}-of-2"))}
    assert new_rows == {1, 2, 4, 5, 7}  # 0, 3 and 6 were not certified again
    assert sorted(_results(sharded)) == sorted(_results(whole))


def test_resume_in_one_process_counts_the_shards_work(tiny_model, tmp_path, capsys):  # noqa: F811
    whole, sharded = tmp_path / "whole.json", tmp_path / "sharded.json"
    assert run(capsys, *_base(tiny_model, whole))[0] == 0
    assert run(capsys, *_base(tiny_model, sharded), "--shard", "1/3")[0] == 0  # samples 1, 4, 7
    code, out, err = run(capsys, *_base(tiny_model, sharded), "--resume")
    assert code == 0 and "results written to" in out, err
    assert {r[0] for r in _results(sharded.with_name("sharded.json.shard-0-of-1"))} == {0, 2, 3, 5, 6}
    assert sorted(_results(sharded)) == sorted(_results(whole))


def test_shard_errors_are_one_line(tiny_model, tmp_path, capsys):  # noqa: F811
    model, inputs, _ = tiny_model
    for args, message in [(["--shard", "2/2", "--json", tmp_path / "r.json"], "argument --shard: expected I/N"),
                          (["--shard", "0/2"], "need --json"),
                          (["--shard", "0/2", "--merge", "--json", tmp_path / "r.json"], "--merge runs alone")]:
        code, _, err = run(capsys, model, "--inputs", inputs, "--eps", "0.05", "--quiet", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_torchrun_ranks_certify_shards_and_rank_0_merges(tiny_model, tmp_path, capsys):  # noqa: F811
    whole, parallel = tmp_path / "whole.json", tmp_path / "parallel.json"
    assert run(capsys, *_base(tiny_model, whole))[0] == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "nncert.cli.certify", "--", *map(str, _base(tiny_model, parallel)), "--threads", "1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results written to") == 1  # rank 0 alone
    assert sorted(_results(parallel)) == sorted(_results(whole))
    assert {s["shard"] for s in json.loads(parallel.read_text())["meta"]["shards"]} == {"0/2", "1/2"}


def _instances(tiny_model, folder: Path) -> Path:  # noqa: F811
    """Four VNN-LIB robustness properties of the tiny model, radii from certified to falsified."""
    model, _, torch_model = tiny_model
    rows = []
    for k, eps in enumerate((0.001, 0.3, 0.002, 0.5)):
        x = torch.rand(32, generator=torch.Generator().manual_seed(k)) * 0.5 + 0.25
        label = int(torch_model(x.reshape(1, 2, 4, 4)).argmax())
        lines = [f"(declare-const X_{i} Real)" for i in range(32)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
        lines += [f"(assert (>= X_{i} {float(v) - eps}))\n(assert (<= X_{i} {float(v) + eps}))"
                  for i, v in enumerate(x)]
        lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(3) if j != label) + "))")
        (folder / f"p{k}.vnnlib").write_text("\n".join(lines))
        rows.append(f"{model},p{k}.vnnlib,10\n")
    (folder / "instances.csv").write_text("".join(rows))
    return folder / "instances.csv"


def test_instances_shards_merge_into_the_unsharded_csv(tiny_model, tmp_path, capsys):  # noqa: F811
    csv = _instances(tiny_model, tmp_path)
    base = ["--instances", csv, "--domain", "box,deeppoly", "--quiet"]
    assert run(capsys, *base, "--out", tmp_path / "whole.csv")[0] == 0
    assert run(capsys, *base, "--out", tmp_path / "sharded.csv", "--shard", "0/2")[0] == 0
    code, out, err = run(capsys, *base, "--out", tmp_path / "sharded.csv", "--shard", "1/2")
    assert code == 0 and "unsat" in out, err

    def rows(name):
        return [(r["vnnlib"], r["domain"], r["status"]) for r in read_instance_rows(tmp_path / name)]

    assert rows("sharded.csv") == rows("whole.csv")
    assert {r[2] for r in rows("whole.csv")} >= {"certified", "falsified"}
    header = '# shards: ["sharded.csv.shard-0-of-2", "sharded.csv.shard-1-of-2"]'
    assert header in (tmp_path / "sharded.csv").read_text()


def test_compare_shards_give_the_unsharded_comparison(tiny_model, tmp_path, capsys):  # noqa: F811
    model, inputs, _ = tiny_model
    base = [model, "--inputs", inputs, "--eps", "0.02,0.05", "--domain", "box,deeppoly", "--quiet"]

    def compare(*args):
        code = compare_main([str(a) for a in [*base, *args]])
        return code, capsys.readouterr()

    assert compare("--out", tmp_path / "whole")[0] == 0
    code, output = compare("--out", tmp_path / "sharded", "--shard", "0/2")
    assert code == 0 and "shard 0/2 done" in output.err and not (tmp_path / "sharded" / "results.json").exists()
    assert compare("--out", tmp_path / "sharded", "--shard", "1/2")[0] == 0

    def rows(name):
        return [{k: v for k, v in r.items() if k != "mean_time_s"}
                for r in json.loads((tmp_path / name / "results.json").read_text())["rows"]]

    assert rows("sharded") == rows("whole")
    assert (tmp_path / "sharded" / "plot.png").exists()
