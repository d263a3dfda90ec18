// Runs a writable VHD device until killed: `crash-child.js LEAF SEED MODE PROGRESS [ROUNDS]`.
// Progress lines go to a file with synchronous writes, so a line is there iff
// the event before it happened: `ready`, `start R`, `flushed R` (rounds <= R durable),
// `fua K` (FUA write K acknowledged), `closed`.
import { openSync, writeSync } from 'node:fs';
import { openVhdDevice } from '../../lib/datapath/vhd-device.js';
import { crashRound, FLUSH_EVERY, FUA_SLOTS, fuaWrite } from './workload.js';

const [leaf, seedArg, mode, progressPath, roundsArg] = process.argv.slice(2);
const seed = Number(seedArg);
const rounds = roundsArg === undefined ? Infinity : Number(roundsArg);
const progress = openSync(progressPath, 'a');
const log = (line: string) => writeSync(progress, `${line}\n`);

const dev = await openVhdDevice(leaf, { writable: true });
log('ready');
if (mode === 'fua') {
  let next = 0;
  const worker = async () => {
    // Slots end at the disk's end: writes never overlap, so each must read back.
    for (let k = next++; k < FUA_SLOTS; k = next++) {
      const w = fuaWrite(seed, k);
      await dev.write(w.data, w.offset, { fua: true });
      log(`fua ${k}`);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
} else {
  for (let r = 0; r < rounds; r++) {
    log(`start ${r}`);
    await Promise.all(crashRound(seed, r).map((w) => dev.write(w.data, w.offset)));
    if (r % FLUSH_EVERY === FLUSH_EVERY - 1) {
      await dev.flush();
      log(`flushed ${r}`);
    }
  }
  await dev.close();
  log('closed');
}
