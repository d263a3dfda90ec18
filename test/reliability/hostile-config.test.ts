// Hostile device_config, uuids and paths through the real FileSR, NFSSR and
// LVMoISCSISR executables, on the host: shell metacharacters, traversal,
// option injection, NUL bytes and very long strings are refused with the
// documented code before any external command runs (every tool they could use
// is a recording stand-in on PATH), the canary an injection would create never
// appears, and nothing outside the SR changes. Then secrets (CHAP passwords,
// password-like keys, session_ref) on failing probes and attaches: never in
// SMlog, stderr or the fault string.
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { encodeMethodCall } from '../../lib/smapi/index.js';
import { assertNotInLog, expectArgvFaults, type ArgvCase } from '../helpers/hostile.js';
import { MiB } from '../helpers/model.js';
import { callJson, createArgs, createAttachedSr, createVdi, FILE_SR, makeSmEnv, REPO, request, SESSION_SECRET, withServer, type SmEnv } from '../helpers/sm.js';
import { ISCSI_TOOLS, NFS_TOOLS, SHELL_TOOLS, spyOn } from '../helpers/spy.js';
import { diskState } from '../helpers/sr-state.js';
import { soak, Tally, within } from '../helpers/tally.js';

const NFS_SR = path.join(REPO, 'drivers', 'NFSSR');
const ISCSI_SR = path.join(REPO, 'drivers', 'LVMoISCSISR');
const IQN = 'iqn.2026-01.org.example:storage';

/** One methodCall for a network SR: device_config exactly as given (plus SRmaster). */
function netCall(ctx: SmEnv, verb: string, dc: Record<string, string>): string {
  return encodeMethodCall(verb, [{ ...request(ctx, verb, { args: verb === 'sr_create' ? ['0'] : [] }), device_config: { SRmaster: 'true', ...dc } }]);
}

test('device_config and uuids with metacharacters, traversal, NUL and huge values: refused before any tool runs', async (t) => {
  const ctx = await makeSmEnv();
  const tally = new Tally('device_config, uuids and paths');
  const spy = spyOn(ctx, [...NFS_TOOLS, ...ISCSI_TOOLS, ...SHELL_TOOLS]);
  try {
    const vdi = await withServer(ctx, async (s) => {
      await createAttachedSr(s);
      return createVdi(s, 4 * MiB);
    });
    const before = diskState(ctx);
    const touch = `touch ${spy.canary}`;
    // SM_SOAK=1: every form of injection; by default three (a separator, a substitution, a line break).
    const every = [`;${touch}`, `$(${touch})`, `\`${touch}\``, ` && ${touch}`, `|${touch}`, `\n${touch}`];
    const injections = soak ? every : [every[0]!, every[1]!, every[5]!];
    const srVerbs = soak ? ['sr_create', 'sr_attach', 'sr_probe'] : ['sr_attach', 'sr_probe'];
    const cases: ArgvCase[] = [];
    const add = (driver: string, what: string, xml: string, codes: number[]) => cases.push({ what, argv: [xml], codes, file: driver });

    // FileSR: location is a path given as one argv element; a bad one is refused or names no SR.
    const fileCall = (verb: string, location: string) => encodeMethodCall(verb, [{ ...request(ctx, verb, { args: ['0'] }), device_config: { SRmaster: 'true', location } }]);
    for (const inj of injections) {
      // (sr_probe of a path holding no SR answers an empty SRlist: right, and harmless)
      for (const verb of ['sr_create', 'sr_attach']) add(FILE_SR, `FileSR ${verb} location ...${JSON.stringify(inj)}`, fileCall(verb, `${ctx.base}/x${inj}`), [61, 94, 47]);
    }
    add(FILE_SR, 'FileSR relative location $(touch)', fileCall('sr_create', `$(${touch})`), [94]);
    add(FILE_SR, 'FileSR location climbing out', fileCall('sr_create', `${ctx.location}/../../../etc`), [94]);
    add(FILE_SR, 'FileSR location of 60k characters', fileCall('sr_create', `${ctx.base}/${'a'.repeat(60_000)}`), [94, 61]);
    add(FILE_SR, 'FileSR location "-rf"', fileCall('sr_create', '-rf'), [94]);

    // NFSSR: what nfs-host.test.ts does not already cover.
    for (const [what, dc, codes] of [
      ['serverpath climbing out', { server: '127.0.0.1', serverpath: '/export/../../etc' }, [101]],
      ['server of 60k characters', { server: 'a'.repeat(60_000), serverpath: '/export' }, [102]],
      ['nfsversion $(touch)', { server: '127.0.0.1', serverpath: '/export', nfsversion: `$(${touch})` }, [72]],
      ['nfsversion with a line break', { server: '127.0.0.1', serverpath: '/export', nfsversion: '4\n4.1' }, [72]],
      ['server with backticks', { server: `\`${touch}\``, serverpath: '/export' }, [102]],
    ] as const) {
      for (const verb of srVerbs) add(NFS_SR, `NFSSR ${verb} ${what}`, netCall(ctx, verb, dc as Record<string, string>), [...codes]);
    }

    // LVMoISCSISR: every field that reaches iscsiadm, lvm or a path.
    const base = { target: '127.0.0.1', targetIQN: IQN, SCSIid: '36001405abcdef0123456789abcdef012' };
    const iscsi: Array<[string, Record<string, string>, number[]]> = [];
    for (const inj of injections) {
      iscsi.push([`target 127.0.0.1${JSON.stringify(inj)}`, { ...base, target: `127.0.0.1${inj}` }, [95]]);
      iscsi.push([`targetIQN ...${JSON.stringify(inj)}`, { ...base, targetIQN: `${IQN}${inj}` }, [96]]);
      iscsi.push([`SCSIid ...${JSON.stringify(inj)}`, { ...base, SCSIid: `36001405${inj}` }, [107]]);
      iscsi.push([`port 3260${JSON.stringify(inj)}`, { ...base, port: `3260${inj}` }, [95]]);
    }
    iscsi.push(
      ['target -oProxyCommand', { ...base, target: `-oProxyCommand=${touch}` }, [95]],
      ['target of 60k characters', { ...base, target: 'a'.repeat(60_000) }, [95]],
      ['port 0', { ...base, port: '0' }, [95]],
      ['port 65536', { ...base, port: '65536' }, [95]],
      ['SCSIid ../../dev/sda', { ...base, SCSIid: '../../dev/sda' }, [107]],
      ['targetIQN -o delete', { ...base, targetIQN: '-o delete' }, [96]],
      ['chapuser with a line break', { ...base, chapuser: `admin\n${touch}`, chappassword: 'x' }, [95, 68]],
      ['chapuser "-v"', { ...base, chapuser: '-v', chappassword: 'x' }, [95, 68]],
    );
    for (const [what, dc, codes] of iscsi) {
      for (const verb of srVerbs) add(ISCSI_SR, `LVMoISCSISR ${verb} ${what}`, netCall(ctx, verb, dc), codes);
    }
    await expectArgvFaults(t, ctx, FILE_SR, cases, tally, [], spy.env);

    // uuids with NUL bytes, traversal and huge lengths: only JSON can carry a NUL.
    const bads = ['\u0000', `${vdi}\u0000`, `${vdi}\u0000/../../etc`, '../../etc', 'a'.repeat(100_000), `${vdi}/`, `${vdi}.vhd`, ` ${vdi}`];
    const calls: Array<{ verb: string; extra: Record<string, unknown> }> = [];
    for (const bad of bads) {
      for (const verb of ['vdi_attach', 'vdi_delete', 'vdi_snapshot', 'vdi_resize']) calls.push({ verb, extra: { vdi_uuid: bad, vdi_location: bad, args: verb === 'vdi_resize' ? [String(8 * MiB)] : ['true'] } });
      for (const verb of ['sr_scan', 'sr_attach', 'vdi_create']) calls.push({ verb, extra: { sr_uuid: bad, args: createArgs(MiB) } });
    }
    const { responses, run } = await callJson(ctx, calls, spy.env);
    t.is(responses.length, calls.length);
    responses.forEach((r, i) => {
      const c = calls[i]!;
      const codes = c.extra.sr_uuid !== undefined ? [47] : [46, 144];
      const right = r.error !== undefined && codes.includes(r.error.code);
      t.true(right, `${c.verb} ${JSON.stringify(c.extra.vdi_uuid ?? c.extra.sr_uuid).slice(0, 60)}: ${JSON.stringify(r.error ?? r.result).slice(0, 200)}`);
      tally.add(right, { ms: 0 });
    });
    within(t, tally, 'uuid batch', true, run);
    tally.cases--;
    tally.rightCode--;

    t.deepEqual(spy.calls(), [], 'no external tool ran');
    const escaped = fs.existsSync(spy.canary);
    if (escaped) tally.escapes++;
    t.false(escaped, 'the injected command never ran');
    t.deepEqual(diskState(ctx), before, 'nothing on disk changed');
    tally.report(t);
  } finally {
    await ctx.cleanup();
  }
});

test('secrets on failing probes and attaches: never in SMlog, stderr or the fault', async (t) => {
  const ctx = await makeSmEnv();
  const tally = new Tally('secrets on error paths');
  const spy = spyOn(ctx, [...NFS_TOOLS, ...ISCSI_TOOLS, ...SHELL_TOOLS]);
  try {
    const secret = (name: string) => `${name}-SECRET-${Math.random().toString(36).slice(2, 10)}`;
    const s = {
      chappassword: secret('chap'),
      incoming_chappassword: secret('incoming'),
      cifspassword: secret('cifs'),
      password: secret('password'),
      mutual_chappassword: secret('mutual'),
    };
    const all = [...Object.values(s), SESSION_SECRET];
    const withSecrets = { ...s, chapuser: 'admin', incoming_chapuser: 'target' };
    const cases: ArgvCase[] = [];
    const add = (driver: string, what: string, verb: string, dc: Record<string, string>, codes: number[]) =>
      cases.push({ what, argv: [netCall(ctx, verb, { ...withSecrets, ...dc })], codes, file: driver });
    for (const verb of ['sr_probe', 'sr_create', 'sr_attach']) {
      // iscsiadm (a failing stand-in) runs for discovery/login: the failure must not carry the secrets.
      add(ISCSI_SR, `LVMoISCSISR ${verb}, iscsiadm failing`, verb, { target: '127.0.0.1', targetIQN: IQN, SCSIid: '36001405abc' }, [68, 107, 95, 96]);
      add(ISCSI_SR, `LVMoISCSISR ${verb}, a secret with a line break`, verb, { target: '127.0.0.1', targetIQN: IQN, chappassword: `${s.chappassword}\nmore` }, [95]);
      add(NFS_SR, `NFSSR ${verb}, nothing listening`, verb, { server: '127.0.0.1', serverpath: '/export' }, [108]);
      add(NFS_SR, `NFSSR ${verb}, bad options`, verb, { server: '127.0.0.1', serverpath: '/export', options: 'vers=2' }, [73]);
      if (verb !== 'sr_probe') add(FILE_SR, `FileSR ${verb}, no such parent`, verb, { location: path.join(ctx.base, 'no', 'such') }, [61, 47, 94]);
    }
    cases.push({ what: 'FileSR a malformed call holding secrets', argv: [netCall(ctx, 'sr_probe', withSecrets).slice(0, -40)], codes: [1200], file: FILE_SR });
    const faults = await expectArgvFaults(t, ctx, FILE_SR, cases, tally, all, spy.env);
    for (const f of faults) for (const x of all) t.false(f.includes(x), `no ${x} in fault ${f.slice(0, 120)}`);
    assertNotInLog(t, ctx, all, tally);
    t.false(fs.existsSync(spy.canary));
    tally.report(t);
  } finally {
    await ctx.cleanup();
  }
});
