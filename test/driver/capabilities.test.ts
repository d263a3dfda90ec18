// Every capability a driver advertises is used here as the toolstack uses it
// (reference: xapi-callbacks.md section 6), through the real executable called
// as xapi calls it (argv XML-RPC). The table maps each capability to a
// scenario; a capability advertised without a scenario fails the test, so a
// capability cannot be added without showing that it works.
//
// FileSR runs here. NFSSR and LVMoISCSISR need an NFS server and an iSCSI
// target (the VM tier has them): here their advertised lists are checked
// against the same table, and every verb capability they advertise is served
// by the same shared verbs (lib/verbs/sr-driver.ts) that the FileSR scenarios run.
import fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { createDynamic, VhdChain, writeAt } from '../../lib/vhd/index.js';
import { encodeMethodCall, parseMethodCall } from '../../lib/smapi/index.js';
import { fromXapiBase64, isSet, toXapiBase64 } from '../../lib/cbt/bitmap.js';
import { MiB, pattern } from '../helpers/model.js';
import { callDriverRaw, createArgs, makeSmEnv, readSmlog, REPO, run, xml, type SmEnv } from '../helpers/sm.js';
import { isServed, openNbd, qemuIo, shortSocket } from '../helpers/nbd-vdi.js';
import { checkProblems, imagePath, readMetadata } from '../helpers/sr-state.js';

interface State {
  ctx: SmEnv;
  t: ExecutionContext;
  /** The VDI the scenarios build on: created, written, served, snapshotted... */
  V?: string;
  clone?: string;
  /** What V's first MiB holds once written. */
  data: Buffer;
}

type Scenario = (s: State) => Promise<void>;

const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });

async function readVdi(ctx: SmEnv, vdi: string, offset: number, length: number): Promise<Buffer> {
  const chain = await VhdChain.open(imagePath(ctx, vdi));
  try {
    const buf = Buffer.alloc(length);
    await chain.read(buf, offset);
    return buf;
  } finally {
    await chain.close();
  }
}

async function virtualSize(ctx: SmEnv, vdi: string): Promise<number> {
  const chain = await VhdChain.open(imagePath(ctx, vdi));
  const size = chain.virtualSize;
  await chain.close();
  return size;
}

/** In the order a toolstack's use of an SR runs them; each builds on the ones before. */
const SCENARIOS: Array<[capability: string, scenario: Scenario]> = [
  ['SR_CREATE', async ({ ctx, t }) => {
    t.is(await xml(ctx, 'sr_create', { args: ['0'] }), null);
    t.true(fs.existsSync(path.join(ctx.location, '.sm')), 'the SR has its metadata');
  }],
  ['SR_ATTACH', async ({ ctx, t }) => {
    t.is(await xml(ctx, 'sr_attach'), null);
    t.true(fs.existsSync(ctx.mount), 'reachable at run/sr-mount/<sr>');
  }],
  ['SR_PROBE', async ({ ctx, t }) => {
    t.regex(String(await xml(ctx, 'sr_probe')), new RegExp(`<UUID>${ctx.sr}</UUID>`));
  }],
  ['VDI_CREATE', async (s) => {
    const r = (await xml(s.ctx, 'vdi_create', { args: createArgs(8 * MiB), vdi_type: 'user' })) as { uuid: string; location: string };
    s.t.is(r.location, r.uuid);
    s.V = r.uuid;
    s.t.true(fs.existsSync(imagePath(s.ctx, s.V)));
  }],
  ['THIN_PROVISIONING', async ({ ctx, t, V }) => {
    t.true(fs.statSync(imagePath(ctx, V!)).size < MiB, 'an 8 MiB VDI takes less than 1 MiB until written');
  }],
  ['SR_SCAN', async ({ ctx, t, V }) => {
    t.is(await xml(ctx, 'sr_scan'), null);
    t.truthy(readMetadata(ctx).vdis[V!], 'the scan knows the VDI');
  }],
  ['SR_UPDATE', async ({ ctx, t }) => {
    t.is(await xml(ctx, 'sr_update'), null);
    t.regex(readSmlog(ctx), new RegExp(`SR ${ctx.sr}: \\d+ bytes, \\d+ free`));
  }],
  ['VDI_UPDATE', async ({ ctx, t, V }) => {
    t.is(await xml(ctx, 'vdi_update', vdiArgs(V!)), null);
  }],
  ['VDI_ATTACH', async ({ ctx, t, V }) => {
    const r = (await xml(ctx, 'vdi_attach', vdiArgs(V!, { args: ['true'] }))) as Record<string, unknown>;
    t.is(r.params_nbd, `nbd:unix:${path.join(ctx.root, 'run', 'blktap-control', 'nbd', ctx.sr, V!)}:exportname=${V}`);
  }],
  ['VDI_ACTIVATE', async (s) => {
    s.t.is(await xml(s.ctx, 'vdi_activate', vdiArgs(s.V!, { args: ['true'] })), null);
    s.t.true(isServed(s.ctx, s.V!));
    const c = await openNbd(s.ctx, s.V!);
    await c.write(0, s.data);
    await c.flush();
    c.close();
  }],
  // xapi sends the plain vdi_resize for VDI.resize_online: the VDI is active and a client stays connected.
  ['VDI_RESIZE_ONLINE', async ({ ctx, t, V, data }) => {
    const c = await openNbd(ctx, V!);
    const r = await xml(ctx, 'vdi_resize', vdiArgs(V!, { args: [String(16 * MiB)] }));
    t.deepEqual(r, { uuid: V, location: V });
    await c.write(MiB, pattern(8, 4096)); // the connected client carries on
    t.true((await c.read(0, data.length)).equals(data));
    c.close();
    const sock = shortSocket(ctx, V!);
    const info = await run('qemu-img', ['info', '--output=json', `nbd:unix:${sock}:exportname=${V}`]);
    fs.rmSync(sock);
    t.is(JSON.parse(info.stdout)['virtual-size'], 16 * MiB, 'a new connection sees the new size');
    const io = await qemuIo(ctx, V!, ['write -P 0x33 15M 64k']);
    t.is(io.code, 0, io.stderr);
  }],
  ['VDI_SNAPSHOT', async ({ ctx, t, V, data }) => {
    const r = (await xml(ctx, 'vdi_snapshot', vdiArgs(V!))) as { uuid: string };
    t.not(r.uuid, V);
    t.true((await readVdi(ctx, r.uuid, 0, data.length)).equals(data), 'the snapshot holds what was written');
  }],
  // A backup tool's round: tracking on, a snapshot, writes through the datapath, a snapshot, the blocks between them.
  ['VDI_CONFIG_CBT', async ({ ctx, t, V }) => {
    t.is(await xml(ctx, 'vdi_enable_cbt', vdiArgs(V!)), null);
    const { uuid: s1 } = (await xml(ctx, 'vdi_snapshot', vdiArgs(V!))) as { uuid: string };
    const c = await openNbd(ctx, V!);
    await c.write(40 * 64 * 1024 + 512, pattern(10, 4096)); // past the first MiB, which later scenarios read back
    await c.flush();
    c.close();
    const { uuid: s2 } = (await xml(ctx, 'vdi_snapshot', vdiArgs(V!))) as { uuid: string };
    const changed = fromXapiBase64((await xml(ctx, 'vdi_list_changed_blocks', vdiArgs(s1, { args: [s2] }))) as string);
    const blocks = [...Array(changed.length * 8).keys()].filter((b) => isSet(changed, b));
    t.deepEqual(blocks, [40], 'exactly the 64 KiB block written between the snapshots');
    t.is(await xml(ctx, 'vdi_data_destroy', vdiArgs(s1)), null);
    t.is(await xml(ctx, 'vdi_list_changed_blocks', vdiArgs(s1, { args: [s2] })), toXapiBase64(changed), 'the log outlives the data');
    t.is(await xml(ctx, 'vdi_disable_cbt', vdiArgs(V!)), null);
  }],
  ['VDI_CLONE', async (s) => {
    const r = (await xml(s.ctx, 'vdi_clone', vdiArgs(s.V!))) as { uuid: string };
    s.clone = r.uuid;
    s.t.true((await readVdi(s.ctx, r.uuid, 0, s.data.length)).equals(s.data), 'the clone holds what was written');
  }],
  ['VDI_DEACTIVATE', async ({ ctx, t, V }) => {
    t.is(await xml(ctx, 'vdi_deactivate', vdiArgs(V!)), null);
    t.false(isServed(ctx, V!));
  }],
  ['VDI_DETACH', async ({ ctx, t, V }) => {
    t.is(await xml(ctx, 'vdi_detach', vdiArgs(V!)), null);
  }],
  ['VDI_RESIZE', async ({ ctx, t, clone }) => {
    await xml(ctx, 'vdi_resize', vdiArgs(clone!, { args: [String(32 * MiB)] }));
    t.is(await virtualSize(ctx, clone!), 32 * MiB);
  }],
  ['VDI_RESET_ON_BOOT/2', async ({ ctx, t, clone, data }) => {
    await writeAt(imagePath(ctx, clone!), pattern(9, MiB), 0); // what the VM wrote while it ran
    t.is(await xml(ctx, 'vdi_epoch_begin', vdiArgs(clone!, { vdi_on_boot: 'reset' })), null);
    t.true((await readVdi(ctx, clone!, 0, data.length)).equals(data), 'back to the state it was cloned with');
  }],
  ['VDI_GENERATE_CONFIG', async ({ ctx, t, V, data }) => {
    const config = String(await xml(ctx, 'vdi_generate_config', vdiArgs(V!)));
    t.is(parseMethodCall(config).methodName, 'vdi_attach_from_config');
    const attached = await callDriverRaw(config, ctx.env);
    t.is(attached.response.kind, 'result', JSON.stringify(attached.response));
    const c = await openNbd(ctx, V!);
    t.true((await c.read(0, data.length)).equals(data));
    c.close();
    const call = parseMethodCall(config);
    const detach = encodeMethodCall('vdi_detach_from_config', [{ ...(call.params[0] as object), command: 'vdi_detach_from_config' }]);
    t.is((await callDriverRaw(detach, ctx.env)).response.kind, 'result');
    t.false(isServed(ctx, V!));
  }],
  ['VDI_INTRODUCE', async ({ ctx, t }) => {
    const image = randomUUID();
    await createDynamic(imagePath(ctx, image), 4 * MiB);
    const uuid = randomUUID();
    t.deepEqual(await xml(ctx, 'vdi_introduce', { new_uuid: uuid, vdi_location: image, vdi_sm_config: {} }), { uuid, location: uuid });
    t.truthy(readMetadata(ctx).vdis[uuid]);
  }],
  ['VDI_DELETE', async ({ ctx, t, clone }) => {
    t.is(await xml(ctx, 'vdi_delete', vdiArgs(clone!)), null);
    t.falsy(readMetadata(ctx).vdis[clone!]);
    t.deepEqual(await checkProblems(ctx), []);
  }],
  ['SR_DETACH', async ({ ctx, t }) => {
    t.is(await xml(ctx, 'sr_detach'), null);
    t.false(fs.existsSync(ctx.mount));
  }],
  // An SR of its own: SR.destroy needs an empty SR.
  ['SR_DELETE', async ({ ctx, t }) => {
    const other = { sr_uuid: randomUUID(), device_config: { location: path.join(ctx.base, 'sr-to-delete') } };
    await xml(ctx, 'sr_create', { ...other, args: ['0'] });
    t.is(await xml(ctx, 'sr_delete', other), null);
    t.false(fs.existsSync(path.join(other.device_config.location, '.sm')), 'its metadata is gone');
  }],
];


async function advertised(driver: string): Promise<string[]> {
  const r = await callDriverRaw(encodeMethodCall('sr_get_driver_info', [{ host_ref: 'h', args: [], device_config: {} }]), process.env, { driver: path.join(REPO, 'drivers', driver) });
  if (r.response.kind !== 'result') throw new Error(`${driver}: ${r.response.faultString}`);
  return (r.response.value as { capabilities: string[] }).capabilities;
}

test('FileSR: every advertised capability works as the toolstack uses it', async (t) => {
  const caps = await advertised('FileSR');
  const table = new Set(SCENARIOS.map(([c]) => c));
  for (const cap of caps) t.true(table.has(cap), `${cap} is advertised but has no scenario`);
  const ctx = await makeSmEnv();
  const s: State = { ctx, t, data: pattern(7, MiB) };
  try {
    for (const [cap, scenario] of SCENARIOS) {
      if (!caps.includes(cap)) continue;
      await scenario(s).catch((err: Error) => {
        throw new Error(`${cap}: ${err.message}`);
      });
      t.log(`${cap}: ok`);
    }
  } finally {
    await ctx.cleanup();
  }
});

for (const driver of ['NFSSR', 'LVMoISCSISR']) {
  test(`${driver}: every advertised capability has a scenario, run on FileSR through the same shared verbs`, async (t) => {
    const caps = await advertised(driver);
    const table = new Set(SCENARIOS.map(([c]) => c));
    for (const cap of caps) t.true(table.has(cap), `${cap} is advertised but has no scenario`);
    const file = await advertised('FileSR');
    // Whatever the SR type adds beyond FileSR's list would have no run here.
    t.deepEqual(caps.filter((c) => !file.includes(c)), []);
    if (driver === 'LVMoISCSISR') t.false(caps.includes('THIN_PROVISIONING'), 'thick provisioned');
    // Logs as files on NFS, as LVs on LVM: the same verbs over the backend's log store (the VM tier runs them on LVM).
    t.true(caps.includes('VDI_CONFIG_CBT'), 'tracks changed blocks');
  });
}
