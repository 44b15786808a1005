#!/usr/bin/env python3
"""Compare an Autobahn|Testsuite report (index.json) with herald's oracle.

    compare.py INDEX_JSON                       # summary; exit 1 if a case FAILED
    compare.py INDEX_JSON --expect FILE         # exit 1 if any case differs from FILE
    compare.py INDEX_JSON --write-expect FILE   # record this run as the oracle

A case's result is its `behavior` (OK, NON-STRICT, INFORMATIONAL,
UNIMPLEMENTED, FAILED). A case the oracle lists that has no result in the
report counts as "NO RESULT" (the server died or the run was cut short).
With --cases (the run's case patterns, as JSON), only the oracle's cases
that the patterns select are expected: a run of some cases is compared with
that part of the oracle.
"""

import argparse
import json
import re
import sys

COMMENT = (
    "Autobahn|Testsuite 25.10.1 against herald's /echo: the expected 'behavior' "
    "of each case. Checked by tests/autobahn/run.sh --expect; rewritten on purpose "
    "with .ci/autobahn --write-expect tests/autobahn/expected.json."
)


def case_order(case_id):
    return tuple(int(p) if p.isdigit() else 0 for p in case_id.split("."))


def selector(patterns):
    """Whether a case id matches one of the patterns, as the fuzzingclient
    matches them: a pattern with `*` is a regular expression matched at the
    start of the id only ("12.*.1" also selects 12.1.10 to 12.1.18), one
    without is the id itself."""
    exact = {p for p in patterns if "*" not in p}
    regexes = [re.compile(p.replace(".", r"\.").replace("*", ".*")) for p in patterns if "*" in p]
    return lambda case_id: case_id in exact or any(r.match(case_id) for r in regexes)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("index")
    parser.add_argument("--expect")
    parser.add_argument("--write-expect")
    parser.add_argument("--cases")
    args = parser.parse_args()

    try:
        with open(args.index, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print(f"autobahn: no usable report at {args.index}: {e}", file=sys.stderr)
        return 2
    results = {}
    for agent_cases in index.values():
        for case_id, result in agent_cases.items():
            results[case_id] = result.get("behavior", "NO RESULT")

    counts = {}
    for behavior in results.values():
        counts[behavior] = counts.get(behavior, 0) + 1
    summary = ", ".join(f"{n} {b.lower()}" for b, n in sorted(counts.items()))
    print(f"autobahn: {len(results)} cases: {summary}")
    for behavior in ("NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"):
        ids = sorted((c for c, b in results.items() if b == behavior), key=case_order)
        if ids:
            print(f"autobahn: {behavior.lower()}: {' '.join(ids)}")

    if args.write_expect:
        ordered = {c: results[c] for c in sorted(results, key=case_order)}
        with open(args.write_expect, "w", encoding="utf-8") as f:
            json.dump({"comment": COMMENT, "cases": ordered}, f, indent=2)
            f.write("\n")
        print(f"autobahn: wrote {len(ordered)} cases to {args.write_expect}")
        return 0

    if args.expect:
        with open(args.expect, encoding="utf-8") as f:
            expected = json.load(f)["cases"]
        if args.cases:
            selected = selector(json.loads(args.cases))
            expected = {c: b for c, b in expected.items() if selected(c)}
        differ = []
        for case_id in sorted(set(expected) | set(results), key=case_order):
            want = expected.get(case_id, "(not in the oracle)")
            got = results.get(case_id, "NO RESULT")
            if want != got:
                differ.append(f"  {case_id}: expected {want}, got {got}")
        if differ:
            print(f"autobahn: {len(differ)} cases differ from {args.expect}:")
            print("\n".join(differ))
            return 1
        print(f"autobahn: every case as recorded in {args.expect}")
        return 0

    return 1 if counts.get("FAILED") else 0


if __name__ == "__main__":
    sys.exit(main())
