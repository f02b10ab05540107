"""A parser for the VNN-LIB subset used in VNN-COMP.

A VNN-LIB file declares inputs ``X_0..X_{n-1}`` and outputs ``Y_0..Y_{m-1}`` and asserts the
*counterexample* region: box bounds on the inputs and linear constraints on the outputs, combined
with ``and`` / ``or``. The property is certified iff that region is unreachable by the network.

The assertions are expanded into disjunctive normal form, each disjunct a conjunction of input
bounds and output rows ``c . y <= d``. Linear terms are evaluated in exact rational arithmetic and
only their results rounded, so that the specification never shrinks: input bounds outward, the
thresholds d up, and a row whose coefficients float32 cannot hold exactly (0.1 Y_0 ...) is scaled to
small integer coefficients first (``3 Y_0 - 7 Y_1 <= 1`` for ``0.3 Y_0 - 0.7 Y_1 <= 0.1``).
Disjuncts with the same input box are merged, so the result is one :class:`~verifier.spec.Property`
per distinct input box whose :class:`~verifier.spec.OutputSpec` clauses are the output conjunctions
that occur with that box.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import re
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from nncert.verifier.spec import OutputSpec, Property, SpecError

MAX_DISJUNCTS = 100_000  # cap on expanded disjuncts / output clauses per file
MAX_DEPTH = 100  # cap on parenthesis nesting (keeps the recursive walk far from Python's limit)

_COMMENT = re.compile(r";[^\n]*")
_TOKEN = re.compile(r"[()]|[^\s()]+")  # the tokens of _Parser.tokens, with their positions
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(0|[1-9]\d*)")
_IGNORED_COMMANDS = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"})
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})
_UPPER = {"<=": True, "<": True, ">=": False, ">": False}  # (op X_i c) bounds X_i from above?

# An input atom is (input index, is_upper, bound); an output atom is a row ((j, c_j), ...), d
# meaning sum_j c_j y_j <= d. A conjunction is a pair (input atoms, output atoms) of lists, and a
# DNF is a list of conjunctions. Conjunction lists are never shared between DNFs, so they may be
# extended in place.
InputAtom = tuple[int, bool, float]  # the bound already rounded outward to float64
OutputAtom = tuple[tuple[tuple[int, float], ...], float]  # coefficients exact in float64, d rounded up
Conjunction = tuple[list[InputAtom], list[OutputAtom]]
Linear = tuple[dict[str, Fraction], Fraction]  # sum_v coefs[v] * v + constant, exact


class _Node(list):
    """A parenthesised s-expression: its items (str atoms or nodes) and the index of its ``(`` token."""

    __slots__ = ("token",)


def read_vnnlib(path: str | os.PathLike) -> str:
    """The text of a VNN-LIB file; gzip-compressed files (``.vnnlib.gz``) are decompressed transparently."""
    try:
        data = Path(path).read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return data.decode("utf-8")
    except (OSError, EOFError, zlib.error, ValueError) as e:  # ValueError: bad UTF-8, NUL in the path
        raise SpecError(f"cannot read VNN-LIB file {os.fspath(path)}: {e}") from None


def parse_vnnlib(path_or_text: str | os.PathLike, n_inputs: int | None = None,
                 n_outputs: int | None = None) -> list[Property]:
    """Parse a VNN-LIB file (path) or its text into one Property per distinct input box.

    A ``str`` is taken as VNN-LIB text when it names no existing file and contains ``(``, ``;`` or a
    newline (or is blank); otherwise it is a path. Each Property has flat float64 ``lower``/``upper`` of
    shape (n_inputs,) and an OutputSpec with float64 C (m, n_outputs), d (m,). If n_inputs / n_outputs
    are given they must match the declared counts. Raises SpecError for anything malformed or unsupported.
    """
    if _is_text(path_or_text):
        text, source = path_or_text, "VNN-LIB text"
    else:
        text, source = read_vnnlib(path_or_text), os.fspath(path_or_text)
    try:
        return _Parser(text).properties(n_inputs, n_outputs)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None


def _is_text(path_or_text: str | os.PathLike) -> bool:
    """Whether :func:`parse_vnnlib` got VNN-LIB text rather than a path (see there)."""
    if not isinstance(path_or_text, str):
        return False
    if "\n" in path_or_text or not path_or_text.strip():
        return True
    return ("(" in path_or_text or ";" in path_or_text) and not os.path.isfile(path_or_text)


class _Parser:
    """Tokenises the text, builds the s-expression tree and turns the assertions into Properties."""

    def __init__(self, text: str):
        self.text = _COMMENT.sub("", text)  # keeps the newlines, so line numbers stay valid
        self.tokens = self.text.replace("(", " ( ").replace(")", " ) ").split()  # much faster than a regex
        self.variables: dict[str, tuple[str, int]] = {}  # name -> ("X" | "Y", index)
        self.inputs: dict[str, int] = {}  # X_i -> i, filled once all declarations are read

    # ------------------------------------------------------------------ errors

    def line(self, token: int) -> int:
        """1-based line of token number ``token`` (only computed when reporting an error)."""
        match = next(itertools.islice(_TOKEN.finditer(self.text), token, None), None)
        return self.text.count("\n", 0, match.start() if match else len(self.text)) + 1

    def error(self, message: str, node: _Node | int) -> SpecError:
        """A SpecError for ``message`` at the line of ``node`` (or of token index ``node``)."""
        token = node if isinstance(node, int) else node.token
        return SpecError(f"line {self.line(token)}: {message}")

    # ------------------------------------------------------------------ s-expressions

    def commands(self) -> list[_Node]:
        """The top-level s-expressions, checked for balanced parentheses and bounded depth."""
        root: list = []
        stack, current = [root], root
        for i, tok in enumerate(self.tokens):
            if tok == "(":
                node = _Node()
                node.token = i
                current.append(node)
                stack.append(node)
                current = node
                if len(stack) > MAX_DEPTH:
                    raise self.error(f"parentheses nested deeper than {MAX_DEPTH}", i)
            elif tok == ")":
                if current is root:
                    raise self.error("unbalanced ')'", i)
                stack.pop()
                current = stack[-1]
            elif current is root:
                raise self.error(f"unexpected {tok!r} outside parentheses", i)
            else:
                current.append(tok)
        if len(stack) > 1:
            raise self.error("unclosed '(' (missing ')')", stack[1])
        return root

    # ------------------------------------------------------------------ declarations

    def declare(self, node: _Node) -> None:
        """Record ``(declare-const X_i Real)``."""
        if len(node) != 3 or not all(isinstance(item, str) for item in node[1:]):
            raise self.error("expected (declare-const NAME Real)", node)
        name, sort = node[1], node[2]
        match = _VARIABLE.fullmatch(name)
        if match is None:
            raise self.error(f"unsupported variable name {name!r} (expected X_i or Y_j)", node)
        if sort != "Real":
            raise self.error(f"variable {name} has sort {sort!r}, only Real is supported", node)
        if name in self.variables:
            raise self.error(f"variable {name} declared twice", node)
        self.variables[name] = (match[1], int(match[2]))

    def count(self, kind: str, expected: int | None) -> int:
        """Number of declared X or Y variables, checked to be contiguous from 0 (and == expected if given)."""
        indices = sorted(i for k, i in self.variables.values() if k == kind)
        what = "inputs" if kind == "X" else "outputs"
        if not indices:
            raise SpecError(f"no {what} declared (declare-const {kind}_0 Real)")
        missing = next((i for i, j in enumerate(indices) if i != j), None)
        if missing is not None:
            raise SpecError(f"{what} are not numbered contiguously from 0: {kind}_{missing} is not declared")
        if expected is not None and len(indices) != expected:
            raise SpecError(f"declares {len(indices)} {what}, expected {expected}")
        return len(indices)

    # ------------------------------------------------------------------ linear terms

    def linear(self, term, parent: _Node) -> Linear:
        """A term as (coefficients by variable name, constant); ``parent`` locates errors for atoms."""
        if isinstance(term, str):
            if term in self.variables:
                return {term: Fraction(1)}, Fraction(0)
            return {}, self.number(term, parent)
        if not term or not isinstance(term[0], str):
            raise self.error("expected an operator after '('", term)
        op = term[0]
        if op not in ("+", "-", "*"):
            raise self.error(f"unknown operator {op!r} in a linear term (expected +, - or *)", term)
        if len(term) < (3 if op == "*" else 2):
            raise self.error(f"({op}) has too few arguments", term)
        args = [self.linear(arg, term) for arg in term[1:]]
        if op == "+":
            return _combine(args, [1] * len(args))
        if op == "-":
            return _combine(args, [-1] if len(args) == 1 else [1] + [-1] * (len(args) - 1))
        return self.product(args, term)

    def product(self, factors: list[Linear], node: _Node) -> Linear:
        """Product of terms of which at most one is non-constant."""
        scale = math.prod(const for coefs, const in factors if not coefs)
        variable = [f for f in factors if f[0]]
        if len(variable) > 1:
            raise self.error("nonlinear term: a product of several variables", node)
        coefs, const = variable[0] if variable else ({}, Fraction(1))
        return {v: c * scale for v, c in coefs.items()}, const * scale

    def number(self, token: str, node: _Node) -> Fraction:
        """The exact value of a numeric literal such as ``-0.5``, ``1e-3`` or ``.5``."""
        if _VARIABLE.fullmatch(token):
            raise self.error(f"undeclared variable {token}", node)
        if _NUMBER.fullmatch(token) is None:
            raise self.error(f"expected a number or a variable, got {token!r}", node)
        if not math.isfinite(float(token)):
            raise self.error(f"number {token!r} is out of range", node)
        return Fraction(token)

    # ------------------------------------------------------------------ formulas

    def simple_bound(self, formula) -> InputAtom | None:
        """``(op X_i c)`` or ``(op c X_i)`` with op in <=, >=, <, > as an input atom, else None.

        A fast path for the thousands of plain bounds in image benchmarks; anything unusual (including
        every error) is left to the general path of :meth:`dnf`.
        """
        if not isinstance(formula, _Node) or len(formula) != 3:
            return None
        op, lhs, rhs = formula
        if not (isinstance(op, str) and isinstance(lhs, str) and isinstance(rhs, str)) or op not in _UPPER:
            return None
        if (index := self.inputs.get(lhs)) is not None:
            number, upper = rhs, _UPPER[op]
        elif (index := self.inputs.get(rhs)) is not None:
            number, upper = lhs, not _UPPER[op]
        else:
            return None
        if _NUMBER.fullmatch(number) is None or not math.isfinite(float(number)):
            return None
        return index, upper, _outward(Fraction(number), upper)

    def dnf(self, formula, parent: _Node) -> list[Conjunction]:
        """A boolean formula in disjunctive normal form."""
        if not isinstance(formula, _Node):
            raise self.error(f"expected a constraint such as (<= Y_0 1), got {formula!r}", parent)
        if not formula or not isinstance(formula[0], str):
            raise self.error("expected an operator after '('", formula)
        op, args = formula[0], formula[1:]
        if op in _COMPARISONS:
            return [self.comparison(formula)]
        if op not in ("and", "or"):
            raise self.error(f"unknown operator {op!r} (expected and, or, <=, >=, <, >, =)", formula)
        if not args:
            raise self.error(f"({op}) needs at least one argument", formula)
        parts = [self.dnf(arg, formula) for arg in args]
        if op == "or":
            result = [conj for part in parts for conj in part]
            if len(result) > MAX_DISJUNCTS:
                raise self.error(f"more than {MAX_DISJUNCTS} disjuncts", formula)
            return result
        result = parts[0]
        for part in parts[1:]:
            result = self.conjoin(result, part, formula)
        return result

    def conjoin(self, a: list[Conjunction], b: list[Conjunction], node: _Node) -> list[Conjunction]:
        """``a and b`` for DNFs: the cross product of their disjuncts (in place for single disjuncts)."""
        if len(a) * len(b) > MAX_DISJUNCTS:
            raise self.error(f"the formula expands to more than {MAX_DISJUNCTS} disjuncts", node)
        if len(a) == 1 and len(b) == 1:
            a[0][0].extend(b[0][0])
            a[0][1].extend(b[0][1])
            return a
        return [(ai + bi, ao + bo) for ai, ao in a for bi, bo in b]

    def comparison(self, node: _Node) -> Conjunction:
        """``(op lhs rhs)`` as a conjunction of normalised atoms.

        Strict ``<`` / ``>`` are read as ``<=`` / ``>=``: the asserted region is the set of
        counterexamples, so treating it as closed can only make a "certified" verdict harder, never unsound.
        """
        if len(node) != 3:
            raise self.error(f"({node[0]} ...) needs exactly two arguments", node)
        sides = [self.linear(node[1], node), self.linear(node[2], node)]
        signs = {"<=": [1], "<": [1], ">=": [-1], ">": [-1], "=": [1, -1]}[node[0]]
        conj: Conjunction = ([], [])
        for sign in signs:  # sign * (lhs - rhs) <= 0
            self.atom(_combine(sides, [sign, -sign]), node, conj)
        return conj

    def atom(self, expr: Linear, node: _Node, conj: Conjunction) -> None:
        """Append ``coefs . v + constant <= 0`` to ``conj`` as an input bound or an output row."""
        coefs, constant = expr
        terms = [(self.variables[v], c) for v, c in coefs.items() if c != 0]
        kinds = {kind for (kind, _), _ in terms}
        if not terms:
            raise self.error("constraint without variables", node)
        if kinds == {"X", "Y"}:
            raise self.error("constraints mixing inputs X and outputs Y are not supported", node)
        if kinds == {"Y"}:
            conj[1].append(self.output_row(sorted((j, c) for (_, j), c in terms), -constant, node))
            return
        if len(terms) > 1:
            raise self.error("only bounds on single inputs are supported, not constraints over several X", node)
        ((_, i), c), = terms
        conj[0].append((i, c > 0, self.finite(_outward(-constant / c, c > 0), node)))

    def output_row(self, coefs: list[tuple[int, Fraction]], d: Fraction, node: _Node) -> OutputAtom:
        """The row ``coefs . y <= d`` with float64 coefficients that float32 holds exactly where it can (the row
        scaled to the smallest integers otherwise) and d rounded up, so the counterexample region only grows."""
        if not all(_holds(c, np.float32) for _, c in coefs):
            scale = Fraction(math.lcm(*(c.denominator for _, c in coefs)), math.gcd(*(c.numerator for _, c in coefs)))
            coefs, d = [(j, c * scale) for j, c in coefs], d * scale
        if not all(_holds(c, np.float64) for _, c in coefs):
            raise self.error("output coefficients out of range: float64 cannot hold them exactly, even scaled to "
                             "integers", node)
        return tuple((j, float(c)) for j, c in coefs), self.finite(_outward(d, True), node)

    def finite(self, value: float, node: _Node) -> float:
        if not math.isfinite(value):
            raise self.error("constant out of the float64 range", node)
        return value

    # ------------------------------------------------------------------ properties

    def properties(self, n_inputs: int | None, n_outputs: int | None) -> list[Property]:
        """All properties of the file (see :func:`parse_vnnlib`)."""
        if not self.tokens:
            raise SpecError("empty VNN-LIB file")
        commands = self.commands()
        asserts = []
        for node in commands:
            head = node[0] if node and isinstance(node[0], str) else None
            if head == "declare-const":
                self.declare(node)
            elif head == "assert":
                asserts.append(node)
            elif head not in _IGNORED_COMMANDS:
                raise self.error(f"unknown command {head or '(...)'!r} (expected declare-const or assert)", node)
        n_in, n_out = self.count("X", n_inputs), self.count("Y", n_outputs)
        self.inputs = {name: i for name, (kind, i) in self.variables.items() if kind == "X"}
        bounds: list[InputAtom] = []  # asserts that are a single input bound
        guarded: list[Conjunction] = [([], [])]  # other asserts with input bounds
        outputs: list[Conjunction] = [([], [])]  # asserts over outputs only
        for node in asserts:
            if len(node) != 2:
                raise self.error("expected (assert FORMULA)", node)
            bound = self.simple_bound(node[1])
            if bound is not None:
                bounds.append(bound)
                continue
            dnf = self.dnf(node[1], node)
            if all(not ins for ins, _ in dnf):
                outputs = self.conjoin(outputs, dnf, node)
            else:
                guarded = self.conjoin(guarded, dnf, node)
        if len(guarded) * len(outputs) > MAX_DISJUNCTS:
            raise SpecError(f"the assertions expand to more than {MAX_DISJUNCTS} disjuncts")
        common = _tighten(np.full(n_in, -np.inf), np.full(n_in, np.inf), bounds)
        groups: dict[bytes, tuple[np.ndarray, np.ndarray, list[list[OutputAtom]]]] = {}
        for k, (ins, outs) in enumerate(guarded):
            lower, upper = _tighten(*common, ins)
            _check_box(lower, upper, f" in input disjunct {k}" if len(guarded) > 1 else "")
            clauses = groups.setdefault(lower.tobytes() + upper.tobytes(), (lower, upper, []))[2]
            clauses.extend(rows + outs for _, rows in outputs)
        return [Property(torch.from_numpy(lower), torch.from_numpy(upper), _output_spec(clauses, n_out))
                for lower, upper, clauses in groups.values()]


def _outward(exact: Fraction, up: bool) -> float:
    """The float64 nearest ``exact``, moved one step up (``up``) or down if rounding to nearest went the other
    way (+-inf beyond the float64 range): the box never loses a point of the one written."""
    try:
        value = float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf
    if (Fraction(value) < exact) if up else (Fraction(value) > exact):
        return math.nextafter(value, math.inf if up else -math.inf)
    return value


def _holds(exact: Fraction, dtype: type) -> bool:
    """Whether the floating-point type ``dtype`` (np.float32, np.float64) holds ``exact`` exactly."""
    try:
        return Fraction(float(dtype(float(exact)))) == exact
    except (OverflowError, ValueError):  # beyond the float64 range, or inf in dtype
        return False


def _combine(terms: list[Linear], weights: list[int]) -> Linear:
    """``sum_k weights[k] * terms[k]`` for linear terms, exactly."""
    coefs: dict[str, Fraction] = {}
    constant = Fraction(0)
    for (term_coefs, term_const), w in zip(terms, weights):
        for v, c in term_coefs.items():
            coefs[v] = coefs.get(v, Fraction(0)) + w * c
        constant += w * term_const
    return coefs, constant


def _tighten(lower: np.ndarray, upper: np.ndarray, atoms: list[InputAtom]) -> tuple[np.ndarray, np.ndarray]:
    """New float64 (n_inputs,) bounds: ``lower``/``upper`` intersected with the input atoms."""
    lower, upper = lower + 0.0, upper + 0.0  # copies, and -0.0 -> 0.0 so that equal boxes have equal bytes
    if atoms:
        index, is_upper, value = (np.array(column) for column in zip(*atoms))
        np.maximum.at(lower, index[~is_upper], value[~is_upper] + 0.0)
        np.minimum.at(upper, index[is_upper], value[is_upper] + 0.0)
    return lower, upper


def _check_box(lower: np.ndarray, upper: np.ndarray, where: str) -> None:
    """Require finite, non-empty bounds; ``where`` names the disjunct in error messages."""
    for bound, name in ((lower, "lower"), (upper, "upper")):
        bad = np.flatnonzero(~np.isfinite(bound))
        if bad.size:
            raise SpecError(f"X_{bad[0]} has no finite {name} bound{where}")
    empty = np.flatnonzero(lower > upper)
    if empty.size:
        i = empty[0]
        raise SpecError(f"empty input box{where}: X_{i} has lower bound {lower[i]} > upper bound {upper[i]}")


def _output_spec(clauses: list[list[OutputAtom]], n_outputs: int) -> OutputSpec:
    """OutputSpec with one clause per conjunction of rows: C (m, n_outputs), d (m,) float64, clause (m,) long."""
    if any(not rows for rows in clauses):
        raise SpecError("no output constraints: every disjunct of the counterexample region needs a condition on Y")
    rows = [row for rows in clauses for row in rows]
    C = np.zeros((len(rows), n_outputs))
    d = np.array([bound for _, bound in rows], dtype=np.float64) + 0.0  # -0.0 -> 0.0
    for r, (coefs, _) in enumerate(rows):
        for j, c in coefs:
            C[r, j] = c
    if not (np.isfinite(C).all() and np.isfinite(d).all()):
        raise SpecError("output constraint with coefficients out of range")
    clause = torch.tensor([k for k, conj in enumerate(clauses) for _ in conj], dtype=torch.long)
    return OutputSpec(torch.from_numpy(C), torch.from_numpy(d), clause)
