"""Fuzzing the ONNX importer: mutated real models either import (and agree with onnxruntime) or fail cleanly."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from nncert.cli.certify import demo_files
from nncert.verifier.onnx_import import OnnxImportError, load_onnx
from tests.paths import vnncomp_dir

OP_TYPES = ["Relu", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Conv", "Flatten", "Reshape", "Sigmoid", "MaxPool",
            "Transpose", "Identity", "Softmax", "Concat"]


def _models() -> list[bytes]:
    paths = [demo_files()[0]]
    bench = vnncomp_dir()
    if bench is not None:
        paths += [bench / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx",
                  bench / "2022_mnist_fc/onnx/mnist-net_256x2.onnx"]
    return [p.read_bytes() for p in paths]


MODELS = _models()


def mutate(model: onnx.ModelProto, kind: str, a: int, b: int) -> None:
    """One structural change, chosen by ``kind`` and steered by the integers a, b."""
    graph = model.graph
    nodes = graph.node
    node = nodes[a % len(nodes)]
    if kind == "drop_node":
        del nodes[a % len(nodes)]
    elif kind == "op_type":
        node.op_type = OP_TYPES[b % len(OP_TYPES)]
    elif kind == "attribute" and node.attribute:
        attr = node.attribute[b % len(node.attribute)]
        if attr.ints:
            attr.ints[b % len(attr.ints)] = b % 7 - 2
        else:
            attr.i = b % 7 - 2
            attr.f = float(b % 5 - 2)
    elif kind == "rename_input" and node.input:
        node.input[b % len(node.input)] = ["missing", node.output[0], graph.input[0].name][b % 3]
    elif kind == "swap_inputs" and len(node.input) > 1:
        node.input[0], node.input[1] = node.input[1], node.input[0]
    elif kind == "initializer" and graph.initializer:
        tensor = graph.initializer[a % len(graph.initializer)]
        array = numpy_helper.to_array(tensor)
        flat = array.reshape(-1)
        cut = flat[: max(1, flat.size - 1 - b % 3)] if b % 2 else flat
        tensor.CopyFrom(numpy_helper.from_array(cut.reshape(-1) if b % 2 else flat.reshape(-1), tensor.name))
    elif kind == "input_dims":
        dims = graph.input[0].type.tensor_type.shape.dim
        if dims:
            dims[b % len(dims)].dim_value = b % 5
    elif kind == "duplicate_node":
        nodes.append(node)


MUTATION = st.tuples(st.sampled_from(["drop_node", "op_type", "attribute", "rename_input", "swap_inputs",
                                      "initializer", "input_dims", "duplicate_node"]),
                     st.integers(0, 1000), st.integers(0, 1000))


# the fuzz target's arguments (shared with benchmarks/fuzz.py, which runs it with a long budget)
STRATEGIES = {"which": st.integers(0, 10), "mutations": st.lists(MUTATION, min_size=1, max_size=3)}


def check_mutant(folder: Path, which: int, mutations) -> None:
    """A mutant of a real model imports (checked against onnxruntime) or raises a one-line OnnxImportError."""
    model = onnx.load_from_string(MODELS[which % len(MODELS)])
    for kind, a, b in mutations:
        mutate(model, kind, a, b)
    path = folder / "mutant.onnx"
    path.write_bytes(model.SerializeToString())
    try:
        load_onnx(path)
    except OnnxImportError as e:
        assert str(e).strip() and "\n" not in str(e).strip(), repr(e)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**STRATEGIES)
def test_mutated_models_import_or_fail_cleanly(tmp_path, which, mutations):
    check_mutant(tmp_path, which, mutations)


@pytest.mark.parametrize("data", [b"", b"not an onnx file", b"\x08\x07\x12\x00" * 10])
def test_garbage_files_fail_cleanly(tmp_path, data):
    (tmp_path / "g.onnx").write_bytes(data)
    with pytest.raises(OnnxImportError):
        load_onnx(tmp_path / "g.onnx")
