"""VNN-LIB parsing: the VNN-COMP files, hand-written specs checked against a direct evaluator, errors, fuzzing."""

from __future__ import annotations

import functools
import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncert.verifier.spec import Property, SpecError
from nncert.verifier.vnnlib import parse_vnnlib, read_vnnlib
from tests.paths import vnncomp_dir

VNNCOMP = vnncomp_dir() or Path("/nonexistent")
BENCHMARKS = {"2022_mnist_fc": (784, 10), "2022_oval21": (3072, 10), "acasxu": (5, 5)}

HEADER = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
"""
BOX = "(assert (>= X_0 -1)) (assert (<= X_0 1)) (assert (>= X_1 -1)) (assert (<= X_1 1))\n"


def benchmark_files(benchmark: str, name: str = "*.vnnlib") -> list[Path]:
    """The benchmark's .vnnlib files matching ``name``; skips the test when the benchmarks are not there."""
    folder = VNNCOMP / benchmark / "vnnlib"
    if not folder.is_dir():
        pytest.skip(f"VNN-COMP benchmarks not found at {folder}")
    return sorted(folder.glob(name))


@functools.cache
def parsed(path: Path) -> list[Property]:
    """parse_vnnlib(path), shared between the tests that read the same VNN-COMP file."""
    return parse_vnnlib(path)


def single_row(formula: str) -> tuple[list[float], float]:
    """C row and d of a spec whose only output constraint is ``formula``."""
    (prop,) = parse_vnnlib(HEADER + BOX + f"(assert {formula})")
    assert prop.output.C.shape == (1, 3)
    return prop.output.C[0].tolist(), prop.output.d[0].item()


# ----------------------------------------------------------------------------- independent evaluator


def read_sexprs(text: str) -> list:
    """Nested lists of the s-expressions in ``text`` (no error handling: for well-formed test specs)."""
    tokens = re.sub(r";[^\n]*", " ", text).replace("(", " ( ").replace(")", " ) ").split()
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    return stack[0]


def evaluate(expr, env: dict[str, np.ndarray]):
    """Value of a term or formula on N points at once; strict comparisons read as closed, like the parser."""
    if isinstance(expr, str):
        return env[expr] if expr in env else float(expr)
    op, *args = expr
    vals = [evaluate(arg, env) for arg in args]
    if op == "and":
        return np.logical_and.reduce(vals)
    if op == "or":
        return np.logical_or.reduce(vals)
    if op in ("<=", "<"):
        return vals[0] <= vals[1]
    if op in (">=", ">"):
        return vals[0] >= vals[1]
    if op == "=":
        return vals[0] == vals[1]
    if op == "+":
        return sum(vals)
    if op == "-":
        return -vals[0] if len(vals) == 1 else vals[0] - sum(vals[1:])
    assert op == "*"
    return np.prod(np.broadcast_arrays(*vals), axis=0)


def formula_holds(text: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether the points (x (N, n_in), y (N, n_out)) satisfy every assert of ``text``: (N,) bool."""
    env = {f"X_{i}": x[:, i] for i in range(x.shape[1])} | {f"Y_{j}": y[:, j] for j in range(y.shape[1])}
    holds = np.ones(len(x), dtype=bool)
    for command in read_sexprs(text):
        if command[0] == "assert":
            holds &= evaluate(command[1], env)
    return holds


def parsed_holds(props: list[Property], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether (x, y) is a counterexample according to the parsed properties: (N,) bool."""
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    holds = torch.zeros(len(x), dtype=torch.bool)
    for p in props:
        inside = ((x >= p.lower) & (x <= p.upper)).all(1)
        holds |= inside & p.output.is_counterexample(y)
    return holds.numpy()


# ----------------------------------------------------------------------------- VNN-COMP files


@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_vnncomp_files_parse(benchmark):
    n_in, n_out = BENCHMARKS[benchmark]
    files = benchmark_files(benchmark)
    assert files
    for path in files:
        props = parsed(path)
        for p in props:
            assert p.lower.shape == p.upper.shape == (n_in,)
            assert p.lower.dtype == p.upper.dtype == p.output.C.dtype == p.output.d.dtype == torch.float64
            assert p.output.C.shape == (len(p.output.d), n_out) and p.output.clause.dtype == torch.long
            assert bool((p.lower <= p.upper).all()) and bool(torch.isfinite(p.output.C).all())
        if benchmark != "acasxu":
            assert len(props) == 1
            assert props[0].output.n_clauses == 9 and props[0].output.C.shape[0] == 9, path.name


def test_acasxu_prop6_has_two_boxes_with_the_same_output_spec():
    (path,) = benchmark_files("acasxu", "prop_6.vnnlib")
    first, second = parse_vnnlib(path)
    assert [first.lower[1].item(), first.upper[1].item()] == pytest.approx([0.11140846, 0.499999896])
    assert [second.lower[1].item(), second.upper[1].item()] == pytest.approx([-0.499999896, -0.11140846])
    for p in (first, second):
        assert p.output.n_clauses == 4
        assert p.output.C[0].tolist() == [-1.0, 1.0, 0.0, 0.0, 0.0]  # (<= Y_1 Y_0)


def test_acasxu_prop7_clauses_have_three_rows():
    (path,) = benchmark_files("acasxu", "prop_7.vnnlib")
    (prop,) = parse_vnnlib(path)
    assert prop.output.clause.tolist() == [0, 0, 0, 1, 1, 1]


def test_mnist_rows_are_normalised_robustness_margins():
    (path,) = benchmark_files("2022_mnist_fc", "prop_0_0.03.vnnlib")  # label 4: "(>= Y_i Y_4)" is unsafe
    (prop,) = parse_vnnlib(path, n_inputs=784, n_outputs=10)
    others = [i for i in range(10) if i != 4]
    expected = torch.zeros(9, 10, dtype=torch.float64)
    expected[:, 4] = 1.0
    expected[range(9), others] = -1.0
    assert torch.equal(prop.output.C, expected) and torch.equal(prop.output.d, torch.zeros(9, dtype=torch.float64))
    assert prop.output.clause.tolist() == list(range(9))
    assert prop.lower[783].item() == 0.0 and prop.upper[783].item() == pytest.approx(0.03)


def test_vnncomp_counterexamples_satisfy_the_parsed_specs():
    """Every stored counterexample (re-checked with onnxruntime) lies in some box and hits some clause."""
    files = sorted(VNNCOMP.glob("*/counterexamples/*.ce"))
    if not files:
        pytest.skip("no VNN-COMP counterexamples found")
    for ce in files:
        values = dict(re.findall(r"\((\w+)\s+([^\s()]+)\)", ce.read_text()))
        props = parsed(ce.parent.parent / "vnnlib" / (ce.stem.split("__", 1)[1] + ".vnnlib"))
        x = torch.tensor([float(values[f"X_{i}"]) for i in range(props[0].lower.numel())], dtype=torch.float64)
        y = torch.tensor([[float(values[f"Y_{j}"]) for j in range(props[0].output.C.shape[1])]], dtype=torch.float64)
        tol = 1e-6  # inputs were rounded to float32
        assert any(bool(((x >= p.lower - tol) & (x <= p.upper + tol)).all() and p.output.is_counterexample(y)[0])
                   for p in props), ce.name


# ----------------------------------------------------------------------------- semantics of small specs

SPECS = {
    "output_or_of_and": HEADER + BOX + """
        (assert (or (and (<= (- Y_0 Y_1) 0.5) (>= (* 2 Y_2) Y_0))
                    (and (< (+ Y_0 Y_1 1) (* Y_2 -0.5)))
                    (> 0.25 (- Y_1))))""",
    "mixed_input_output_disjuncts": HEADER + """
        (assert (or (and (<= X_0 0) (>= X_0 -1) (<= X_1 1) (>= X_1 0) (<= Y_0 Y_1))
                    (and (>= X_0 0) (<= X_0 1) (>= 1 X_1) (<= 0 X_1) (>= Y_0 (+ Y_2 0.5)))
                    (and (<= X_0 0) (>= X_0 -1) (<= X_1 1) (>= X_1 0) (<= (* -1 Y_2) (- 1 Y_0 Y_1)))))""",
    "input_boxes_then_outputs": HEADER + """
        (assert (or (and (<= X_0 0.5) (>= X_0 -0.5) (<= X_1 1) (>= X_1 0.25))
                    (and (<= X_0 1) (>= X_0 0.5) (<= X_1 0) (>= X_1 -1))))
        (assert (or (<= Y_0 Y_1) (and (or (<= Y_2 0) (>= Y_2 1)) (<= Y_1 Y_0))))""",
    "cross_product_of_asserts": HEADER + BOX + """
        (assert (or (<= 0.5 Y_0) (>= -1 Y_1)))
        (assert (or (and (<= Y_2 +2.0) (>= Y_2 -.5)) (< (+ Y_0 (- Y_2)) 1e-3)))""",
    "bounds_inside_and_and_ands": HEADER + """
        (assert (and (and (<= X_0 1) (>= X_0 0)) (>= 1 X_1) (and (>= X_1 -1) (>= Y_0 Y_1))))
        (assert (<= Y_2 (* 3 (+ Y_0 1))))""",
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_parsed_spec_agrees_with_direct_evaluation(name):
    text = SPECS[name]
    props = parse_vnnlib(text, n_inputs=2, n_outputs=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, (4000, 2))
    y = rng.normal(0.0, 1.5, (4000, 3))
    expected = formula_holds(text, x, y)
    assert 0 < expected.sum() < len(expected)  # the check is not vacuous
    np.testing.assert_array_equal(parsed_holds(props, x, y), expected)


def test_disjuncts_with_the_same_box_are_merged():
    props = parse_vnnlib(SPECS["mixed_input_output_disjuncts"])
    assert len(props) == 2
    assert props[0].output.n_clauses == 2 and props[1].output.n_clauses == 1
    assert props[0].lower.tolist() == [-1.0, 0.0] and props[1].upper.tolist() == [1.0, 1.0]


def test_nested_or_expands_to_clauses():
    first, second = parse_vnnlib(SPECS["input_boxes_then_outputs"])
    assert first.output.clause.tolist() == second.output.clause.tolist() == [0, 1, 1, 2, 2]


@pytest.mark.parametrize(("formula", "row", "d"), [
    ("(>= Y_0 Y_2)", [-1.0, 0.0, 1.0], 0.0),
    ("(<= Y_1 Y_0)", [-1.0, 1.0, 0.0], 0.0),
    ("(<= Y_0 3.5)", [1.0, 0.0, 0.0], 3.5),
    ("(>= Y_2 -1)", [0.0, 0.0, -1.0], 1.0),
    ("(<= 0.5 Y_1)", [0.0, -1.0, 0.0], -0.5),
    ("(< (- Y_0 Y_1) 2)", [1.0, -1.0, 0.0], 2.0),
    ("(> (* 2 Y_0) (* Y_1 0.5))", [-2.0, 0.5, 0.0], 0.0),
    ("(<= (+ Y_0 Y_1 1) (- Y_2))", [1.0, 1.0, 1.0], -1.0),
    ("(<= (+ Y_0 Y_0 (- Y_1 Y_1)) 1e-3)", [2.0, 0.0, 0.0], 1e-3),
    ("(>= (- 4) (- Y_2 1))", [0.0, 0.0, 1.0], -3.0),
])
def test_constraints_are_normalised_to_upper_bounds(formula, row, d):
    assert single_row(formula) == (row, pytest.approx(d))


def test_equality_gives_two_rows_in_one_clause():
    (prop,) = parse_vnnlib(HEADER + BOX + "(assert (= Y_0 (+ Y_1 2)))")
    assert prop.output.C.tolist() == [[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]
    assert prop.output.d.tolist() == [2.0, -2.0] and prop.output.clause.tolist() == [0, 0]


@pytest.mark.parametrize(("text", "value"), [("1", 1.0), ("-0.5", -0.5), ("1e-3", 1e-3), ("+2.0", 2.0),
                                             (".5", 0.5), ("5.", 5.0), ("-1E+2", -100.0)])
def test_number_formats(text, value):
    (prop,) = parse_vnnlib(HEADER + f"(assert (<= X_0 {text})) (assert (>= X_0 -1000))"
                           "(assert (<= X_1 1)) (assert (>= X_1 0)) (assert (<= Y_0 0))")
    assert prop.upper[0].item() == value


def test_comments_whitespace_and_ignored_commands():
    text = ("; header comment (with parentheses)\r\n(set-logic QF_LRA)\n\t(declare-const X_0 Real) ; X\n"
            "(declare-const Y_0 Real)(assert(<= X_0 1))(assert\n(>=\tX_0\n0));)\n(assert (<= Y_0 0))\n(check-sat)")
    (prop,) = parse_vnnlib(text)
    assert prop.lower.tolist() == [0.0] and prop.upper.tolist() == [1.0]


def test_files_paths_and_gzip(tmp_path):
    text = HEADER + BOX + "(assert (<= Y_0 Y_1))"
    plain, packed = tmp_path / "p.vnnlib", tmp_path / "p.vnnlib.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    assert read_vnnlib(packed) == text
    expected = parse_vnnlib(text)[0]
    for source in (plain, str(plain), packed, str(packed)):
        (prop,) = parse_vnnlib(source)
        assert torch.equal(prop.output.C, expected.output.C) and torch.equal(prop.lower, expected.lower)


# ----------------------------------------------------------------------------- errors

ERRORS = {
    "unclosed": (HEADER + BOX + "(assert (<= Y_0 Y_1)", "unclosed"),
    "extra_close": (HEADER + BOX + "(assert (<= Y_0 Y_1)))", "unbalanced"),
    "unknown_operator": (HEADER + BOX + "(assert (=> Y_0 1))", "unknown operator"),
    "unknown_term_operator": (HEADER + BOX + "(assert (<= (/ Y_0 2) 1))", "unknown operator"),
    "unknown_command": (HEADER + BOX + "(define-fun f () Real 1)", "unknown command"),
    "nested_command": ("((declare-const X_0 Real))", "unknown command"),
    "undeclared": (HEADER + BOX + "(assert (<= Y_10 0))", "undeclared variable Y_10"),
    "unknown_symbol": (HEADER + BOX + "(assert (<= Z_0 0))", "expected a number or a variable"),
    "empty": ("", "empty"),
    "only_comments": ("; nothing here\n  ;(assert (<= Y_0 0))\n", "empty"),
    "no_output_constraints": (HEADER + BOX, "no output constraints"),
    "input_only_disjunct": (HEADER + "(assert (or (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0))"
                            " (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0) (<= Y_0 0))))", "no output"),
    "empty_box": (HEADER + BOX + "(assert (<= X_0 -2)) (assert (<= Y_0 0))", "empty input box"),
    "missing_lower_bound": (HEADER + "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (<= X_1 1))"
                            "(assert (<= Y_0 0))", "X_1 has no finite lower bound"),
    "missing_bound_in_disjunct": (HEADER + "(assert (or (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0))"
                                  " (and (<= X_0 1) (>= X_0 0) (<= X_1 1))))(assert (<= Y_0 0))",
                                  "X_1 has no finite lower bound in input disjunct 1"),
    "mixed_x_y": (HEADER + BOX + "(assert (<= X_0 Y_0))", "mixing inputs X and outputs Y"),
    "non_box_input": (HEADER + BOX + "(assert (<= (+ X_0 X_1) 1)) (assert (<= Y_0 0))", "several X"),
    "nonlinear": (HEADER + BOX + "(assert (<= (* Y_0 Y_1) 1))", "nonlinear"),
    "no_variables": (HEADER + BOX + "(assert (<= 1 2)) (assert (<= Y_0 0))", "without variables"),
    "cancelled_variables": (HEADER + BOX + "(assert (<= (- Y_0 Y_0) 2))", "without variables"),
    "bad_number": (HEADER + BOX + "(assert (<= Y_0 1.2.3))", "expected a number"),
    "nan": (HEADER + BOX + "(assert (<= Y_0 nan))", "expected a number"),
    "inf": (HEADER + BOX + "(assert (<= Y_0 inf))", "expected a number"),
    "overflow": (HEADER + BOX + "(assert (<= Y_0 1e999))", "out of range"),
    "overflow_bound": (HEADER + BOX + "(assert (<= X_0 -1e999)) (assert (<= Y_0 0))", "out of range"),
    "overflow_product": (HEADER + BOX + "(assert (<= (+ (* 1e300 1e300 Y_0) Y_1) 1))", "out of range"),
    "comparison_arity": (HEADER + BOX + "(assert (<= Y_0))", "two arguments"),
    "assert_arity": (HEADER + BOX + "(assert (<= Y_0 1) (<= Y_1 1))", "expected (assert FORMULA)"),
    "empty_assert": (HEADER + BOX + "(assert)", "expected (assert FORMULA)"),
    "empty_and": (HEADER + BOX + "(assert (and))", "at least one argument"),
    "empty_minus": (HEADER + BOX + "(assert (<= (-) 1))", "too few arguments"),
    "empty_list": (HEADER + BOX + "(assert ())", "expected an operator"),
    "bare_atom_formula": (HEADER + BOX + "(assert true)", "expected a constraint"),
    "atom_outside": (HEADER + BOX + "assert (<= Y_0 1)", "outside parentheses"),
    "not_contiguous": ("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)",
                       "X_1 is not declared"),
    "duplicate": ("(declare-const X_0 Real)(declare-const X_0 Real)", "declared twice"),
    "sort": ("(declare-const X_0 Int)", "only Real"),
    "bad_name": ("(declare-const x0 Real)", "unsupported variable name"),
    "leading_zero": ("(declare-const X_01 Real)", "unsupported variable name"),
    "declare_arity": ("(declare-const X_0)", "expected (declare-const NAME Real)"),
    "no_outputs_declared": ("(declare-const X_0 Real)(assert (<= X_0 1))", "no outputs declared"),
    "no_inputs_declared": ("(declare-const Y_0 Real)(assert (<= Y_0 1))", "no inputs declared"),
    "too_deep": (HEADER + BOX + "(assert " + "(and " * 150 + "(<= Y_0 1)" + ")" * 151, "nested deeper"),
    "too_many_disjuncts": (HEADER + BOX + ("(assert (or" + " (<= Y_0 0)" * 400 + "))\n") * 2, "more than 100000"),
    "missing_file": ("no_such_file.vnnlib", "cannot read"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_malformed_specs_raise_spec_error(name):
    text, message = ERRORS[name]
    with pytest.raises(SpecError, match=re.escape(message)) as info:
        parse_vnnlib(text)
    assert "\n" not in str(info.value)


def test_error_messages_give_the_line():
    text = HEADER + BOX + "(assert (or (<= Y_0 0)\n  (<= Y_10 0)))"
    with pytest.raises(SpecError, match=r"line 9: undeclared variable Y_10"):
        parse_vnnlib(text)
    with pytest.raises(SpecError, match=r"line 8: unclosed"):
        parse_vnnlib(HEADER + BOX + "(assert (<= Y_0 0)\n")


def test_declared_sizes_must_match():
    with pytest.raises(SpecError, match="declares 2 inputs, expected 3"):
        parse_vnnlib(HEADER + BOX + "(assert (<= Y_0 0))", n_inputs=3)
    with pytest.raises(SpecError, match="declares 3 outputs, expected 10"):
        parse_vnnlib(HEADER + BOX + "(assert (<= Y_0 0))", n_outputs=10)


def test_unreadable_files_raise_spec_error(tmp_path):
    broken = tmp_path / "broken.vnnlib.gz"
    broken.write_bytes(gzip.compress(b"(declare-const X_0 Real)")[:15])
    binary = tmp_path / "binary.vnnlib"
    binary.write_bytes(b"\xff\xfe(\x00")
    for path in (broken, binary, tmp_path):
        with pytest.raises(SpecError, match="cannot read"):
            parse_vnnlib(path)


# ----------------------------------------------------------------------------- fuzzing

PIECES = re.compile(r"\s+|[()]|[^\s()]+")
REPLACEMENTS = ["(", ")", "((", "))", "", "\n", ";", "X_0", "X_99", "Y_4", "Y_5", "or", "and", "assert", "<=", "=",
                "+", "-", "*", "0", ".5", "-1e999", "nan", "declare-const", "Int", "\x00", "é", "(and)", "(or)"]
MUTATION = st.tuples(st.sampled_from(["delete", "duplicate", "replace", "replace_char", "insert_char"]),
                     st.integers(0, 10**6), st.sampled_from(REPLACEMENTS))


def mutate(text: str, mutations) -> str:
    """Apply token-level (delete / duplicate / replace) and character-level mutations to ``text``."""
    for op, where, replacement in mutations:
        if op.endswith("_char"):
            k = where % (len(text) + 1)
            text = text[:k] + replacement + text[k + 1:] if op == "replace_char" else text[:k] + replacement + text[k:]
            continue
        pieces = PIECES.findall(text) or [""]
        k = where % len(pieces)
        pieces[k] = {"delete": "", "duplicate": pieces[k] * 2, "replace": replacement}[op]
        text = "".join(pieces)
    return text


def seed_file() -> str:
    """The real file the fuzzer mutates: ACAS Xu property 6 (two input boxes, a disjunctive output spec)."""
    return read_vnnlib(benchmark_files("acasxu", "prop_6.vnnlib")[0])


@pytest.fixture(scope="module")
def small_real_file() -> str:
    return seed_file()


# the fuzz target's arguments (shared with benchmarks/fuzz.py, which runs it with a long budget)
STRATEGIES = {"mutations": st.lists(MUTATION, min_size=1, max_size=6)}


@settings(max_examples=200, deadline=None, database=None)
@given(**STRATEGIES)
def test_mutated_files_parse_or_raise_spec_error(small_real_file, mutations):
    check_mutant(small_real_file, mutations)


def check_mutant(original: str, mutations) -> None:
    """A mutated VNN-LIB text parses to finite, non-empty boxes and finite rows, or raises a one-line SpecError."""
    text = "\n" + mutate(original, mutations)  # the newline keeps it text, never a path
    try:
        props = parse_vnnlib(text)
    except SpecError as e:
        assert "\n" not in str(e)
        return
    for p in props:
        assert bool(torch.isfinite(p.lower).all() and torch.isfinite(p.upper).all() and (p.lower <= p.upper).all())
        assert bool(torch.isfinite(p.output.C).all() and torch.isfinite(p.output.d).all())
