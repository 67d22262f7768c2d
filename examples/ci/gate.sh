#!/usr/bin/env bash
# Gate a model release on its ppr-audit report from any CI system (or a release script).
#
#   examples/ci/gate.sh CHECKPOINT [SPEC]
#
# With PPR_SERVER set, the audit runs on that service (PPR_TOKEN or PPR_TOKEN_FILE for the
# token); without it, the audit runs here with --local (needs torch, ideally a GPU). The
# reports land in ${PPR_OUT:-ppr-audit}/. Exit codes are those of `ppr gate`.
set -uo pipefail

checkpoint=${1:?usage: gate.sh CHECKPOINT [SPEC]}
spec=${2:-audit/spec.yaml}
out=${PPR_OUT:-ppr-audit}
mkdir -p "$out"

if [ -n "${PPR_SERVER:-}" ]; then
  where=(--server "$PPR_SERVER")
else
  where=(--local)
fi

ppr gate "$checkpoint" "${where[@]}" --spec "$spec" \
  --require "pam.max_gap <= 0.2" --require "all.o_cacc >= 0.80" \
  --timeout 5400 \
  --junit "$out/junit.xml" --sarif "$out/ppr-audit.sarif" \
  --markdown "$out/report.md" --json "$out/gate.json"
code=$?

case $code in
  0) echo "release gate passed" ;;
  1) echo "release gate FAILED: see $out/report.md" >&2 ;;
  2) echo "the audit refused its input: see the message above" >&2 ;;
  *) echo "the audit could not run (service error or timeout): retry later" >&2 ;;
esac
exit "$code"
