// Every fault point in the SR layer, the GC and the datapath is killed by some crash test: a
// new point that no test reaches fails here instead of staying untested. (The
// LVM backend's points are covered by the VM tier, not by the host tests.)
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { REPO } from '../helpers/sm.js';

const EXCLUDED = (file: string) => /(^|\/)(lvm-[^/]*|mgt-[^/]*)\.ts$/.test(file);

function sources(dir: string): string[] {
  return fs
    .readdirSync(path.join(REPO, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => path.join(dir, f));
}

/** Every point a `faultPoint(...)` call can reach; a call whose name cannot be read is reported. */
function faultPoints(): { points: Map<string, string>; unreadable: string[] } {
  const journal = fs.readFileSync(path.join(REPO, 'lib/sr/journal.ts'), 'utf8');
  const kinds = [...journal.matchAll(/\{ kind: '([a-z]+)'/g)].map((m) => m[1]);
  const points = new Map<string, string>();
  const unreadable: string[] = [];
  for (const file of [...sources('lib'), ...sources('gc')].filter((f) => !EXCLUDED(f))) {
    const text = fs.readFileSync(path.join(REPO, file), 'utf8');
    for (const m of text.matchAll(/faultPoint\(([^)]*)\)/g)) {
      const arg = m[1].trim();
      const literal = /^'([a-z0-9-]+)'$/.exec(arg);
      if (literal) points.set(literal[1], file);
      else if (arg === '`${j.kind}-journaled`') for (const k of kinds) points.set(`${k}-journaled`, file);
      else if (arg !== 'name: string') unreadable.push(`${file}: faultPoint(${arg})`);
    }
  }
  return { points, unreadable };
}

test('every fault point of lib/ and gc/ is killed by a crash test', (t) => {
  const { points, unreadable } = faultPoints();
  t.deepEqual(unreadable, [], 'fault point names are literals (or the journal kinds), so they can be listed');
  t.true(points.size >= 20, `the fault points were found (${points.size})`);
  const tests = [...sources('test/crash'), ...sources('test/datapath')]
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => fs.readFileSync(path.join(REPO, f), 'utf8'))
    .join('\n');
  const untested = [...points].filter(([p]) => !new RegExp(`'${p}(:\\d+)?'`).test(tests)).map(([p, file]) => `${p} (${file})`);
  t.deepEqual(untested, [], 'every fault point is named by a crash test');
  t.log(`${points.size} fault points: ${[...points.keys()].sort().join(', ')}`);
});
