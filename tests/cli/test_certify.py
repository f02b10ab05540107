"""`certify` end to end: demo, --inputs, --vnnlib, JSON schema, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from nncert.cli.certify import default_max_memory, demo_files, main
from nncert.domains.from_torch import Normalize
from nncert.verifier.instances import read_answer
from nncert.verifier.onnx_import import load_onnx
from nncert.verifier.spec import PropertyBatch
from nncert.verifier.vnnlib import parse_vnnlib
from tests.interrupt import interrupt_midway
from tests.paths import vnncomp_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An MLP on 2x4x4 inputs with normalisation inside, exported to ONNX, plus 8 samples."""
    torch.manual_seed(0)
    model = nn.Sequential(Normalize([0.5, 0.4], [0.3, 0.2]), nn.Flatten(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 3)).eval()
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "tiny.onnx"
    torch.onnx.export(model, torch.zeros(1, 2, 4, 4), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    x = torch.rand(8, 2, 4, 4)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 3  # one misclassified sample
    np.savez(folder / "inputs.npz", x=x.numpy(), y=y.numpy())
    return path, folder / "inputs.npz", model


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inputs_all_domains_and_json_schema(tiny_model, tmp_path, capsys):
    model, inputs, _ = tiny_model
    out_json = tmp_path / "r.json"
    code, out, err = run(capsys, model, "--inputs", inputs, "--eps", "1/255", "--domain", "box,deeppoly,mnbab",
                         "--json", out_json, "--quiet")
    assert code == 0, err
    assert "deeppoly" in out and "mnbab" in out
    data = json.loads(out_json.read_text())
    assert set(data) == {"meta", "results", "summary"}
    assert {"command", "versions", "seed", "model_sha256", "eps"} <= set(data["meta"])
    assert len(data["results"]) == 3 * 8
    for row in data["results"]:
        assert set(row) == {"index", "label", "predicted", "domain", "status", "time_s"}
        assert row["status"] in ("certified", "falsified", "unknown", "timeout", "misclassified")
    assert [r["status"] for r in data["results"] if r["index"] == 0] == ["misclassified"] * 3
    summary = data["summary"]
    assert set(summary) == {"box", "deeppoly", "mnbab"}
    for s in summary.values():
        assert {"n", "natural", "certified", "falsified", "unknown", "timeout", "mean_time_s"} <= set(s)
        assert s["n"] == 8 and s["natural"] == 7
    assert summary["box"]["certified"] <= summary["deeppoly"]["certified"] <= summary["mnbab"]["certified"]
    assert summary["mnbab"]["certified"] + summary["mnbab"]["falsified"] == 7  # complete on a tiny net


def test_maxpool_sigmoid_tanh_leaky_relu_network_gets_a_verdict_in_every_domain(tmp_path, capsys):
    """A conv net with MaxPool, LeakyReLU, Tanh and Sigmoid imports and every domain returns a row per sample,
    ReLU and input splitting alike; none certifies a sample that another falsifies."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                          nn.ReLU(), nn.MaxPool2d(2, stride=1, padding=1), nn.Flatten(), nn.Linear(4 * 3 * 3, 8),
                          nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3)).eval()
    path = tmp_path / "nonrelu.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    x = torch.rand(6, 1, 8, 8)
    np.savez(tmp_path / "inputs.npz", x=x.numpy(), y=model(x).argmax(1).numpy())
    statuses = {}
    for split in ("relu", "input"):
        out_json = tmp_path / f"{split}.json"
        code, _, err = run(capsys, path, "--inputs", tmp_path / "inputs.npz", "--eps", "0.05",
                           "--domain", "box,deeppoly,mnbab", "--timeout", "5", "--bab-split", split, "--json",
                           out_json, "--quiet", "--threads", "1")
        assert code == 0, err
        rows = json.loads(out_json.read_text())["results"]
        assert len(rows) == 18 and all(r["status"] in ("certified", "falsified", "unknown", "timeout") for r in rows)
        for r in rows:
            statuses.setdefault(r["index"], set()).add(r["status"])
    assert all(not {"certified", "falsified"} <= s for s in statuses.values())
    assert any("certified" in s for s in statuses.values())


def test_max_memory_reaches_branch_and_bound(tiny_model, tmp_path, capsys):
    """--max-memory, --max-queue and --branching-candidates land in BaB's config (recorded in the results);
    the run completes."""
    model, inputs, _ = tiny_model
    out_json = tmp_path / "r.json"
    code, _, err = run(capsys, model, "--inputs", inputs, "--eps", "2/255", "--domain", "mnbab", "--max-memory",
                       "1.5K", "--max-queue", "100", "--branching-candidates", "2", "--json", out_json, "--quiet")
    assert code == 0, err
    data = json.loads(out_json.read_text())
    bab = data["meta"]["options"]["mnbab"]["bab_config"]
    assert bab["max_queue"] == 100 and bab["max_memory"] == 1536 and bab["fsb_candidates"] == 2
    assert len(data["results"]) == 8


def test_max_memory_defaults_to_half_the_available_memory_in_every_stage(tiny_model, tmp_path, capsys):
    model, inputs, _ = tiny_model
    out_json = tmp_path / "r.json"
    code, _, err = run(capsys, model, "--inputs", inputs, "--eps", "2/255", "--domain", "mnbab", "--num", "2",
                       "--json", out_json, "--quiet")
    assert code == 0, err
    mnbab = json.loads(out_json.read_text())["meta"]["options"]["mnbab"]
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < mnbab["max_memory"] <= physical // 2
    assert abs(mnbab["max_memory"] - default_max_memory()) < physical // 10  # the memory available moves a little
    bab = mnbab["bab_config"]
    assert bab["max_memory"] == bab["batch_memory"] == mnbab["input_bab_config"]["max_memory"] == mnbab["max_memory"]
    assert mnbab["intermediate_bab_config"]["max_memory"] <= mnbab["max_memory"]


def test_large_eps_falsifies_with_checked_counterexamples(tiny_model, capsys, tmp_path):
    model, inputs, _ = tiny_model
    code, _, err = run(capsys, model, "--inputs", inputs, "--eps", "0.5", "--domain", "box", "--json",
                       tmp_path / "r.json", "--quiet")
    assert code == 0, err
    statuses = [r["status"] for r in json.loads((tmp_path / "r.json").read_text())["results"]]
    assert "falsified" in statuses and "certified" not in statuses


def test_stdout_is_only_the_table(tiny_model):
    """Solvers' banners (HiGHS prints one from C++) must not reach stdout, which users parse."""
    model, inputs, _ = tiny_model
    out = subprocess.run([sys.executable, "-m", "nncert.cli.certify", str(model), "--inputs", str(inputs),
                          "--eps", "1/255", "--domain", "milp", "--num", "3", "--quiet"], capture_output=True,
                         text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.startswith("domain ") and "HiGHS" not in out, out


def test_vnnlib_mode_one_row_per_property(tiny_model, tmp_path, capsys):
    model, _, torch_model = tiny_model
    x = torch.rand(32) * 0.5 + 0.25
    label = int(torch_model(x.reshape(1, 2, 4, 4)).argmax())
    others = [j for j in range(3) if j != label]
    lines = [f"(declare-const X_{i} Real)" for i in range(32)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
    lines += [f"(assert (>= X_{i} {float(v) - 0.001}))\n(assert (<= X_{i} {float(v) + 0.001}))"
              for i, v in enumerate(x)]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in others) + "))")
    spec = tmp_path / "p.vnnlib"
    spec.write_text("\n".join(lines))
    code, out, err = run(capsys, model, "--vnnlib", spec, "--domain", "deeppoly,mnbab", "--json",
                         tmp_path / "r.json", "--quiet")
    assert code == 0, err
    rows = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["index"], r["domain"], r["status"]) for r in rows] == [(0, "deeppoly", "certified"),
                                                                     (0, "mnbab", "certified")]


def test_bundled_demo_runs(capsys, tmp_path):
    code, out, err = run(capsys, "--num", "5", "--domain", "box,deeppoly", "--json", tmp_path / "d.json", "--quiet")
    assert code == 0, err
    single = json.loads((tmp_path / "d.json").read_text())
    assert single["summary"]["deeppoly"]["n"] == 5 and single["meta"]["dtype"] == "float32"
    code, out, err = run(capsys, "--num", "5", "--domain", "box,deeppoly", "--json", tmp_path / "d64.json", "--quiet",
                         "--float64")
    assert code == 0, err
    double = json.loads((tmp_path / "d64.json").read_text())
    assert double["meta"]["dtype"] == "float64"
    assert [r["status"] for r in double["results"]] == [r["status"] for r in single["results"]]


def test_resume_keeps_finished_samples_and_completes_the_rest(tiny_model, tmp_path, capsys):
    model, inputs, _ = tiny_model
    out_json = tmp_path / "r.json"
    base = [model, "--inputs", inputs, "--eps", "2/255", "--domain", "deeppoly,mnbab", "--json", out_json,
            "--quiet", "--batch-size", "3"]
    assert run(capsys, *base)[0] == 0
    full = json.loads(out_json.read_text())
    # as if interrupted: samples 0-4 done in both domains, sample 5 only in deeppoly, 6-7 not at all
    interrupted = [r for r in full["results"] if r["index"] < 5 or (r["index"] == 5 and r["domain"] == "deeppoly")]
    marked = [{**r, "time_s": 123.0} if r["index"] < 5 else r for r in interrupted]  # recognisable if kept
    out_json.write_text(json.dumps({**full, "results": marked}))
    code, _, err = run(capsys, *base, "--resume")
    assert code == 0, err
    resumed = json.loads(out_json.read_text())
    key = sorted((r["index"], r["domain"], r["status"]) for r in resumed["results"])
    assert key == sorted((r["index"], r["domain"], r["status"]) for r in full["results"])
    assert sum(r["time_s"] == 123.0 for r in resumed["results"]) == 10  # finished samples were not recomputed
    assert resumed["meta"]["resumed_from"]
    # a different set-up is refused rather than mixed into the file
    code, _, err = run(capsys, *[a if a != "2/255" else "3/255" for a in base], "--resume")
    assert code == 2 and "eps" in err and len(err.strip().splitlines()) == 1


def test_instances_runner_on_vnncomp_files(tmp_path, capsys):
    """A sat and an unsat MNIST property and an ACAS Xu property with two input boxes, through the CLI.

    (The ACAS Xu property holds but is beyond a short timeout of ReLU branch-and-bound: it checks that a
    disjunctive property runs to a sound answer within its timeout.)
    """
    bench = vnncomp_dir()
    if bench is None:
        pytest.skip("VNN-COMP benchmarks not found: set NNCERT_BENCHMARKS")
    mnist, acas = bench / "2022_mnist_fc", bench / "acasxu"
    rows = [(mnist / "onnx/mnist-net_256x2.onnx", mnist / "vnnlib/prop_1_0.03.vnnlib", 60),
            (acas / "onnx/ACASXU_run2a_1_1_batch_2000.onnx", acas / "vnnlib/prop_6.vnnlib", 3),
            (mnist / "onnx/mnist-net_256x2.onnx", mnist / "vnnlib/prop_0_0.03.vnnlib", 60)]
    (tmp_path / "instances.csv").write_text("".join(f"{o},{v},{t}\n" for o, v, t in rows))
    out, answers = tmp_path / "results.csv", tmp_path / "answers"
    code, stdout, err = run(capsys, "--instances", tmp_path / "instances.csv", "--domain", "mnbab", "--out", out,
                            "--vnncomp-dir", answers, "--quiet")
    assert code == 0, err
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == "onnx,vnnlib,domain,status,result,time_s,reason"
    results = [line.split(",") for line in lines[1:]]
    assert [r[4] for r in results] == ["sat", "unsat" if results[1][3] == "certified" else "timeout", "unsat"]
    assert float(results[1][5]) < 3 * 1.1  # the instance's own timeout, honoured within 10%
    assert "mnbab" in stdout and "unsat" in stdout

    answer, x, y = read_answer(answers / "mnbab" / "mnist-net_256x2__prop_1_0.03.txt")
    assert answer == "sat"
    model = load_onnx(rows[0][0])
    y_ort = model.run(x.reshape(1, *model.input_shape))[0]
    np.testing.assert_allclose(y, y_ort, rtol=1e-6, atol=1e-6)
    (prop,) = parse_vnnlib(rows[0][1])
    assert np.all(x >= prop.lower.numpy() - 1e-9) and np.all(x <= prop.upper.numpy() + 1e-9)
    margin = PropertyBatch.stack([prop]).property_margin(torch.as_tensor(y_ort, dtype=torch.float64)[None])
    assert float(margin) <= 0  # the output property is violated: a real counterexample
    assert (answers / "mnbab" / "ACASXU_run2a_1_1_batch_2000__prop_6.txt").read_text() == results[1][4] + "\n"

    # a slice of the csv
    code, _, err = run(capsys, "--instances", tmp_path / "instances.csv", "--domain", "mnbab", "--out",
                       tmp_path / "first.csv", "--quiet", "--start", "0", "--num", "1")
    assert code == 0, err
    assert len([line for line in (tmp_path / "first.csv").read_text().splitlines() if not line.startswith("#")]) == 2

    # resuming a finished run verifies nothing again
    code, _, err = run(capsys, "--instances", tmp_path / "instances.csv", "--domain", "mnbab", "--out", out,
                       "--quiet", "--resume")
    assert code == 0, err
    assert len([line for line in out.read_text().splitlines() if not line.startswith("#")]) == 4


def _unsupported_model(path, op_type="Softplus"):
    node = helper.make_node(op_type, ["x"], ["y"], name="sig0")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.mark.parametrize("case", ["missing_model", "bad_eps_fraction", "negative_eps", "unsupported_op",
                                  "shape_mismatch", "malformed_vnnlib", "unknown_domain", "no_samples",
                                  "cuda_missing", "inputs_nan", "instances_without_out", "instances_malformed",
                                  "instances_with_model", "out_without_instances", "eps_beyond_range", "not_onnx",
                                  "two_outputs", "label_out_of_range", "float_labels", "inputs_without_y",
                                  "vnnlib_undeclared", "vnnlib_empty_box", "vnnlib_size_mismatch", "zero_timeout",
                                  "zero_threads", "zero_num", "resume_without_json", "clip_inverted",
                                  "mean_wrong_count", "std_zero", "device_bogus", "eps_text",
                                  "instances_start_past_end", "max_memory_unit", "max_memory_zero",
                                  "max_queue_zero", "branching_candidates_zero", "milp_sigmoid"])
def test_bad_input_gives_one_line_and_exit_2(case, tiny_model, tmp_path, capsys):
    model, inputs, _ = tiny_model
    args = {
        "missing_model": [tmp_path / "nope.onnx", "--inputs", inputs, "--eps", "0.1"],
        "bad_eps_fraction": [model, "--inputs", inputs, "--eps", "2/0"],
        "negative_eps": [model, "--inputs", inputs, "--eps", "-1"],
        "unsupported_op": [_unsupported_model(tmp_path / "s.onnx"), "--inputs", inputs, "--eps", "0.1"],
        "milp_sigmoid": [_unsupported_model(tmp_path / "sigmoid.onnx", "Sigmoid"), "--vnnlib",
                         _vnnlib(tmp_path, "milp.vnnlib", n_inputs=3, lower=0.0, upper=1.0), "--domain", "milp",
                         "--no-attack"],
        "shape_mismatch": [model, "--inputs", _npz(tmp_path, np.zeros((2, 5), np.float32)), "--eps", "0.1"],
        "malformed_vnnlib": [model, "--vnnlib", _text(tmp_path / "m.vnnlib", "(declare-const X_0 Real")],
        "unknown_domain": [model, "--inputs", inputs, "--eps", "0.1", "--domain", "zonotope"],
        "no_samples": [model, "--eps", "0.1"],
        "cuda_missing": [model, "--inputs", inputs, "--eps", "0.1", "--device", "cuda:7"],
        "inputs_nan": [model, "--inputs", _npz(tmp_path, np.full((2, 2, 4, 4), np.nan, np.float32)), "--eps", "0.1"],
        "instances_without_out": ["--instances", _text(tmp_path / "i.csv", f"{model},{model},10\n")],
        "instances_malformed": ["--instances", _text(tmp_path / "two_columns.csv", f"{model},10\n"), "--out",
                                tmp_path / "o"],
        "instances_with_model": [model, "--instances", _text(tmp_path / "i.csv", f"{model},{model},10\n"),
                                 "--out", tmp_path / "o.csv"],
        "out_without_instances": [model, "--inputs", inputs, "--eps", "0.1", "--out", tmp_path / "o.csv"],
        "eps_beyond_range": [model, "--inputs", inputs, "--eps", "2"],
        "not_onnx": [_text(tmp_path / "n.onnx", "this is not a model"), "--inputs", inputs, "--eps", "0.1"],
        "two_outputs": [_two_output_model(tmp_path / "two.onnx"), "--inputs", inputs, "--eps", "0.1"],
        "label_out_of_range": [model, "--inputs", _npz(tmp_path, np.zeros((2, 2, 4, 4), np.float32), y=[0, 7]),
                               "--eps", "0.1"],
        "float_labels": [model, "--inputs", _npz(tmp_path, np.zeros((2, 2, 4, 4), np.float32), y=[0.0, 1.5]),
                         "--eps", "0.1"],
        "inputs_without_y": [model, "--inputs", _npz_x_only(tmp_path), "--eps", "0.1"],
        "vnnlib_undeclared": [model, "--vnnlib", _text(tmp_path / "u.vnnlib", "(assert (<= X_0 1))")],
        "vnnlib_empty_box": [model, "--vnnlib", _vnnlib(tmp_path, "empty.vnnlib", lower=0.6, upper=0.4)],
        "vnnlib_size_mismatch": [model, "--vnnlib", _vnnlib(tmp_path, "five.vnnlib", n_inputs=5)],
        "zero_timeout": [model, "--inputs", inputs, "--eps", "0.1", "--timeout", "0"],
        "zero_threads": [model, "--inputs", inputs, "--eps", "0.1", "--threads", "0"],
        "zero_num": [model, "--inputs", inputs, "--eps", "0.1", "--num", "0"],
        "resume_without_json": [model, "--inputs", inputs, "--eps", "0.1", "--resume"],
        "clip_inverted": [model, "--inputs", inputs, "--eps", "0.1", "--clip-min", "1", "--clip-max", "0"],
        "mean_wrong_count": [model, "--inputs", inputs, "--eps", "0.1", "--mean", "0.1", "0.2", "0.3"],
        "std_zero": [model, "--inputs", inputs, "--eps", "0.1", "--std", "0"],
        "device_bogus": [model, "--inputs", inputs, "--eps", "0.1", "--device", "gpu9000"],
        "eps_text": [model, "--inputs", inputs, "--eps", "tiny"],
        "instances_start_past_end": ["--instances", _text(tmp_path / "one.csv",
                                                          f"{model},{_vnnlib(tmp_path, 'ok.vnnlib')},10\n"),
                                     "--out", tmp_path / "o.csv", "--start", "5"],
        "max_memory_unit": [model, "--inputs", inputs, "--eps", "0.1", "--max-memory", "2X"],
        "max_memory_zero": [model, "--inputs", inputs, "--eps", "0.1", "--max-memory", "0G"],
        "max_queue_zero": [model, "--inputs", inputs, "--eps", "0.1", "--max-queue", "0"],
        "branching_candidates_zero": [model, "--inputs", inputs, "--eps", "0.1", "--branching-candidates", "0"],
    }[case]
    if case == "cuda_missing" and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    code, _, err = run(capsys, *args, "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("certify: error:"), err
    if case == "unsupported_op":
        assert "Softplus" in lines[0] and "sig0" in lines[0]
    if case == "milp_sigmoid":
        assert "milp" in lines[0] and "Sigmoid" in lines[0]


def test_instances_run_survives_bad_models_and_properties(tiny_model, tmp_path, capsys):
    """Every row of a benchmark mixing good instances with an unsupported op, a missing file and a malformed
    property gets a result row and a competition answer; the good ones are decided."""
    model, _, _ = tiny_model
    good = _vnnlib(tmp_path, "ok.vnnlib")
    rows = [(model, good), (_unsupported_model(tmp_path / "s.onnx"), good), (tmp_path / "gone.onnx", good),
            (model, _text(tmp_path / "m.vnnlib", "(declare-const X_0 Real")), (model, good)]
    csv = _text(tmp_path / "instances.csv", "".join(f"{o},{v},10\n" for o, v in rows))
    out, answers = tmp_path / "results.csv", tmp_path / "answers"
    code, stdout, err = run(capsys, "--instances", csv, "--domain", "deeppoly,mnbab", "--out", out, "--vnncomp-dir",
                            answers, "--quiet", "--threads", "1")
    assert code == 0 and "Traceback" not in err, err
    lines = [line.split(",") for line in out.read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == ["onnx", "vnnlib", "domain", "status", "result", "time_s", "reason"]
    mnbab = [line for line in lines[1:] if line[2] == "mnbab"]
    assert len(lines) == 1 + 2 * len(rows) and len(mnbab) == len(rows)
    assert [line[3] for line in mnbab[1:4]] == ["error"] * 3 and all(line[4] == "unknown" for line in mnbab[1:4])
    assert "Softplus" in mnbab[1][6] and "not found" in mnbab[2][6] and mnbab[3][6]
    assert mnbab[0][3] in ("certified", "falsified") and mnbab[4][3] == mnbab[0][3]
    assert (answers / "mnbab" / "s__ok.txt").read_text() == "unknown\n"
    assert (answers / "mnbab" / "tiny__m.txt").read_text() == "unknown\n"
    assert len([line for line in err.splitlines() if ": error: " in line]) == 3, err


def test_a_sample_on_which_a_domain_raises_gets_an_error_row_and_the_others_run(tiny_model, tmp_path, capsys,
                                                                               monkeypatch):
    from nncert.verifier import registry

    model, inputs, _ = tiny_model
    bad = float(np.load(inputs)["x"][3].reshape(-1)[0])
    verify = registry.DOMAINS["deeppoly"]

    def broken_on_sample_3(net, batch, deadline, options):  # its box holds the sample's first input value
        inside = (batch.lower.flatten(1)[:, 0] <= bad) & (bad <= batch.upper.flatten(1)[:, 0])
        if bool(inside.any()):
            raise RuntimeError("out of memory\ndetails")
        return verify(net, batch, deadline, options)

    monkeypatch.setitem(registry.DOMAINS, "deeppoly", broken_on_sample_3)
    code, stdout, err = run(capsys, model, "--inputs", inputs, "--eps", "1e-4", "--domain", "box,deeppoly", "--num",
                            "6", "--json", tmp_path / "r.json", "--quiet", "--no-attack")
    assert code == 0, err
    rows = {(r["index"], r["domain"]): r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert len(rows) == 12
    assert rows[(3, "deeppoly")]["status"] == "error"
    assert rows[(3, "deeppoly")]["reason"] == "RuntimeError: out of memory"
    others = [rows[(k, "deeppoly")] for k in (1, 2, 4, 5)]  # sample 0 is misclassified
    assert all(r["status"] in ("certified", "unknown") and "reason" not in r for r in others), others
    assert rows[(3, "box")]["status"] in ("certified", "unknown")
    assert "error" in stdout.splitlines()[0]
    assert err.count("certify: deeppoly: error: RuntimeError: out of memory") == 1, err


def _npz(folder, x, y=None):
    path = folder / "bad.npz"
    np.savez(path, x=x, y=np.zeros(len(x), np.int64) if y is None else np.array(y))
    return path


def _npz_x_only(folder):
    path = folder / "x_only.npz"
    np.savez(path, x=np.zeros((2, 2, 4, 4), np.float32))
    return path


def _vnnlib(folder, name, n_inputs=32, lower=0.4, upper=0.6):
    lines = [f"(declare-const X_{i} Real)" for i in range(n_inputs)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
    lines += [f"(assert (>= X_{i} {lower}))\n(assert (<= X_{i} {upper}))" for i in range(n_inputs)]
    lines.append("(assert (>= Y_1 Y_0))")
    return _text(folder / name, "\n".join(lines))


def _two_output_model(path):
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 32])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _text(path, text):
    path.write_text(text)
    return path


def test_sigterm_keeps_finished_results_and_resume_completes(tmp_path, capsys):
    """A run killed with SIGTERM midway exits 130 with a valid results file, and --resume finishes it."""
    out_json = tmp_path / "r.json"
    command = ["nncert.cli.certify", "--num", "40", "--domain", "box,mnbab", "--batch-size", "4", "--json", out_json,
               "--quiet", "--threads", "1"]
    code, err = interrupt_midway(command, lambda: len(json.loads(out_json.read_text())["results"]) >= 6,
                                 signal.SIGTERM)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    partial = json.loads(out_json.read_text())["results"]
    assert 6 <= len(partial) < 80

    code, _, err = run(capsys, *command[1:], "--resume")
    assert code == 0, err
    rows = json.loads(out_json.read_text())["results"]
    expected = sorted((i, d) for i in range(40) for d in ("box", "mnbab"))
    assert sorted((r["index"], r["domain"]) for r in rows) == expected


def _robustness_vnnlib(x: np.ndarray, label: int, eps: float, n_outputs: int) -> str:
    """The VNN-LIB property 'the label wins on the L-inf ball of x' (its negation asserted, as VNN-COMP writes it)."""
    flat = x.ravel()
    lines = [f"(declare-const X_{i} Real)" for i in range(flat.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_outputs)]
    lines += [f"(assert (>= X_{i} {max(v - eps, 0.0)!r}))\n(assert (<= X_{i} {min(v + eps, 1.0)!r}))"
              for i, v in enumerate(flat.astype(float).tolist())]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_outputs) if j != label)
                 + "))")
    return "\n".join(lines) + "\n"


def _demo_instances(folder: Path, n: int, eps: float = 0.05) -> Path:
    """An instances.csv of n robustness properties of the bundled demo model on its bundled samples."""
    model, inputs = demo_files()
    data = np.load(inputs)
    rows = []
    for k in range(n):
        (folder / f"prop_{k}.vnnlib").write_text(_robustness_vnnlib(data["x"][k], int(data["y"][k]), eps, 10))
        rows.append(f"{model},prop_{k}.vnnlib,60\n")
    (folder / "instances.csv").write_text("".join(rows))
    return folder / "instances.csv"


def _instance_rows(path: Path) -> list[tuple[str, ...]]:
    """(onnx, vnnlib, domain, status, result) of a results CSV, without times."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return [tuple(line.split(",")[:5]) for line in lines[1:]]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_instances_run_resumes_to_the_uninterrupted_results(tmp_path, capsys, sig):
    """certify --instances killed midway exits 130 with its finished rows; --resume completes the same rows."""
    csv = _demo_instances(tmp_path, 24)
    args = ["--instances", csv, "--domain", "box,deeppoly", "--no-attack", "--quiet", "--threads", "1"]
    code, _, err = run(capsys, *args, "--out", tmp_path / "straight.csv")
    assert code == 0, err
    expected = _instance_rows(tmp_path / "straight.csv")
    assert len(expected) == 48 and {r[3] for r in expected} <= {"certified", "unknown"}

    out = tmp_path / "interrupted.csv"
    code, err = interrupt_midway(["nncert.cli.certify", *args, "--out", out], lambda: len(_instance_rows(out)) >= 4,
                                 sig)
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    partial = _instance_rows(out)
    assert 4 <= len(partial) < 48 and partial == expected[:len(partial)]
    code, _, err = run(capsys, *args, "--out", out, "--resume")
    assert code == 0, err
    assert sorted(_instance_rows(out)) == sorted(expected)


def test_float32_rounding_certifies_only_with_trust_float32(tmp_path, capsys):
    """A float32 ONNX model whose float32 DeepPoly bound of y at x = 1 is positive while y < 0 exactly: by default
    (the float64 guard) `certify` does not certify y > 0, and says so in the meta; --trust-float32 does (without
    the attack, which finds x = 1 a counterexample)."""
    from tests.verifier.test_registry import _cancelling_network

    net32, net64 = _cancelling_network()
    assert float(net64(torch.ones(1, 1, dtype=torch.float64))) < 0
    module = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        for layer, node in ((module[0], net32.nodes[1]), (module[2], net32.nodes[3])):
            layer.weight.copy_(node.op.weight)
            layer.bias.copy_(node.op.bias)
    path = tmp_path / "cancel.onnx"
    torch.onnx.export(module, torch.zeros(1, 1), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    spec = tmp_path / "p.vnnlib"
    spec.write_text("(declare-const X_0 Real) (declare-const Y_0 Real) (assert (>= X_0 1)) (assert (<= X_0 1))"
                    " (assert (<= Y_0 0))")
    statuses = {}
    for flags in ((), ("--trust-float32",)):
        code, out, err = run(capsys, path, "--vnnlib", spec, "--domain", "deeppoly", "--json", tmp_path / "r.json",
                             "--quiet", "--no-attack", *flags)
        assert code == 0, err
        result = json.loads((tmp_path / "r.json").read_text())
        assert result["meta"]["float64_guard"] == (not flags)
        statuses[flags] = result["results"][0]["status"]
    assert statuses[("--trust-float32",)] == "certified" and statuses[()] != "certified"
