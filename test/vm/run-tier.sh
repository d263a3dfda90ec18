#!/bin/bash
# run-tier.sh [TEST...] - the VM tier (npm run test:vm). As root: builds the VM
# if needed (build-vm.sh: Debian packages, kernel, initramfs), compiles if
# dist/ lacks the VM tests, boots ONE VM that runs the guest-side tests
# (test/vm/*.vmtest.ts, node:test) and prints one line per test, the time of
# each step and part, and a last line "VM: N passed, N failed".
# TEST names pick test files (e.g. `lvm nfs`); default: all.
# A suite in PEER_SUITES drives a second host (test/vm/support/peer.ts): when one
# runs, a second VM (guest-peer.sh) boots first, linked to the first by a qemu
# socket netdev (10.99.0.2 and 10.99.0.1), and is stopped when the first ends.
# Exit status 0 only when every test passed.
# Env: SMVM_WORKDIR (default /var/tmp/smvm), SMVM_TIMEOUT (default 3600 s: the whole tier takes ~35-40 min under TCG).
set -u
cd "$(dirname "$0")/../.."
T0=${EPOCHREALTIME//[.,]/}
elapsed() { local us=$(( ${EPOCHREALTIME//[.,]/} - T0 )); printf '%d.%d' $((us / 1000000)) $((us / 100000 % 10)); }
fail() { echo "vm-tier: $*"; echo "VM: 0 passed, 1 failed"; exit 1; }

W=${SMVM_WORKDIR:-/var/tmp/smvm}
export SMVM_TIMEOUT=${SMVM_TIMEOUT:-3600}   # for each VM (runvm.sh)
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

# The second VM (a second host of a pool) for the suites that need one.
PEER_SUITES="lvm-pool peer"
PEER_IP=10.99.0.2 SELF_IP=10.99.0.1 AGENT_PORT=7000
PEER_PID=
needs_peer() { # TEST...: all suites (none named), or one of them in PEER_SUITES
  [ $# -eq 0 ] && return 0
  local t; for t in "$@"; do [[ " $PEER_SUITES " == *" $t "* ]] && return 0; done
  return 1
}
listening() { # PORT: something listens on host TCP PORT (read, not probed: a probe would take qemu's one connection)
  grep -qiE "^ *[0-9]+: [0-9A-F]+:$(printf '%04X' "$1") 0+:0000 0A " /proc/net/tcp /proc/net/tcp6
}
start_peer() { # boots guest-peer.sh listening on a free port; sets PEER_PID, PEER_PORT
  local try i
  mkdir -p "$OUT/peer" || return 1
  for try in 1 2 3; do   # a port taken meanwhile makes qemu exit: try another
    PEER_PORT=$((20000 + RANDOM % 20000))
    listening "$PEER_PORT" && continue
    SMVM_WORKDIR=$W SMVM_OUT=$OUT/peer SMVM_NET=listen:$PEER_PORT:$PEER_IP/24 SMVM_MEM=1024 SMVM_CPUS=1 \
      test/vm/runvm.sh test/vm/guest-peer.sh "$PEER_IP:$AGENT_PORT" > "$OUT/peer-console.log" 2>&1 &
    PEER_PID=$!
    for i in $(seq 300); do   # qemu listens within a second or two
      listening "$PEER_PORT" && return 0
      kill -0 "$PEER_PID" 2>/dev/null || break
      sleep 0.1
    done
    stop_peer 0
  done
  return 1
}
stop_peer() { # GRACE_S: the peer powers off when told (guest-tier.sh); after GRACE_S its qemu is killed
  [ -n "$PEER_PID" ] || return 0
  local i t
  for ((i = 0; i < $1 * 10; i++)); do kill -0 "$PEER_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$PEER_PID" 2>/dev/null; then
    [ "$1" -gt 0 ] && echo "vm-tier: the peer VM did not power off in ${1}s: killing it"
    # runvm.sh's child is `timeout`, which hands the TERM on to qemu
    for t in $(pgrep -P "$PEER_PID"); do kill -TERM "$t" 2>/dev/null; done
  fi
  wait "$PEER_PID" 2>/dev/null
  PEER_PID=
}
trap 'stop_peer 0' EXIT
trap 'exit 130' INT; trap 'exit 143' TERM

if needs_peer "$@"; then
  start_peer || { tail -n 20 "$OUT/peer-console.log"; fail "the peer VM did not start"; }
  echo "vm-tier: peer VM booting (link on host port $PEER_PORT, agent $PEER_IP:$AGENT_PORT)"
  SMVM_NET=connect:$PEER_PORT:$SELF_IP/24 SMVM_PASS_PEER=$PEER_IP:$AGENT_PORT \
    SMVM_WORKDIR=$W SMVM_OUT=$OUT test/vm/runvm.sh test/vm/guest-tier.sh "$@" > "$OUT/console.log" 2>&1
  rc=$?
  stop_peer 30
else
  SMVM_WORKDIR=$W SMVM_OUT=$OUT test/vm/runvm.sh test/vm/guest-tier.sh "$@" > "$OUT/console.log" 2>&1
  rc=$?
fi
grep -E '^(smvm: (guest root ready|network)|runvm: )' "$OUT/console.log" | sed 's/^/vm-tier: /'
[ -f "$OUT/peer-console.log" ] && grep -E '^(smvm: (guest root ready|network)|runvm: |peer: |VM STEP )' "$OUT/peer-console.log" | sed 's/^/vm-tier: peer /'
grep -E '^VM STEP ' "$OUT/console.log"
# the reporter's lines: VM PASS / VM FAIL (+ indented details) / VM SKIP / VM PART / VM: summary
sed -n '/^VM \(PASS\|FAIL\|PART\|SKIP\)/,/^VM:/p' "$OUT/results.txt" 2>/dev/null | grep -v '^VM:'
summary=$(grep -E '^VM: [0-9]+ passed, [0-9]+ failed$' "$OUT/results.txt" 2>/dev/null | tail -n 1)
echo "vm-tier: total $(elapsed)s; results, console and logs in $OUT"
if [ -f "$OUT/peer-console.log" ] && { [ -z "$summary" ] || [ "$rc" -ne 0 ] || [[ $summary != *" 0 failed" ]]; }; then
  echo "vm-tier: peer VM console tail (agent log: $OUT/peer/peer.log):"; tail -n 20 "$OUT/peer-console.log"
fi
if [ -z "$summary" ]; then
  echo "vm-tier: the guest run ended without a result (runvm exit $rc); console tail:"
  tail -n 30 "$OUT/console.log"
  echo "VM: 0 passed, 1 failed"; exit 1
fi
echo "$summary"
[ "$rc" -eq 0 ] && [[ $summary == *" 0 failed" ]]
