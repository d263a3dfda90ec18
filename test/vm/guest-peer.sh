#!/bin/bash
# guest-peer.sh ADDRESS:PORT - runs INSIDE the second VM of the tier (run-tier.sh
# -> runvm.sh with SMVM_NET, in the repo folder): a second host of a pool. Brings
# up udev, the kernel modules and an initiator name of its own, as guest-tier.sh
# does, then serves the peer agent (dist/test/vm/support/peer-agent.js) on
# ADDRESS:PORT until the first guest tells it to stop (POST /stop); then the
# script ends and the VM powers off. Step timings to $SMVM_OUT/timings.txt, the
# agent's log to $SMVM_OUT/peer.log. Exit code: the agent's.
set -u
OUT=${SMVM_OUT:-/tmp}
. "$(dirname "$0")/guest-setup.sh"   # step, udev, modules, initiator
if [ $# -ne 1 ]; then echo "usage: $0 ADDRESS:PORT" >&2; exit 2; fi
hostname smvm-peer                    # its SMlog lines and iSCSI sessions tell it apart
: > "$OUT/timings.txt"
step udev udev || exit 1
step modules modules || exit 1
initiator new
export SMVM_GUEST=1 SMVM_OUT="$OUT"
echo "peer: agent on $1"
node dist/test/vm/support/peer-agent.js "$1" >> "$OUT/peer.log" 2>&1
rc=$?
echo "peer: agent ended with code $rc"
exit $rc
