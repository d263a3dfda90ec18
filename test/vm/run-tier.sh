#!/bin/bash
# run-tier.sh [TEST...] - the VM tier (npm run test:vm). As root: builds the VM
# if needed (build-vm.sh: Debian packages, kernel, initramfs), compiles if
# dist/ lacks the VM tests, boots ONE VM that runs the guest-side tests
# (test/vm/*.vmtest.ts, node:test) and prints one line per test, the time of
# each step and part, and a last line "VM: N passed, N failed".
# TEST names pick test files (e.g. `lvm nfs`); default: all.
# Exit status 0 only when every test passed.
# Env: SMVM_WORKDIR (default /var/tmp/smvm), SMVM_TIMEOUT (default 2700 s: the whole tier takes ~15-25 min under TCG).
set -u
cd "$(dirname "$0")/../.."
T0=${EPOCHREALTIME//[.,]/}
elapsed() { local us=$(( ${EPOCHREALTIME//[.,]/} - T0 )); printf '%d.%d' $((us / 1000000)) $((us / 100000 % 10)); }
fail() { echo "vm-tier: $*"; echo "VM: 0 passed, 1 failed"; exit 1; }

W=${SMVM_WORKDIR:-/var/tmp/smvm}
mkdir -p "$W" || fail "cannot create $W"
if ! bash test/vm/build-vm.sh "$W" > "$W/build.log" 2>&1; then
  cat "$W/build.log"; fail "building the VM failed"
fi
echo "vm-tier: VM built or up to date in $(elapsed)s ($(tail -n 1 "$W/build.log" | sed 's/^\[[^]]*\] //'))"
if [ ! -f dist/test/vm/guest-main.js ]; then
  echo "vm-tier: compiling (dist/test/vm missing)"
  npx tsc -p tsconfig.json > /dev/null 2>&1
  [ -f dist/test/vm/guest-main.js ] || fail "no dist/test/vm/guest-main.js after tsc"
fi

# The guest gets fresh /tmp /run /dev /proc /sys: a checkout there (a CI clone in
# /tmp, say) is copied to a folder the guest sees, and the tier runs from the copy.
case "$PWD/" in
  /tmp/*|/run/*|/dev/*|/proc/*|/sys/*)
    copy=$W/checkout
    echo "vm-tier: $PWD is hidden from the guest: running from a copy in $copy"
    rm -rf "$copy" && mkdir -p "$copy" || fail "cannot create $copy"
    tar -C "$PWD" --exclude=./.git -cf - . | tar -C "$copy" -xf - || fail "copying the checkout to $copy failed"
    cd "$copy" || fail "cannot enter $copy"
    ;;
esac

mkdir -p "$W/runs"
ls -dt "$W"/runs/tier-* 2>/dev/null | tail -n +10 | while read -r old; do rm -rf "$old"; done   # keep the last runs
OUT=$(mktemp -d "$W/runs/tier-$(date +%Y%m%d-%H%M%S).XXXX")
SMVM_WORKDIR=$W SMVM_OUT=$OUT test/vm/runvm.sh test/vm/guest-tier.sh "$@" > "$OUT/console.log" 2>&1
rc=$?
grep -E '^(smvm: guest root ready|runvm: )' "$OUT/console.log" | sed 's/^/vm-tier: /'
grep -E '^VM STEP ' "$OUT/console.log"
# the reporter's lines: VM PASS / VM FAIL (+ indented details) / VM SKIP / VM PART / VM: summary
sed -n '/^VM \(PASS\|FAIL\|PART\|SKIP\)/,/^VM:/p' "$OUT/results.txt" 2>/dev/null | grep -v '^VM:'
summary=$(grep -E '^VM: [0-9]+ passed, [0-9]+ failed$' "$OUT/results.txt" 2>/dev/null | tail -n 1)
echo "vm-tier: total $(elapsed)s; results, console and logs in $OUT"
if [ -z "$summary" ]; then
  echo "vm-tier: the guest run ended without a result (runvm exit $rc); console tail:"
  tail -n 30 "$OUT/console.log"
  echo "VM: 0 passed, 1 failed"; exit 1
fi
echo "$summary"
[ "$rc" -eq 0 ] && [[ $summary == *" 0 failed" ]]
