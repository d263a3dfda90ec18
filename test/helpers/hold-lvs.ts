// A process that holds images of an SR for some work (a temp hold, as a verb or
// the GC takes one), over marker files; prints `held <pid>` once all are
// active and keeps the hold until its stdin closes. With a step delay it prints
// `activating <pid>` first, so a test can kill it mid-activation.
//   node hold-lvs.js <sr_uuid> <marker dir> <step ms> <uuid>...
import { LvHolds } from '../../lib/sr/lv-holds.js';
import { MarkerLvs } from './marker-lvs.js';

const [sr, dir, stepMs, ...uuids] = process.argv.slice(2);
const hold = new LvHolds(sr!, new MarkerLvs(dir!, Number(stepMs))).temp();
process.stdout.write(`activating ${process.pid}\n`);
await hold.add(uuids);
process.stdout.write(`held ${process.pid}\n`);
process.stdin.resume();
process.stdin.on('end', () => {
  void hold.release().then(() => process.exit(0));
});
