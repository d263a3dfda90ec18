// A process that takes an SR's lock (SM_ROOT from its environment), prints
// `held <pid>`, and keeps it until its stdin closes: a competitor for tests.
//   node hold-lock.js <sr_uuid> [lock name, default "sr"]
import { acquireLock } from '../../lib/sr/lock.js';

const [sr, name = 'sr'] = process.argv.slice(2);
const lock = await acquireLock(sr, name, { timeoutMs: 30_000 });
if (!lock) {
  process.stdout.write('busy\n');
  process.exit(1);
}
process.stdout.write(`held ${process.pid}\n`);
process.stdin.resume();
process.stdin.on('end', () => {
  void lock.release().then(() => process.exit(0));
});
