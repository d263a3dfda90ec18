// An SR made by an earlier version (all metadata in one `.sm/metadata.json`)
// is converted to one record per VDI by the master's first sr_attach. Killed
// (SIGKILL, by SM_FAULT) at each step of the conversion, the next sr_attach
// finishes it: the SR attaches, every record is exactly the old document's,
// the old document is gone, nothing is left behind, and the SR is usable.
// A slave's attach reads the old layout and converts nothing.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { newVdiRecord } from '../../lib/sr/metadata.js';
import { assertRecoveredAndUsable } from '../helpers/crash.js';
import { MiB } from '../helpers/model.js';
import { callDriver, makeSmEnv, request } from '../helpers/sm.js';
import { readMetadata, strayFiles, writeLegacyMetadata, type Metadata } from '../helpers/sr-state.js';
import { World } from '../helpers/world.js';

const legacyFile = (dir: string) => path.join(dir, '.sm', 'metadata.json');

test('the conversion from the single-document layout killed at each step: the next sr_attach finishes it, every record exact', async (t) => {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    await w.create('V', 8 * MiB);
    await w.fill('V', 0, 2 * MiB);
    await w.snapshot('V', 'S');
    await w.clone('V', 'C');
    await w.create('W', 4 * MiB);
    const old: Metadata = readMetadata(ctx);
    // Records of VDIs whose images are elsewhere (a scan drops them later): enough for several conversion batches.
    for (let i = 0; i < 230; i++) {
      const u = randomUUID();
      old.vdis[u] = newVdiRecord(u, { name_label: `extra ${i}`, sm_config: { i: String(i) } });
    }
    await w.s.call('sr_detach');
    const expected = { ...old, version: 2 };

    // A slave attaches the old layout as it is.
    writeLegacyMetadata(ctx, old);
    const asSlave = await callDriver('sr_attach', request(ctx, 'sr_attach', { device_config: { SRmaster: 'false' } }), ctx.env);
    t.is(asSlave.code, 0, asSlave.stderr);
    t.true(fs.existsSync(legacyFile(ctx.location)), 'a slave converts nothing');
    t.false(fs.existsSync(path.join(ctx.location, '.sm', 'sr.json')));
    await callDriver('sr_detach', request(ctx, 'sr_detach'), ctx.env);

    const points = ['metadata-temp-written', 'metadata-renamed', 'convert-batch-written', 'convert-batch-written:2', 'convert-records-written', 'convert-sr-written'];
    for (const point of points) {
      writeLegacyMetadata(ctx, old);
      // An earlier, interrupted conversion of another state left a record the document does not hold.
      const stray = randomUUID();
      fs.mkdirSync(path.join(ctx.location, '.sm', 'vdi'), { recursive: true });
      fs.writeFileSync(path.join(ctx.location, '.sm', 'vdi', `${stray}.json`), JSON.stringify(newVdiRecord(stray)));
      const killed = await callDriver('sr_attach', request(ctx, 'sr_attach'), { ...ctx.env, SM_FAULT: point });
      t.is(killed.signal, 'SIGKILL', `${point}: sr_attach died by SIGKILL (exit ${killed.code}: ${killed.stderr})`);
      t.is(killed.stdout, '', `${point}: no response was sent`);
      await w.s.call('sr_attach');
      t.deepEqual(readMetadata(ctx), expected, `${point}: every record exactly the old document's, and only those`);
      t.false(fs.existsSync(legacyFile(ctx.location)), `${point}: the old document is gone`);
      t.deepEqual(strayFiles(ctx), [], `${point}: no temp file or journal left`);
      await w.s.call('sr_detach');
    }
    await w.s.call('sr_attach');
    await w.scan(); // drops the records of images that are not in this SR
    await assertRecoveredAndUsable(t, w, 'converted', 0, true);
    t.is(readMetadata(ctx).vdis[w.uuid('W')]!.name_label, 'W', 'names survive the conversion');
  } finally {
    await w.close();
    await ctx.cleanup();
  }
});

test('sr_attach refuses a damaged single-layout document before converting anything', async (t) => {
  const ctx = await makeSmEnv();
  const w = await World.open(ctx);
  try {
    await w.create('V', 4 * MiB);
    const old = readMetadata(ctx);
    await w.s.call('sr_detach');
    writeLegacyMetadata(ctx, old);
    const text = fs.readFileSync(legacyFile(ctx.location), 'utf8');
    fs.writeFileSync(legacyFile(ctx.location), text.slice(0, text.length / 2));
    const fault = await w.s.fault('sr_attach');
    t.is(fault.code, 181, 'MetadataError');
    t.false(fs.existsSync(path.join(ctx.location, '.sm', 'sr.json')), 'nothing converted');
    t.is(fs.readFileSync(legacyFile(ctx.location), 'utf8'), text.slice(0, text.length / 2), 'the document left as it is');
  } finally {
    await w.s.stop().catch(() => undefined);
    await ctx.cleanup();
  }
});
