// Refcounted LV activation (lib/sr/lv-holds.ts) over real holder files under a
// temp SM_ROOT and marker files standing for active LVs: shared bases stay
// active while any chain holds them, a second vdi_activate counts once, a
// holder killed with SIGKILL (holding, or mid-activation) is dropped and its
// LVs deactivated by the next settle, and nothing a live holder names is ever
// deactivated.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { LvHolds, lvHoldDir, processStartTime, resetLvHolds } from '../../lib/sr/lv-holds.js';
import { MarkerLvs } from '../helpers/marker-lvs.js';

process.env.SM_ROOT = mkdtempSync(join(tmpdir(), 'lv-holds-'));
const HOLD_LVS = fileURLToPath(new URL('../helpers/hold-lvs.js', import.meta.url));

function world() {
  const sr = randomUUID();
  const lvs = new MarkerLvs(join(process.env.SM_ROOT!, 'active', sr));
  const holds = new LvHolds(sr, lvs);
  const active = async () => [...(await lvs.active())].sort();
  return { sr, lvs, holds, active };
}

const ids = (n: number) => Array.from({ length: n }, () => randomUUID());
const sorted = (xs: string[]) => [...xs].sort();
const always = async () => true;

/** A holder in another process; resolves once it printed `until` (`activating` or `held`). */
async function holderProcess(sr: string, dir: string, uuids: string[], until: 'activating' | 'held', stepMs = 0) {
  const child: ChildProcess = spawn(process.execPath, [HOLD_LVS, sr, dir, String(stepMs), ...uuids], { env: process.env, stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_code, signal) => r(signal)));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes(until)) resolve();
    });
    child.on('exit', () => reject(new Error(`holder exited early: ${out}`)));
  });
  return { child, exited };
}

test('two VDIs on one base: the base stays active until the last one is deactivated', async (t) => {
  const { holds, active } = world();
  const [base, a, b] = ids(3);
  await holds.holdVdi(a!, [a!, base!]);
  await holds.holdVdi(b!, [b!, base!]);
  t.deepEqual(await active(), sorted([a!, b!, base!]));
  t.is((await holds.counts()).get(base!), 2, 'the base is held twice');
  await holds.releaseVdi(a!);
  t.deepEqual(await active(), sorted([b!, base!]), 'the first deactivation leaves the shared base');
  await holds.releaseVdi(b!);
  t.deepEqual(await active(), [], 'the last one takes the base with it');
  t.deepEqual(readdirSync(lvHoldDir(holds.sr)), [], 'no holder left');
});

test('a second vdi_activate of the same VDI counts once; one deactivate releases it', async (t) => {
  const { holds, active, lvs } = world();
  const [base, a] = ids(2);
  await holds.holdVdi(a!, [a!, base!]);
  await holds.holdVdi(a!, [a!, base!]);
  t.is((await holds.counts()).get(base!), 1);
  t.is(lvs.calls.filter((c) => c.active).length, 1, 'the second activation finds everything active: no switch');
  await holds.releaseVdi(a!);
  t.deepEqual(await active(), []);
});

test('work holds: many images switched in one call each way; what a VDI holds survives the work', async (t) => {
  const { holds, active, lvs } = world();
  const [base, a, x, y] = ids(4);
  await holds.holdVdi(a!, [a!, base!]);
  lvs.calls = [];
  const work = holds.temp();
  await work.add([a!, base!, x!, y!]);
  t.deepEqual(lvs.calls, [{ active: true, uuids: [x!, y!] }], 'only the inactive ones, in one call');
  await work.add([x!]); // already held and active: no lock, no switch
  await work.release();
  t.deepEqual(lvs.calls[1], { active: false, uuids: [x!, y!] }, 'the unheld ones, in one call');
  t.deepEqual(await active(), sorted([a!, base!]), 'the activated VDI keeps its chain');
  await holds.releaseVdi(a!);
  t.deepEqual(await active(), []);
});

test('an activation that fails still leaves a hold its owner releases', async (t) => {
  const { holds, active, lvs } = world();
  const [good, bad] = ids(2);
  lvs.failing.add(bad!);
  const work = holds.temp();
  await t.throwsAsync(work.add([good!, bad!]), { message: /cannot activate/ });
  t.is((await holds.counts()).get(bad!), 1, 'named before the activation was tried');
  await work.release();
  t.deepEqual(await holds.counts(), new Map(), 'the holder is gone');
  t.deepEqual(await active(), []);
});

test('a rename keeps the holders: an active VDI snapshotted holds its new base too', async (t) => {
  const { holds, active } = world();
  const [vdi, newBase, snap] = ids(3);
  await holds.holdVdi(vdi!, [vdi!]);
  const work = holds.temp();
  await work.add([vdi!]);
  await holds.follow(vdi!, newBase!); // the VDI's image becomes the base
  await work.add([vdi!, snap!], false); // the new leaf and the snapshot, created active
  await new MarkerLvs(join(process.env.SM_ROOT!, 'active', holds.sr)).activate([newBase!, snap!]);
  await work.release();
  t.deepEqual(await active(), sorted([vdi!, newBase!]), 'leaf and base stay active, the snapshot is deactivated');
  await holds.releaseVdi(vdi!);
  t.deepEqual(await active(), []);
});

test('a holder killed with SIGKILL: its LVs are deactivated by the next settle, except what others hold', async (t) => {
  const { sr, lvs, holds, active } = world();
  const [own, shared, v] = ids(3);
  const killed = await holderProcess(sr, lvs.dir, [own!, shared!], 'held');
  await holds.holdVdi(v!, [v!, shared!]);
  killed.child.kill('SIGKILL');
  t.is(await killed.exited, 'SIGKILL');
  t.is((await holds.counts()).get(shared!), 2, 'the dead holder still counts until settled');
  const dropped = await holds.settle(always);
  t.is(dropped.length, 1);
  t.deepEqual(await active(), sorted([v!, shared!]), 'the killed process`s own LV is deactivated, the shared one kept');
  t.is((await holds.counts()).get(shared!), 1);
  await holds.releaseVdi(v!);
  t.deepEqual(await active(), []);
});

test('a holder killed mid-activation: every LV it named is deactivated by the next settle', async (t) => {
  const { sr, lvs, holds, active } = world();
  const named = ids(3);
  const killed = await holderProcess(sr, lvs.dir, named, 'activating', 300);
  // Killed once the first LV is active and the others are not yet.
  while ((await active()).length === 0) await new Promise((r) => setTimeout(r, 10));
  killed.child.kill('SIGKILL');
  await killed.exited;
  t.true((await active()).length < 3, 'killed mid-activation');
  await holds.settle(always);
  t.deepEqual(await active(), []);
  t.deepEqual(readdirSync(lvHoldDir(sr)), []);
});

test('a live holder in another process is never settled away', async (t) => {
  const { sr, lvs, holds, active } = world();
  const [u] = ids(1);
  const live = await holderProcess(sr, lvs.dir, [u!], 'held');
  t.deepEqual(await holds.settle(always, true), []);
  t.deepEqual(await active(), [u!], 'even a settle of everything keeps it');
  live.child.stdin!.end();
  await live.exited;
  t.deepEqual(await active(), [], 'released by its owner');
});

test('a temp holder whose pid now names another process (reused pid) is stale', async (t) => {
  const { sr, lvs, holds, active } = world();
  const [u] = ids(1);
  await mkdir(lvHoldDir(sr), { recursive: true });
  // This test process's pid with another start time: the holder's process is gone, its pid reused.
  const start = processStartTime(process.pid);
  t.truthy(start, '/proc gives start times');
  writeFileSync(join(lvHoldDir(sr), `tmp-${process.pid}-abcd.json`), JSON.stringify({ lvs: [u], pid: process.pid, started: `${start}9` }));
  await lvs.activate([u!]);
  t.deepEqual(await holds.settle(always), [`tmp-${process.pid}-abcd.json`]);
  t.deepEqual(await active(), []);
});

test('a VDI hold whose VDI is no longer active (killed between the two steps of vdi_deactivate) is dropped', async (t) => {
  const { holds, active } = world();
  const [base, a, b] = ids(3);
  await holds.holdVdi(a!, [a!, base!]);
  await holds.holdVdi(b!, [b!, base!]);
  await holds.settle(async (vdi) => vdi === b);
  t.deepEqual(await active(), sorted([b!, base!]));
});

test('settle(all) at sr_attach: active LVs nobody holds are deactivated; reset forgets every hold', async (t) => {
  const { sr, lvs, holds, active } = world();
  const [stray, a] = ids(2);
  await lvs.activate([stray!]);
  await holds.holdVdi(a!, [a!]);
  await holds.settle(always, true);
  t.deepEqual(await active(), [a!]);
  await resetLvHolds(sr);
  t.deepEqual(await holds.counts(), new Map());
});

test("a changed-block log's LV is held by its LV name like an image: with the VDI's chain, by a verb's hold, and joined to an active VDI's hold", async (t) => {
  const { holds, active } = world();
  const [a, base, b] = ids(3);
  const logA = `${a!}.cbtlog`;
  const logB = `${b!}.cbtlog`;
  await holds.holdVdi(a!, [a!, base!, logA]);
  t.deepEqual(await active(), sorted([a!, base!, logA]), 'vdi_activate: the chain and the log the datapath marks');
  const work = holds.temp();
  await work.add([logB, `${logB}.tmp`, 'not-a-key', `${b!}.vhd`]);
  t.deepEqual(await active(), sorted([a!, base!, logA, logB, `${logB}.tmp`]), 'only images and log LVs are held');
  await holds.joinVdi(b!, [logB]); // b is not active here: no holder is made for it
  await holds.joinVdi(a!, [`${a!}.cbtlog`]); // already named: unchanged
  await work.release();
  t.deepEqual(await active(), sorted([a!, base!, logA]), "the verb's logs go with its hold");
  await work.add([logB]);
  await holds.holdVdi(b!, [b!]);
  await holds.joinVdi(b!, [logB]); // enabled while b is active: its datapath keeps the log
  await work.release();
  t.true((await active()).includes(logB), "a log joined to the active VDI's hold outlives the verb");
  await holds.releaseVdi(a!);
  await holds.releaseVdi(b!);
  t.deepEqual(await active(), [], 'deactivated with their VDIs');
  t.deepEqual(readdirSync(lvHoldDir(holds.sr)), [], 'no holder left');
});
