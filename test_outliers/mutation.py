"""Mutation testing of the code that decides the numbers and the safety (docs/testing.md).

    python test_outliers/mutation.py [--only MODULE] [--limit N] [--out FILE] [--recheck JSON]

Each mutant is one small, realistic bug put into one function: a comparison made strict or
inclusive, an arithmetic operator swapped, an integer constant off by one, ``and`` / ``or``
swapped, a ``not`` dropped. The module is rewritten with the mutant (from its syntax tree), the
tests that guard that module run (``-x``, a time limit), and the original file is put back,
whatever happens. A mutant is *killed* when those tests fail (or time out), *survived* when
they pass. The table of survivors, with the line of each, is printed and written as JSON.

Run it alone on the machine (it rewrites files of the checkout while it runs) and from a clean
checkout: the file is restored from memory after every mutant and checked against git at the
end.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> (functions mutated, the tests that guard them)
TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "harness/engine/criteria.py": (
        ("meets", "seed_compatible", "pooled_dims", "positions_affected", "pooled", "view"),
        (
            "test_outliers/test_criteria_properties.py",
            "test_outliers/test_engine_oracle.py",
            "test_outliers/test_definitions.py",
        ),
    ),
    "harness/engine/statistics.py": (
        ("by_layer", "without_first_position", "_count_sites"),
        ("test_outliers/test_engine_oracle.py", "test_outliers/test_definitions.py"),
    ),
    "harness/engine/reductions.py": (
        ("reduce_site", "_reduce_dense", "_values_over", "first_position", "at_least"),
        ("test_outliers/test_engine_oracle.py", "test_outliers/test_capture_design.py"),
    ),
    "harness/engine/capture.py": (
        ("_merged_parts", "stats"),
        ("test_outliers/test_engine_oracle.py", "test_outliers/test_capture_design.py"),
    ),
    "harness/engine/selfcheck.py": (
        ("_record", "verify", "check", "_equal", "_same", "_check_blocks", "_target"),
        (
            "test_outliers/test_zoo.py",
            "test_outliers/test_site_definitions.py",
            "test_outliers/test_capture_design.py",
            "test_outliers/test_bad_input.py",
        ),
    ),
    "harness/reports/bootstrap.py": (
        ("_percentile_interval", "multiplicities", "figures_for_sample", "bootstrap"),
        ("test_outliers/test_bootstrap.py",),
    ),
    "harness/reports/scaling.py": (
        ("bootstrap_ci", "spearman_rho", "permutation_pvalue", "change_point"),
        ("test_outliers/test_scaling.py",),
    ),
    "harness/engine/result_files.py": (
        ("write_result", "clean_stale"),
        ("test_outliers/test_result_files.py", "test_outliers/test_bad_input.py"),
    ),
    "harness/fileio.py": (
        ("replace_dir", "atomic_write"),
        ("test_outliers/test_result_files.py", "test_outliers/test_bad_input.py"),
    ),
    "harness/runners/runpod/runner.py": (
        ("close", "_terminate", "_sweep"),
        ("test_outliers/test_runpod_pods.py",),
    ),
    "harness/data/windows.py": (
        ("load_windows", "_texts"),
        ("test_outliers/test_data.py",),
    ),
    "harness/engine/invariants.py": (
        ("independent_outliers", "honest_run_failures"),
        ("test_outliers/test_invariants.py",),
    ),
}

_COMPARE = {
    ast.GtE: ast.Gt,
    ast.Gt: ast.GtE,
    ast.LtE: ast.Lt,
    ast.Lt: ast.LtE,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
}
_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult}
_BOOL = {ast.And: ast.Or, ast.Or: ast.And}


@dataclass
class Mutant:
    module: str
    function: str
    line: int
    what: str
    path: tuple  # indices of the node in a walk of the function, then the operator position

    def to_dict(self) -> dict:
        return {
            "module": self.module,
            "function": self.function,
            "line": self.line,
            "what": self.what,
            "path": list(self.path),
        }


def _functions(tree: ast.Module, names: tuple[str, ...]):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            yield node


def _docstring(node) -> bool:
    return isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant)


def candidates(module: str, names: tuple[str, ...]) -> list[Mutant]:
    tree = ast.parse((ROOT / module).read_text())
    out = []
    for fi, fn in enumerate(_functions(tree, names)):
        for ni, node in enumerate(ast.walk(fn)):
            if _docstring(node) or isinstance(node, ast.JoinedStr):
                continue
            if isinstance(node, ast.Compare):
                for oi, op in enumerate(node.ops):
                    if type(op) in _COMPARE:
                        new = _COMPARE[type(op)].__name__
                        what = f"{type(op).__name__} -> {new}"
                        out.append(Mutant(module, fn.name, node.lineno, what, (fi, ni, oi)))
            elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP:
                what = f"{type(node.op).__name__} -> {_BINOP[type(node.op)].__name__}"
                out.append(Mutant(module, fn.name, node.lineno, what, (fi, ni, 0)))
            elif isinstance(node, ast.BoolOp):
                what = f"{type(node.op).__name__} -> {_BOOL[type(node.op)].__name__}"
                out.append(Mutant(module, fn.name, node.lineno, what, (fi, ni, 0)))
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                out.append(Mutant(module, fn.name, node.lineno, "drop not", (fi, ni, 0)))
            elif (
                isinstance(node, ast.Constant)
                and type(node.value) is int
                and not isinstance(node.value, bool)
            ):
                out.append(
                    Mutant(
                        module,
                        fn.name,
                        node.lineno,
                        f"{node.value} -> {node.value + 1}",
                        (fi, ni, 0),
                    )
                )
    return out


class _Drop(ast.NodeTransformer):
    def __init__(self, target):
        self.target = target

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        return node.operand if node is self.target else node


def mutated_source(mutant: Mutant, names: tuple[str, ...]) -> str:
    tree = ast.parse((ROOT / mutant.module).read_text())
    fi, ni, oi = mutant.path
    fn = list(_functions(tree, names))[fi]
    node = list(ast.walk(fn))[ni]
    if isinstance(node, ast.Compare):
        node.ops[oi] = _COMPARE[type(node.ops[oi])]()
    elif isinstance(node, ast.BinOp):
        node.op = _BINOP[type(node.op)]()
    elif isinstance(node, ast.BoolOp):
        node.op = _BOOL[type(node.op)]()
    elif isinstance(node, ast.UnaryOp):
        tree = _Drop(node).visit(tree)
    elif isinstance(node, ast.Constant):
        node.value = node.value + 1
    return ast.unparse(ast.fix_missing_locations(copy.deepcopy(tree)))


def run_tests(tests: tuple[str, ...], timeout: float) -> tuple[bool, float]:
    """True when the tests fail (the mutant is killed)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HYPOTHESIS_PROFILE="ci", CUDA_VISIBLE_DEVICES="")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=timeout,
        )
        killed = p.returncode != 0
    except subprocess.TimeoutExpired:
        killed = True
    return killed, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="module path(s) to mutate (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="at most N mutants per module")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    ap.add_argument("--out", default="mutation-results.json", help="JSON of every mutant")
    ap.add_argument(
        "--recheck",
        action="append",
        metavar="JSON",
        help="run again only the mutants that survived in these earlier results (after new tests)",
    )
    args = ap.parse_args(argv)
    results, modules = [], args.only or list(TARGETS)
    wanted = None
    if args.recheck:
        wanted = {}
        for f in args.recheck:
            for r in json.loads(Path(f).read_text()):
                if not r["killed"]:
                    key = (r["module"], r["function"], r["line"], r["what"])
                    wanted[key] = wanted.get(key, 0) + 1
        modules = [m for m in modules if any(k[0] == m for k in wanted)]
    for module in modules:
        names, tests = TARGETS[module]
        path = ROOT / module
        original = path.read_text()
        ok, base_s = run_tests(tests, args.timeout)
        if ok:
            print(f"{module}: its tests fail without any mutant; fix them first", file=sys.stderr)
            return 2
        mutants = candidates(module, names)
        if wanted is not None:
            # the same (function, line, change) may occur twice on one line: every instance of
            # a surviving key runs again; a key's survivors now are at most its survivors then
            mutants = [m for m in mutants if (m.module, m.function, m.line, m.what) in wanted]
        if args.limit:
            step = max(1, len(mutants) // args.limit)
            mutants = mutants[::step][: args.limit]
        print(f"{module}: {len(mutants)} mutants, tests take {base_s:.0f}s", flush=True)
        try:
            for m in mutants:
                path.write_text(mutated_source(m, names))
                killed, secs = run_tests(tests, args.timeout)
                path.write_text(original)
                results.append(m.to_dict() | {"killed": killed, "seconds": round(secs, 1)})
                # kept as it goes: a run stopped early still says what it found
                Path(args.out).write_text(json.dumps(results, indent=1))
                mark = "killed  " if killed else "SURVIVED"
                print(f"  {mark} {m.function}:{m.line} {m.what}", flush=True)
        finally:
            path.write_text(original)
    Path(args.out).write_text(json.dumps(results, indent=1))
    killed = sum(r["killed"] for r in results)
    print(
        f"\n{killed} of {len(results)} mutants killed ({100 * killed / max(1, len(results)):.1f}%)"
    )
    for r in results:
        if not r["killed"]:
            print(f"survived: {r['module']} {r['function']}:{r['line']} {r['what']}")
    dirty = subprocess.run(
        ["git", "diff", "--stat", "--", *modules], cwd=ROOT, capture_output=True, text=True
    )
    if dirty.stdout.strip():
        print("WARNING: a mutated module differs from git:\n" + dirty.stdout, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
