// The collector keeps the stand-in xapi's database in step: it logs in as root
// over the socket (as the established collector does) and out again, forgets
// the images it removes, and moves `vhd-parent` when it relinks.
import fs from 'node:fs';
import test from 'ava';
import { createArgs, gc, xml } from '../helpers/sm.js';
import { readTree } from '../helpers/sr-state.js';
import type { XapiStandin } from '../helpers/xapi-standin.js';
import { MiB, withXapiSr } from './standin-world.js';

interface VdiReply {
  uuid: string;
}

/** Every record xapi holds is an image of the SR that is not a hidden leaf, and its vhd-parent is the image's parent. */
async function assertInStep(t: import('ava').ExecutionContext, ctx: Parameters<typeof readTree>[0], xapi: XapiStandin): Promise<void> {
  const tree = await readTree(ctx);
  const wanted = [...tree.entries()].filter(([, n]) => !(n.hidden && n.children.length === 0)).map(([u]) => u).sort();
  t.deepEqual([...xapi.vdis.values()].map((v) => String(v.location)).sort(), wanted, 'xapi holds exactly the images that are VDIs');
  for (const v of xapi.vdis.values()) {
    const node = tree.get(String(v.location))!;
    t.is<string | undefined, string | undefined>((v.sm_config as Record<string, string>)["vhd-parent"], node.parent, `vhd-parent of ${String(v.uuid).slice(0, 8)}`);
  }
}

test('sm-gc: a coalesced node is forgotten and its child relinked in the database; the run logs in and out', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi });
    const b1 = (await readTree(ctx)).get(vdi)!.parent!;
    const { uuid: s2 } = (await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi })) as VdiReply;
    const b2 = (await readTree(ctx)).get(vdi)!.parent!;
    await xml(ctx, 'vdi_delete', { vdi_uuid: s2 });
    t.truthy(xapi.vdiByUuid(b2), 'before the GC, the base copy of the deleted snapshot is still known');

    await gc(ctx);

    const after = await readTree(ctx);
    t.false(after.has(b2), 'the GC removed the base copy');
    t.is(after.get(vdi)!.parent, b1, 'and relinked the VDI onto the base below it');
    t.is(xapi.vdiByUuid(b2), undefined, 'the removed image is forgotten');
    t.is((xapi.vdiByUuid(vdi)!.sm_config as Record<string, string>)['vhd-parent'], b1, 'vhd-parent follows the relink');
    await assertInStep(t, ctx, xapi);
    t.is(xapi.callsOf('session.login_with_password').length, 1, 'the GC logs in once');
    t.is(xapi.callsOf('session.logout').length, 1, 'and out');
    t.true(xapi.sessions.size === 1, 'only the toolstack session is left');
    t.true(fs.readFileSync(ctx.smlog, 'utf8').includes('SMGC: ['));
  });
});

test('sm-gc: a leaf-coalesce forgets the parent it swallowed and clears the leaf vhd-parent', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(8 * MiB) })) as VdiReply;
    const { uuid: snap } = (await xml(ctx, 'vdi_snapshot', { vdi_uuid: vdi })) as VdiReply;
    const base = (await readTree(ctx)).get(vdi)!.parent!;
    await xml(ctx, 'vdi_delete', { vdi_uuid: snap });

    await gc(ctx);

    const after = await readTree(ctx);
    t.is(after.size, 1, 'one image left: the VDI');
    t.is(after.get(vdi)!.parent, undefined);
    t.is(xapi.vdiByUuid(base), undefined, 'the swallowed base copy is forgotten');
    t.is<string | undefined, string | undefined>((xapi.vdiByUuid(vdi)!.sm_config as Record<string, string>)["vhd-parent"], undefined);
    await assertInStep(t, ctx, xapi);
  });
});
