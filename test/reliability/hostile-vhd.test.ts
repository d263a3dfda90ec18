// Hostile VHD images inside an attached File SR: seeded bit flips in the
// footer, its copy, the header, the BAT, the batmap, a sector bitmap and the
// parent locators, truncations, and parent locators aimed outside the SR
// (/etc/passwd, ../../x, a valid image outside the SR, a FIFO outside the SR
// that blocks whoever opens it). Then sr_scan, vdi_attach/detach, vdi_snapshot,
// vdi_clone, vdi_resize, vdi_delete on the damaged VDI, `sm-gc -g`, `sm-vhd
// check -p`, `sm-vhd query -p` and `sm tree`: every
// verb answers (a result, or an SM fault other than 1200) in bounded time, the
// collector ends by itself, nothing outside the SR is opened, and the healthy
// VDI keeps its data and still works.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { decodeHeader } from '../../lib/vhd/format/header.js';
import { VhdChain } from '../../lib/vhd/index.js';
import { MiB, pattern } from '../helpers/model.js';
import { callJson, createAttachedSr, createVdi, makeSmEnv, run, smCli, smGc, smVhd, snapshot, tailOfLog, withServer, type SmEnv } from '../helpers/sm.js';
import { imagePath, writeVdi } from '../helpers/sr-state.js';
import { seeded, soak, Tally, within } from '../helpers/tally.js';
import { pointLocatorsAt } from '../vhd/helpers.js';

const SIZE = 8 * MiB;

async function vdiDigest(ctx: SmEnv, uuid: string): Promise<string> {
  const chain = await VhdChain.open(imagePath(ctx, uuid));
  try {
    const buf = Buffer.alloc(chain.virtualSize);
    await chain.read(buf, 0);
    return createHash('sha256').update(buf).digest('hex');
  } finally {
    await chain.close();
  }
}

interface Region {
  name: string;
  offset: number;
  length: number;
}

/** Where the metadata of an image lies, from its own header. */
function regionsOf(file: string): Region[] {
  const bytes = fs.readFileSync(file);
  const h = decodeHeader(bytes.subarray(512, 1536));
  if (typeof h === 'string') throw new Error(h);
  const bat = Number(h.tableOffset);
  const out: Region[] = [
    { name: 'footer', offset: bytes.length - 512, length: 512 },
    { name: 'footer copy', offset: 0, length: 512 },
    { name: 'header', offset: 512, length: 1024 },
    { name: 'BAT', offset: bat, length: 4 * h.maxTableEntries },
  ];
  const batmap = bytes.indexOf('tdbatmap');
  if (batmap > 0) out.push({ name: 'batmap', offset: batmap, length: 512 + 512 });
  const first = bytes.readUInt32BE(bat);
  if (first !== 0xffffffff) out.push({ name: 'sector bitmap', offset: first * 512, length: 512 });
  for (const l of h.locators) if (l.code !== 0) out.push({ name: `locator ${l.code.toString(16)}`, offset: Number(l.dataOffset), length: Math.max(l.dataLength, 1) });
  return out;
}

function flipBits(file: string, r: Region, rnd: () => number, n: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    for (let i = 0; i < n; i++) {
      const at = r.offset + Math.floor(rnd() * r.length);
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, at);
      b[0]! ^= 1 << Math.floor(rnd() * 8);
      fs.writeSync(fd, b, 0, 1, at);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Whether some process holds the FIFO open for reading (a non-blocking writer open succeeds only then). */
function fifoOpened(fifo: string): boolean {
  try {
    fs.closeSync(fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK));
    return true;
  } catch {
    return false;
  }
}

test('damaged images and escaping parent locators: every verb answers with an SM code, the healthy VDI keeps its data', async (t) => {
  const ctx = await makeSmEnv();
  const tally = new Tally('VHD damage in a File SR');
  try {
    const { victim, healthy } = await withServer(ctx, async (s) => {
      await createAttachedSr(s);
      const victim = await createVdi(s, SIZE, 'victim');
      const healthy = await createVdi(s, SIZE, 'healthy');
      await writeVdi(ctx, victim, 0, pattern(1, 3 * MiB));
      await writeVdi(ctx, healthy, MiB, pattern(2, 3 * MiB));
      await snapshot(s, victim);
      await snapshot(s, healthy);
      await writeVdi(ctx, victim, 4 * MiB, pattern(3, 2 * MiB));
      await writeVdi(ctx, healthy, 5 * MiB, pattern(4, MiB));
      return { victim, healthy };
    });
    const healthyDigest = await vdiDigest(ctx, healthy);
    const leaf = imagePath(ctx, victim);
    const parent = path.join(ctx.location, decodeHeaderOf(leaf));
    // Outside the SR: a valid image (a copy of the real parent), a FIFO, and /etc/passwd-like files.
    const outsideImage = path.join(ctx.base, 'outside.vhd');
    fs.copyFileSync(parent, outsideImage);
    const fifo = path.join(ctx.base, 'parent.fifo');
    const mk = await run('mkfifo', [fifo]);
    t.is(mk.code, 0, mk.stderr);
    const saved = path.join(ctx.base, 'pristine');
    fs.mkdirSync(saved);
    for (const dir of [ctx.root, ctx.location]) t.is((await run('cp', ['-a', dir, path.join(saved, path.basename(dir))])).code, 0);

    const rnd = seeded(1234);
    const flips = soak ? 4 : 1;
    const damage: Array<{ what: string; apply: () => Promise<void> | void }> = [];
    for (const [file, who] of [[leaf, 'leaf'], [parent, 'parent']] as const) {
      // By default every region of the leaf once (one parent locator) and the parent's header; SM_SOAK=1: all, 4 times.
      const locators = regionsOf(file).filter((r) => r.name.startsWith('locator'));
      for (const r of regionsOf(file)) {
        if (!soak && (who === 'parent' ? r.name !== 'header' : r.name.startsWith('locator') && r.name !== locators[0]?.name)) continue;
        for (let k = 0; k < flips; k++) damage.push({ what: `${who} ${r.name}: 3 bit flips`, apply: () => flipBits(file, r, rnd, 3) });
      }
    }
    const size = fs.statSync(leaf).size;
    for (const len of soak ? [0, 511, 1536, size - 513, size - 1] : [511, size - 1]) damage.push({ what: `leaf truncated to ${len}`, apply: () => fs.truncateSync(leaf, len) });
    const escape = (target: string) => ({ macx: `file://${target}`, w2ku: target, w2ru: target, name: target });
    for (const [what, target] of [
      ['/etc/passwd', '/etc/passwd'],
      ['../../x', '../../x'],
      ['a valid image outside the SR', outsideImage],
      ['a FIFO outside the SR', fifo],
    ] as const) {
      damage.push({ what: `parent locators -> ${what}`, apply: () => pointLocatorsAt(leaf, escape(target)) });
    }

    const verbs = (vdi: string, size: number) => [
      { verb: 'sr_scan' },
      { verb: 'vdi_attach', extra: { vdi_uuid: vdi, vdi_location: vdi, args: ['false'] } },
      { verb: 'vdi_detach', extra: { vdi_uuid: vdi, vdi_location: vdi } },
      { verb: 'vdi_snapshot', extra: { vdi_uuid: vdi, vdi_location: vdi } },
      { verb: 'vdi_clone', extra: { vdi_uuid: vdi, vdi_location: vdi } },
      { verb: 'vdi_resize', extra: { vdi_uuid: vdi, vdi_location: vdi, args: [String(size)] } },
      { verb: 'vdi_delete', extra: { vdi_uuid: vdi, vdi_location: vdi } },
    ];
    for (const d of damage) {
      for (const dir of [ctx.root, ctx.location]) {
        fs.rmSync(dir, { recursive: true, force: true });
        t.is((await run('cp', ['-a', path.join(saved, path.basename(dir)), dir])).code, 0);
      }
      await d.apply();
      let opened = false;
      const poll = setInterval(() => (opened ||= fifoOpened(fifo)), 20);
      try {
        const { responses, run: r } = await callJson(ctx, verbs(victim, 2 * SIZE));
        const answers = responses.map((a) => (a.error ? `${a.error.code} ${a.error.data?.opterr ?? ''}` : 'ok'));
        const right = r.code === 0 && responses.length === 7 && responses.every((a) => !a.error || (a.error.code > 0 && a.error.code !== 1200));
        t.true(right, `${d.what}: exit ${r.code} ${r.signal ?? ''}: ${answers.join(' | ')} ${r.stderr.slice(-300)}\n${process.env.SM_DEBUG ? tailOfLog(ctx, 40) : ''}`);
        within(t, tally, `${d.what} (7 verbs)`, right, r);
        const g = await smGc(ctx, ['-g'], ctx.env, 30_000);
        t.is(g.signal, null, `${d.what}: sm-gc ends by itself`);
        t.false(/TypeError|RangeError|ReferenceError/.test(g.stderr), `${d.what}: sm-gc has no uncaught error: ${g.stderr.slice(-300)}`);
        within(t, tally, `${d.what} (sm-gc -g)`, g.signal === null, g);
        // The other readers of images: sm-vhd check/query with parents, and sm tree.
        for (const [what, res] of [
          ['sm-vhd check -p', await smVhd(['check', '-n', leaf, '-p'], ctx.env)],
          ['sm-vhd query -p', await smVhd(['query', '-n', leaf, '-p'], ctx.env)],
          ['sm tree', await smCli(ctx, ['tree', ctx.sr])],
        ] as const) {
          const clean = res.signal === null && !/TypeError|RangeError|ReferenceError|Uncaught/.test(res.stderr);
          t.true(clean, `${d.what}: ${what} ends by itself with no uncaught error: ${res.code} ${res.stderr.slice(-300)}`);
          within(t, tally, `${d.what} (${what})`, clean, res);
        }
        // The healthy VDI: same data, and its verbs still work.
        const digestNow = await vdiDigest(ctx, healthy).catch((e: Error) => e.message);
        if (digestNow !== healthyDigest) tally.dataLost++;
        t.is(digestNow, healthyDigest, `${d.what}: the healthy VDI keeps its data`);
        const ok = await callJson(ctx, [
          { verb: 'vdi_attach', extra: { vdi_uuid: healthy, vdi_location: healthy, args: ['false'] } },
          { verb: 'vdi_detach', extra: { vdi_uuid: healthy, vdi_location: healthy } },
        ]);
        t.true(ok.responses.length === 2 && ok.responses.every((a) => !a.error), `${d.what}: the healthy VDI still attaches: ${JSON.stringify(ok.responses).slice(0, 300)}`);
      } finally {
        clearInterval(poll);
      }
      if (opened) tally.escapes++;
      t.false(opened, `${d.what}: the FIFO outside the SR was never opened`);
    }
    t.is(fs.readFileSync(outsideImage).equals(fs.readFileSync(path.join(saved, path.basename(ctx.location), path.basename(parent)))), true, 'the image outside the SR is untouched');
    tally.report(t);
  } finally {
    await ctx.cleanup();
  }
});

/** The file name a differencing image names as its parent. */
function decodeHeaderOf(file: string): string {
  const bytes = fs.readFileSync(file);
  const h = decodeHeader(bytes.subarray(512, 1536));
  if (typeof h === 'string' || !h.parentUnicodeName) throw new Error(`${file}: no parent`);
  return h.parentUnicodeName;
}
