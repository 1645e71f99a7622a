"""Issue 16: a seeded fuzz of damaged artifacts through the real CLI (validate, bench, convert,
export), each run in its own process. The only allowed outcomes are exit 0, exit 1 (a gate
failed) and exit 2 with exactly one `error:` line: no traceback, no signal, no hang, no code
run from a file. Files that break the formats' rules must be refused (exit 2).

The default run makes `EDGECNN_FUZZ_CASES` cases (default 200, seed 0); `pytest -m fuzz`
runs thousands over several seeds. tests/fuzz_artifacts.py documents the generator and the
fork-server runner; `python tests/fuzz_artifacts.py BASE OUT SEED COUNT` prints the table.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

pytest.importorskip("ai_edge_litert")

from fuzz_artifacts import ALLOWED, generate, run_cases, tally  # noqa: E402


def _run(robust_base, tmp_path, seed: int, count: int, kinds=None):
    cases = generate(robust_base, tmp_path / "cases", seed=seed, count=count, kinds=kinds)
    results = run_cases(cases, tmp_path / "logs", timeout=120)
    findings = []
    for case, outcome, stderr in results:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        if outcome not in ALLOWED or (case.must_refuse and outcome != "exit 2"):
            findings.append(f"{outcome}: {case.name}: {(lines[-1] if lines else '')[:200]}")
    table = "\n".join(f"{key}: {dict(counts)}" for key, counts in sorted(tally(results).items()))
    return results, findings, table


def test_fuzz_default(robust_base, tmp_path):
    count = int(os.environ.get("EDGECNN_FUZZ_CASES", "200"))
    results, findings, table = _run(robust_base, tmp_path, seed=0, count=count)
    assert not findings, "\n".join([table, *findings])
    outcomes = Counter(o for _, o, _ in results)
    assert outcomes["exit 2"] > count // 3, table  # most damage is refused, not run
    refused = [c for c, o, _ in results if c.must_refuse]
    assert refused, "the generator made no certainly-invalid file"


@pytest.mark.fuzz
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_fuzz_thousands(robust_base, tmp_path, seed):
    results, findings, table = _run(robust_base, tmp_path, seed=seed, count=600)
    assert not findings, "\n".join([table, *findings])
