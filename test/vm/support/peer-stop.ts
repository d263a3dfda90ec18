/**
 * Tells the peer VM's agent to stop, so that VM powers off (guest-tier.sh runs
 * this after the tests when env PEER is set). A peer that never came up or has
 * already stopped is no error here: run-tier.sh kills its VM anyway.
 */
import { Peer } from './peer.js';

try {
  const peer = await Peer.connect({ timeoutMs: 5_000 });
  await peer.stop();
  console.log(`peer-stop: ${peer.hostname} (${process.env.PEER}) told to stop`);
} catch (e) {
  console.log(`peer-stop: ${(e as Error).message}`);
}
