/**
 * Corruption: damaged images must be refused (VhdError) or, where the damage is
 * harmless by design, read correctly; checkChain must always report it and never
 * throw; nothing may crash, hang, or return wrong data without check noticing.
 */
import test, { ExecutionContext } from 'ava';
import { mkdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checkChain, createDifferencing, createDynamic, VhdChain, VhdError, VhdImage, writeAt } from '../../lib/vhd/index.js';
import { decodeHeader, encodeHeader } from '../../lib/vhd/format/header.js';
import {
  BLOCK,
  ByteModel,
  GiB,
  MiB,
  pointLocatorsAt,
  readBytes,
  Rng,
  SECTOR,
  withTempDir,
  withTimeout,
  writeBytes,
} from './helpers.js';

const SIZE = 12 * MiB;
const TIMEOUT = 15_000;

interface Fixture {
  dir: string;
  base: string;
  child: string;
  model: ByteModel;
  pristine: Map<string, Buffer>;
  /** Per image: BAT offset and entries, batmap header offset, locators, end of metadata. */
  layout: Map<string, { tableOffset: number; bat: number[]; batmapHeader: number; locators: { offset: number; length: number; code: number }[]; metadataEnd: number; size: number }>;
}

/** base: block 0 full, 1 and 3 partial; child: block 1 fragmented, 2 full, 4 partial. */
async function buildFixture(dir: string): Promise<Fixture> {
  const rng = new Rng(42);
  const base = join(dir, 'base.vhd');
  const child = join(dir, 'child.vhd');
  const model = new ByteModel(SIZE);
  const w = async (p: string, off: number, data: Buffer) => {
    await writeAt(p, data, off);
    model.write(off, data);
  };
  await createDynamic(base, SIZE);
  await w(base, 0, rng.bytes(BLOCK));
  await w(base, BLOCK + 5000, rng.bytes(100_000));
  await w(base, 3 * BLOCK + 7, rng.bytes(9));
  await createDifferencing(child, base);
  const chain = await VhdChain.open(child, { writable: true });
  for (let s = 0; s < 256; s += 2) {
    const d = rng.bytes(SECTOR);
    await chain.write(d, BLOCK + s * SECTOR);
    model.write(BLOCK + s * SECTOR, d);
  }
  await chain.close();
  await w(child, 2 * BLOCK, rng.bytes(BLOCK));
  await w(child, 4 * BLOCK + 100, rng.bytes(1000));
  const pristine = new Map<string, Buffer>();
  const layout: Fixture['layout'] = new Map();
  for (const p of [base, child]) {
    pristine.set(p, await readFile(p));
    const img = await VhdImage.open(p);
    const batBytes = Math.ceil((img.header.maxTableEntries * 4) / SECTOR) * SECTOR;
    const locators = img.header.locators
      .filter((l) => l.code !== 0)
      .map((l) => ({ offset: l.dataOffset, length: l.dataLength, code: l.code }));
    const ends = [img.header.tableOffset + batBytes + 2 * SECTOR, ...locators.map((l) => l.offset + SECTOR)];
    layout.set(p, {
      tableOffset: img.header.tableOffset,
      bat: [...img.bat],
      batmapHeader: img.header.tableOffset + batBytes,
      locators,
      metadataEnd: Math.max(...ends),
      size: pristine.get(p)!.length,
    });
    await img.close();
  }
  return { dir, base, child, model, pristine, layout };
}

async function restore(fx: Fixture): Promise<void> {
  for (const [p, bytes] of fx.pristine) await writeFile(p, bytes);
}

interface Probe {
  /** checkChain from the leaf, parents included. */
  problems: string[];
  /** VhdChain.open + a full read: the data, or the VhdError. */
  data?: Buffer;
  error?: VhdError;
  /** VhdImage.open of the damaged file alone. */
  imageError?: VhdError;
}

/** Opens, reads and checks; anything but a VhdError (or a hang) fails the test. */
async function probe(t: ExecutionContext, fx: Fixture, damaged: string, what: string): Promise<Probe> {
  const result: Probe = { problems: [] };
  try {
    const reports = await withTimeout(checkChain(fx.child, { parents: true }), TIMEOUT, `check (${what})`);
    result.problems = reports.flatMap((r) => r.problems);
  } catch (err) {
    t.fail(`checkChain threw on ${what}: ${(err as Error).stack}`);
  }
  try {
    const img = await withTimeout(VhdImage.open(damaged), TIMEOUT, `image open (${what})`);
    await img.close();
  } catch (err) {
    if (err instanceof VhdError) result.imageError = err;
    else t.fail(`VhdImage.open threw a non-VhdError on ${what}: ${(err as Error).stack}`);
  }
  try {
    const chain = await withTimeout(VhdChain.open(fx.child), TIMEOUT, `chain open (${what})`);
    try {
      const buf = Buffer.alloc(chain.virtualSize);
      await withTimeout(chain.read(buf, 0), TIMEOUT, `read (${what})`);
      result.data = buf;
    } finally {
      await chain.close();
    }
  } catch (err) {
    if (err instanceof VhdError) result.error = err;
    else t.fail(`open/read threw a non-VhdError on ${what}: ${(err as Error).stack}`);
  }
  return result;
}

const REJECT_KINDS = ['corrupt', 'chain', 'not-found'];

/** Damage that must be refused: open rejects with a VhdError, check reports it. */
function assertRefused(t: ExecutionContext, r: Probe, what: string, kinds = REJECT_KINDS): void {
  t.true(r.error !== undefined && kinds.includes(r.error.kind), `${what}: chain open must reject (got ${r.error ? r.error.kind + ': ' + r.error.message : 'success'})`);
  t.true(r.problems.length > 0, `${what}: check must report a problem`);
}

/** Damage the library tolerates by design: check reports it, and reads stay right. */
function assertToleratedAndReported(t: ExecutionContext, fx: Fixture, r: Probe, what: string): void {
  t.true(r.problems.length > 0, `${what}: check must report a problem`);
  t.is(r.error, undefined, `${what}: still opens (${r.error?.message})`);
  t.true(r.data !== undefined && r.data.equals(fx.model.buf), `${what}: reads stay correct`);
}

async function flip(path: string, offset: number, mask: number): Promise<void> {
  const b = await readBytes(path, offset, 1);
  await writeBytes(path, offset, Buffer.from([b[0] ^ mask]));
}

/** One fixture per test; each case damages it, probes, and restores the pristine bytes. */
async function withFixture(fn: (fx: Fixture) => Promise<void>): Promise<void> {
  await withTempDir(async (dir) => {
    const fx = await buildFixture(dir);
    const chain = await VhdChain.open(fx.child);
    const buf = Buffer.alloc(SIZE);
    await chain.read(buf, 0);
    await chain.close();
    if (!buf.equals(fx.model.buf)) throw new Error('fixture does not read as its model');
    await fn(fx);
  });
}

test('the fixture itself is valid', async (t) => {
  await withFixture(async (fx) => {
    const r = await probe(t, fx, fx.child, 'pristine');
    t.deepEqual(r.problems, []);
    t.true(r.data?.equals(fx.model.buf));
  });
});

test('bit flips in the primary footer (either image) are refused', async (t) => {
  await withFixture(async (fx) => {
    for (const p of [fx.child, fx.base]) {
      const end = fx.layout.get(p)!.size - 512;
      // Every byte of the fields of the child's footer, a sample of the rest and of the base's.
      const step = (byte: number) => (p === fx.child ? (byte < 96 ? 1 : 37) : 7);
      for (let byte = 0; byte < 512; byte += step(byte)) {
        await flip(p, end + byte, 1 << byte % 8);
        assertRefused(t, await probe(t, fx, p, `footer byte ${byte} of ${p}`), `footer byte ${byte}`);
        await flip(p, end + byte, 1 << byte % 8);
      }
    }
  });
});

test('bit flips in the footer copy at offset 0: reported by check, reads unaffected', async (t) => {
  await withFixture(async (fx) => {
    for (const p of [fx.child, fx.base]) {
      for (const byte of [0, 8, 20, 27, 33, 45, 52, 57, 60, 64, 70, 85, 200, 511]) {
        await flip(p, byte, 0x04);
        const r = await probe(t, fx, p, `footer copy byte ${byte}`);
        assertToleratedAndReported(t, fx, r, `footer copy byte ${byte}`);
        t.true(r.problems.some((m) => /backup footer/.test(m)));
        await flip(p, byte, 0x04);
      }
    }
  });
});

test('bit and byte damage in the dynamic header is refused', async (t) => {
  await withFixture(async (fx) => {
    for (const p of [fx.child, fx.base]) {
      const step = (byte: number) => (p === fx.child ? (byte < 80 ? 1 : byte < 800 ? 23 : 71) : 29);
      for (let byte = 0; byte < 1024; byte += step(byte)) {
        await flip(p, 512 + byte, 0x80 >> byte % 8);
        assertRefused(t, await probe(t, fx, p, `header byte ${byte}`), `header byte ${byte}`);
        await flip(p, 512 + byte, 0x80 >> byte % 8);
      }
      await writeBytes(p, 512 + 28, Buffer.from([0xff, 0xff, 0xff, 0xff])); // max table entries
      assertRefused(t, await probe(t, fx, p, 'max table entries 0xffffffff'), 'max table entries');
      await restore(fx);
    }
  });
});

test('BAT entry bit flips: open refuses every flip it can see; check reports every one', async (t) => {
  await withFixture(async (fx) => {
    let openedButCaughtByCheck = 0;
    for (const p of [fx.child, fx.base]) {
      const { tableOffset, bat } = fx.layout.get(p)!;
      // All of the child's entries; the base's first three (two allocated, one not).
      for (let e = 0; e < (p === fx.child ? bat.length : 3); e++) {
        for (let bit = 0; bit < 32; bit++) {
          const at = tableOffset + e * 4 + 3 - (bit >> 3);
          await flip(p, at, 1 << (bit & 7));
          const what = `${p === fx.child ? 'child' : 'base'} BAT[${e}] bit ${bit}`;
          const r = await probe(t, fx, p, what);
          t.true(r.problems.length > 0, `${what}: check must report`);
          if (bat[e] === 0xffffffff || bit >= 3) {
            // Out of the file, into metadata or onto another block: refused at open.
            assertRefused(t, r, what);
          } else if (r.error === undefined) {
            // A shift by 1-4 sectors stays inside the < 4 KiB gap blktap leaves before each
            // block's data: no structural check can see it (the BAT has no checksum), but
            // check's bitmap-versus-data scan does.
            openedButCaughtByCheck++;
          }
          await flip(p, at, 1 << (bit & 7));
        }
      }
    }
    t.log(`${openedButCaughtByCheck} low-bit BAT flips opened (and were reported by check)`);
  });
});

test('batmap header damage: refused, or ignored and reported; the map is then not trusted', async (t) => {
  await withFixture(async (fx) => {
    for (const p of [fx.child, fx.base]) {
      const at = fx.layout.get(p)!.batmapHeader;
      // cookie, offset, size: structural -> refused.
      for (const byte of [0, 3, 7, 14, 15, 19]) {
        await flip(p, at + byte, byte === 19 ? 0x01 : 0x20);
        assertRefused(t, await probe(t, fx, p, `batmap header byte ${byte}`), `batmap header byte ${byte}`);
        await flip(p, at + byte, byte === 19 ? 0x01 : 0x20);
      }
      // The map checksum: the map is no longer trusted, reads use the bitmaps.
      for (const byte of [24, 27]) {
        await flip(p, at + byte, 0x10);
        const r = await probe(t, fx, p, `batmap checksum byte ${byte}`);
        assertToleratedAndReported(t, fx, r, `batmap checksum byte ${byte}`);
        await flip(p, at + byte, 0x10);
      }
      // A newer batmap version: read-only opens ignore the map, writers refuse (as tapdisk).
      await flip(p, at + 22, 0x01); // 0x00010002 -> 0x00010102
      const r = await probe(t, fx, p, 'batmap version');
      assertToleratedAndReported(t, fx, r, 'newer batmap version');
      t.true(r.problems.some((m) => /batmap version/.test(m)));
      const err = await t.throwsAsync(VhdImage.open(p, true));
      t.true(err instanceof VhdError && err.kind === 'unsupported');
      await flip(p, at + 22, 0x01);
    }
  });
});

test('batmap map bit flips: check reports the checksum, reads fall back to bitmaps and stay right', async (t) => {
  await withFixture(async (fx) => {
    for (const p of [fx.child, fx.base]) {
      const map = fx.layout.get(p)!.batmapHeader + SECTOR;
      // Bits of blocks 0-5 (full and not) and a spare bit further on.
      for (const [byte, mask] of [[0, 0x80], [0, 0x40], [0, 0x20], [0, 0x10], [0, 0x08], [0, 0x04], [0, 0x01], [1, 0x80], [300, 0x02]]) {
        await flip(p, map + byte, mask);
        const what = `batmap map byte ${byte} mask ${mask}`;
        const r = await probe(t, fx, p, what);
        assertToleratedAndReported(t, fx, r, what);
        t.true(r.problems.some((m) => /batmap checksum/.test(m)), what);
        await flip(p, map + byte, mask);
      }
    }
  });
});

test('parent locator damage: reported by check; the parent is still found by another locator and verified by uuid', async (t) => {
  await withFixture(async (fx) => {
    const { locators } = fx.layout.get(fx.child)!;
    t.is(locators.length, 3);
    for (const l of locators) {
      for (let byte = l.code === 0x4d616358 ? 0 : 1; byte < l.length; byte += 2) {
        const mask = 1 << byte % 7;
        await flip(fx.child, l.offset + byte, mask);
        const what = `locator 0x${l.code.toString(16)} byte ${byte}`;
        const r = await probe(t, fx, fx.child, what);
        assertToleratedAndReported(t, fx, r, what);
        await flip(fx.child, l.offset + byte, mask);
      }
    }
    // All three locators damaged: the header's parent name still leads to the parent.
    for (const l of locators) await flip(fx.child, l.offset + l.length - 1, 0x01);
    assertToleratedAndReported(t, fx, await probe(t, fx, fx.child, 'all locators'), 'all locators damaged');
    await restore(fx);
  });
});

/** Rewrites every locator of `child` (and the header's parent name) to `target`, keeping checksums valid. */

test('locators pointing outside the directory are refused (kind "chain"), never followed', async (t) => {
  await withTempDir(async (top) => {
    const dir = join(top, 'sr');
    await mkdir(dir);
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    await createDynamic(base, 4 * MiB);
    await writeAt(base, Buffer.from('the real parent'), 0);
    await createDifferencing(child, base);
    // A decoy with the parent's uuid outside the directory: following it would "work".
    const decoy = join(top, 'x');
    await writeFile(decoy, await readFile(base));
    await writeAt(decoy, Buffer.from('THE DECOY!!!!!!'), 0);
    const pristine = await readFile(child);
    const cases = [
      { macx: 'file:///etc/passwd', w2ku: '/etc/passwd', w2ru: '/etc/passwd', name: '/etc/passwd' },
      { macx: 'file://./../x', w2ku: '..\\x', w2ru: '.\\..\\x', name: '../x' },
      { macx: 'file://../../x', w2ku: '..\\..\\x', w2ru: '../../x', name: '..' },
      { macx: 'file://./sub/../../x', w2ku: 'C:\\x', w2ru: '\\\\server\\x', name: '..\\x' },
    ];
    for (const c of cases) {
      await writeFile(child, pristine);
      await pointLocatorsAt(child, c);
      const err = await t.throwsAsync(withTimeout(VhdChain.open(child), TIMEOUT, 'open'));
      t.true(err instanceof VhdError && err.kind === 'chain', `${JSON.stringify(c)}: ${err}`);
      const reports = await checkChain(child, { parents: true });
      t.true(reports.some((r) => r.problems.some((m) => /outside/.test(m))), JSON.stringify(c));
      t.is(reports.length, 1, 'check does not follow it either');
    }
    // Only one locator bad (and the name fine): the parent is found, the decoy never read.
    await writeFile(child, pristine);
    await pointLocatorsAt(child, { macx: 'file://./../x', w2ku: '.\\base.vhd', w2ru: '.\\base.vhd', name: 'base.vhd' });
    const chain = await VhdChain.open(child);
    const buf = Buffer.alloc(15);
    await chain.read(buf, 0);
    await chain.close();
    t.is(buf.toString(), 'the real parent');
    const reports = await checkChain(child, { parents: true });
    t.true(reports[0].problems.some((m) => /outside/.test(m)), 'the bad locator is still reported');
  });
});

test('truncations anywhere are refused, never read past', async (t) => {
  await withFixture(async (fx) => {
    for (const p of [fx.child, fx.base]) {
      const size = fx.layout.get(p)!.size;
      const img = await VhdImage.open(p);
      const lastBlock = Math.max(...[...img.bat].filter((e) => e !== 0xffffffff)) * SECTOR;
      await img.close();
      const points: [string, number][] = [
        ['only the footer removed', size - 512],
        ['one byte short', size - 1],
        ['mid-block', lastBlock + 512 + BLOCK / 2],
        ['just after the bitmap', lastBlock + 512],
        ['back to the footer left before the last block', lastBlock - 3584 + 512],
        ['mid-BAT', 0x700],
        ['mid-header', 1024],
        ['footer copy only', 512],
        ['empty', 0],
      ];
      for (const [what, at] of points) {
        await truncate(p, at);
        assertRefused(t, await probe(t, fx, p, `${what} (${p})`), `${what} of ${p}`);
        await restore(fx);
      }
      // Growing by garbage (a torn extension) also hides the footer.
      await writeFile(p, Buffer.concat([fx.pristine.get(p)!, Buffer.alloc(4096, 0x41)]));
      assertRefused(t, await probe(t, fx, p, 'garbage appended'), 'garbage appended');
      await restore(fx);
    }
  });
});

test('truncation in the middle of a large BAT is refused', async (t) => {
  await withTempDir(async (dir) => {
    const p = join(dir, 'big.vhd');
    await createDynamic(p, 64 * MiB, { maxSize: 40 * GiB }); // 20480 BAT entries: 80 KiB
    await writeAt(p, Buffer.alloc(1000, 7), 10 * MiB);
    await truncate(p, 0x600 + 40 * 1024);
    const err = await t.throwsAsync(VhdImage.open(p));
    t.true(err instanceof VhdError && err.kind === 'corrupt');
    const reports = await checkChain(p);
    t.true(reports[0].problems.length > 0);
  });
});

test('a missing parent is a not-found error; check reports it', async (t) => {
  await withFixture(async (fx) => {
    await rm(fx.base);
    const r = await probe(t, fx, fx.child, 'missing parent');
    t.is(r.error?.kind, 'not-found');
    t.true(r.problems.some((m) => /not found/.test(m)));
    await restore(fx);
  });
});

for (const seed of [1, 2]) {
  test(`fuzz: random overwrites in the metadata never crash, hang, or go unnoticed (seed ${seed})`, async (t) => {
    await withFixture(async (fx) => {
      const rng = new Rng(seed);
      const stats = { refused: 0, opened: 0, reported: 0, silentWrong: 0 };
      for (let iter = 0; iter < 100; iter++) {
        const p = rng.chance(0.6) ? fx.child : fx.base;
        const lay = fx.layout.get(p)!;
        const undo: [number, Buffer][] = [];
        let touchedBitmap = false;
        for (let k = rng.range(1, 4); k > 0; k--) {
          let at: number;
          const region = rng.int(5);
          if (region === 0) at = lay.size - 512 + rng.int(512); // footer
          else if (region === 1) {
            // a block bitmap (not checksummed: only the no-crash properties apply)
            const entries = lay.bat.filter((e) => e !== 0xffffffff);
            at = rng.pick(entries) * SECTOR + rng.int(SECTOR);
            touchedBitmap = true;
          } else at = rng.int(lay.metadataEnd); // footer copy, header, BAT, batmap, locators
          const len = rng.range(1, 4);
          undo.push([at, await readBytes(p, at, len)]);
          await writeBytes(p, at, rng.chance(0.5) ? rng.bytes(len) : Buffer.alloc(len, rng.pick([0, 0xff])));
        }
        const what = `seed ${seed} iteration ${iter}: ${p} at ${undo.map((u) => u[0]).join(',')}`;
        const r = await probe(t, fx, p, what);
        if (r.error) stats.refused++;
        else stats.opened++;
        if (r.problems.length > 0) stats.reported++;
        if (r.data && !r.data.equals(fx.model.buf)) {
          if (touchedBitmap) stats.silentWrong += r.problems.length === 0 ? 1 : 0;
          else t.true(r.problems.length > 0, `${what}: wrong data and check saw nothing`);
        }
        for (const [at, bytes] of undo.reverse()) await writeBytes(p, at, bytes);
      }
      t.log(`seed ${seed}: ${JSON.stringify(stats)} (silentWrong counts only bitmap damage that reads as other valid data)`);
      t.true(stats.refused > 0 && stats.opened > 0);
    });
  });
}

test('a parent loop written into the headers is refused, never followed forever', async (t) => {
  await withTempDir(async (dir) => {
    const base = join(dir, 'base.vhd');
    const c1 = join(dir, 'c1.vhd');
    const c2 = join(dir, 'c2.vhd');
    await createDynamic(base, 4 * MiB);
    await createDifferencing(c1, base);
    await createDifferencing(c2, c1);
    // Point c1 at c2 by hand (setParent refuses to): uuid and every locator.
    const c2uuid = (await readBytes(c2, 68, 16));
    const h = decodeHeader(await readBytes(c1, 512, 1024));
    if (typeof h === 'string') return t.fail(h);
    h.parentUuid = Buffer.from(c2uuid);
    await writeBytes(c1, 512, encodeHeader(h));
    await pointLocatorsAt(c1, { macx: 'file://./c2.vhd', w2ku: '.\\c2.vhd', w2ru: '.\\c2.vhd', name: 'c2.vhd' });
    const err = await t.throwsAsync(withTimeout(VhdChain.open(c2), TIMEOUT, 'open loop'));
    t.true(err instanceof VhdError && err.kind === 'chain' && /loop/.test(err.message), String(err));
    const reports = await withTimeout(checkChain(c2, { parents: true }), TIMEOUT, 'check loop');
    t.true(reports.some((r) => r.problems.includes('parent loop')));
  });
});
