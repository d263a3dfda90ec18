#!/bin/bash
# guest-tier.sh - runs INSIDE the VM (run-tier.sh -> runvm.sh, in the repo
# folder): brings up udev and the kernel modules, then runs the VM-tier tests
# (dist/test/vm/guest-main.js: every *.vmtest.js, node:test, one process),
# and at the end tells the second guest, if there is one (env PEER), to stop.
# Per-test lines and "VM: N passed, N failed" go to stdout and
# $SMVM_OUT/results.txt, node's spec report to $SMVM_OUT/spec.log, step
# timings to $SMVM_OUT/timings.txt. Arguments pick test files (e.g. lvm nfs).
# Exit code: the test run's.
set -u
OUT=${SMVM_OUT:-/tmp}
. "$(dirname "$0")/guest-setup.sh"   # step, udev, modules, initiator
tests() { # TEST_NAME_PATTERN (run-tier.sh: SMVM_PASS_TEST_NAME_PATTERN): only the tests it matches
  node ${TEST_NAME_PATTERN:+--test-name-pattern="$TEST_NAME_PATTERN"} \
       --test-reporter="$PWD/dist/test/vm/reporter.js" --test-reporter-destination=stdout \
       --test-reporter=spec --test-reporter-destination="$OUT/spec.log" \
       dist/test/vm/guest-main.js "$@" 2>&1 | tee "$OUT/results.txt"
  return "${PIPESTATUS[0]}"
}
: > "$OUT/timings.txt"
step udev udev || exit 1
step modules modules || exit 1
initiator
export SMVM_GUEST=1 SMVM_OUT="$OUT"
step tests tests "$@"
rc=$?
# a second guest (run-tier.sh boots one for PEER_SUITES) powers off when told
[ -z "${PEER:-}" ] || node dist/test/vm/support/peer-stop.js >> "$OUT/peer-stop.log" 2>&1
exit $rc
