/**
 * The pause protocol in xapi's database (shared/reference/xapi-callbacks.md §5),
 * both sides the SM plays: an activation's `activating`/`host_<ref>` tags, and
 * the master pausing a VDI (`paused`, the `tapdisk-pause` plugin on the other
 * hosts serving it) around a change to its chain. The records themselves are
 * xapi-sync.ts's.
 */
import { getLog } from '../log/index.js';
import { SMError } from '../errors/sm-error.js';
import { XapiFailure, XapiPluginFailure } from '../xapi/errors.js';
import type { Activation } from './backend.js';
import type { ToolstackDb } from './xapi-sync.js';

/** The established activation retries 120 times, a second apart, while a VDI is paused or relinked. */
const TAG_ATTEMPTS = Number(process.env.SM_XAPI_TAG_ATTEMPTS ?? 120);

/**
 * vdi_activate (the established `_add_tag`): take `activating`
 * (add_to_sm_config refuses it while another activation holds it), back off
 * while the VDI is `paused` or `relinking`, then record `host_<this host>` =
 * RW/RO, and let `activating` go. Gives up (VDIUnavailable) after `attempts`
 * tries one `delayMs` apart.
 */
export async function tagActive(db: ToolstackDb, uuid: string, vdiRef: string | undefined, writable: boolean, attempts = TAG_ATTEMPTS, delayMs = 1000): Promise<void> {
  const host = db.hostRef;
  const ref = await db.refOf(uuid, vdiRef);
  if (!ref || !host) return;
  for (let attempt = 1; ; attempt++) {
    const why = await tryTag(db, ref, host, writable);
    if (!why) return;
    if (attempt >= attempts) throw new SMError('VDIUnavailable', `VDI ${uuid} stays ${why} (${attempts} tries)`);
    getLog().info(`XenAPI: VDI ${uuid} is ${why}: activation retried in ${delayMs} ms`);
    await new Promise((r) => setTimeout(r, delayMs));
  }
}

/** One try: undefined when tagged, else what the VDI is busy with. */
async function tryTag(db: ToolstackDb, ref: string, host: string, writable: boolean): Promise<string | undefined> {
  const { xapi } = db;
  try {
    await xapi.vdiAddToSmConfig(ref, 'activating', 'True');
  } catch (err) {
    if (err instanceof XapiFailure && err.code === 'MAP_DUPLICATE_KEY') return 'being activated elsewhere';
    throw err;
  }
  try {
    const busyWith = (sm: Record<string, string>) => (sm.paused !== undefined ? 'paused' : sm.relinking !== undefined ? 'being relinked by the GC' : undefined);
    const before = busyWith(await xapi.vdiSmConfig(ref));
    if (before) return before;
    await xapi.vdiRemoveFromSmConfig(ref, `host_${host}`);
    await xapi.vdiAddToSmConfig(ref, `host_${host}`, writable ? 'RW' : 'RO');
    // A pause or relink may have begun between the read and the tag: then the tag goes again and we wait.
    const after = busyWith(await xapi.vdiSmConfig(ref));
    if (after) await xapi.vdiRemoveFromSmConfig(ref, `host_${host}`);
    return after;
  } finally {
    await xapi.vdiRemoveFromSmConfig(ref, 'activating');
  }
}

/**
 * vdi_deactivate waits while the master holds the VDI paused (the established
 * `_deactivate_locked` does): the master's unpause reopens this host's
 * datapath, which must still be there to reopen. Tries as activation does.
 */
export async function waitUnpaused(db: ToolstackDb, uuid: string, vdiRef: string | undefined, attempts = TAG_ATTEMPTS, delayMs = 1000): Promise<void> {
  const ref = await db.refOf(uuid, vdiRef);
  if (!ref) return;
  for (let attempt = 1; (await db.xapi.vdiSmConfig(ref)).paused !== undefined; attempt++) {
    if (attempt >= attempts) throw new SMError('VDIUnavailable', `VDI ${uuid} stays paused (${attempts} tries): not deactivated`);
    if (attempt === 1) getLog().info(`XenAPI: VDI ${uuid} is paused: deactivation waits`);
    await new Promise((r) => setTimeout(r, delayMs));
  }
}

/** vdi_deactivate (or a failed activate): this host no longer serves the VDI. */
export async function untagActive(db: ToolstackDb, uuid: string, vdiRef: string | undefined): Promise<void> {
  const host = db.hostRef;
  const ref = await db.refOf(uuid, vdiRef);
  if (ref && host) await db.xapi.vdiRemoveFromSmConfig(ref, `host_${host}`);
}

/**
 * `paused` removed as part of the change's last database calls: given to a
 * change run paused when no other host has to be asked to unpause first
 * (this host's datapath is the verb's own, unpaused by then), so that the
 * removal goes out with those calls instead of one round trip after them.
 * Call it only once the change is complete on disk and this host's datapath
 * runs again.
 */
export type UnpauseWith = (() => Promise<void>) | undefined;

/**
 * The master's side of pause around a change to a VDI's chain: `paused` is
 * set in the database (activations anywhere back off while it is there),
 * every other host that has the VDI active (a `host_<ref>` key) is asked to
 * pause its datapath through the `tapdisk-pause` host plugin, `fn` runs, and
 * they are asked to unpause. This host's own datapath is paused in-process by
 * the verb, not through the plugin. `paused` goes again only when every host
 * unpaused, as the established SM does; the next sr_scan clears one left behind.
 */
export async function withPaused<T>(db: ToolstackDb, uuid: string, vdiRef: string | undefined, fn: (unpauseWith: UnpauseWith) => Promise<T>, opts: { failfast?: boolean } = {}): Promise<T> {
  const ref = await db.refOf(uuid, vdiRef);
  if (!ref) return fn(undefined);
  const failfast = opts.failfast === true;
  const hosts = await pause(db, uuid, ref, failfast);
  let early: Promise<void> | undefined;
  const unpauseWith: UnpauseWith = hosts.length === 0 ? () => (early ??= unpause(db, uuid, ref, [], failfast)) : undefined;
  let result: T;
  try {
    result = await fn(unpauseWith);
  } catch (err) {
    db.dropPausedRecord(ref);
    await (early ?? unpause(db, uuid, ref, hosts, failfast)).catch((e: Error) => getLog().warn(`XenAPI: VDI ${uuid} not unpaused: ${e.message}`));
    throw err;
  }
  db.dropPausedRecord(ref);
  await (early ?? unpause(db, uuid, ref, hosts, failfast));
  return result;
}

/**
 * Whether the toolstack records `hostUuid` (a pool host's INSTALLATION_UUID,
 * as our SR's activation records name hosts) as serving the VDI: its
 * `host_<ref>` key is what the pause protocol follows to reach that host's
 * datapath. Without it, a pause would miss the host, so the caller refuses.
 */
export async function toolstackSeesServing(db: ToolstackDb, uuid: string, vdiRef: string | undefined, hostUuid: string): Promise<boolean> {
  const ref = await db.refOf(uuid, vdiRef);
  if (!ref) return false;
  const host = await db.xapi.hostByUuid(hostUuid).catch((err: unknown) => {
    if (err instanceof XapiFailure && (err.code === 'UUID_INVALID' || err.code === 'HANDLE_INVALID')) return undefined;
    throw err;
  });
  return host !== undefined && (await db.xapi.vdiSmConfig(ref))[`host_${host}`] !== undefined;
}

/**
 * The SR's VDIs the toolstack records as served by other hosts (their
 * `host_<ref>` keys), as activation records naming each host by its uuid.
 * Where the SR's own records are host-local (LVM), this is how the master
 * sees another host's activations (activation.ts).
 */
export async function activationsInToolstack(db: ToolstackDb, here: string): Promise<Map<string, Activation>> {
  const out = new Map<string, Activation>();
  const hostUuids = new Map<string, Promise<string>>();
  const uuidOf = (ref: string) => hostUuids.get(ref) ?? hostUuids.set(ref, db.xapi.hostUuid(ref)).get(ref)!;
  for (const rec of Object.values(await db.xapi.vdisOfSr(await db.srRef()))) {
    for (const [key, mode] of Object.entries(rec.sm_config ?? {})) {
      if (!key.startsWith('host_') || key === `host_${db.hostRef}`) continue;
      const host = await uuidOf(key.slice('host_'.length));
      if (host !== here) out.set(rec.uuid, { host, writable: mode === 'RW', since: '' });
    }
  }
  return out;
}

/** A `paused` a killed verb left (seen by a scan, under the SR lock): the hosts serving the VDI are asked to unpause, and it goes. */
export async function unpauseLeftBehind(db: ToolstackDb, uuid: string, ref: string, smConfig: Record<string, string>): Promise<void> {
  getLog().warn(`XenAPI: VDI ${uuid} was left paused by an interrupted verb: unpaused`);
  await unpause(db, uuid, ref, otherHostsOf(db, smConfig)).catch((e: Error) => getLog().warn(`XenAPI: ${e.message}`));
}

function otherHostsOf(db: ToolstackDb, sm: Record<string, string>): string[] {
  return Object.keys(sm)
    .filter((k) => k.startsWith('host_'))
    .map((k) => k.slice('host_'.length))
    .filter((h) => h !== db.hostRef);
}

const pluginArgs = (db: ToolstackDb, uuid: string, failfast = false) => ({ sr_uuid: db.srUuid, vdi_uuid: uuid, failfast: failfast ? 'True' : 'False' });

/** Returns the hosts paused; on any failure, those are unpaused again and `paused` removed. */
async function pause(db: ToolstackDb, uuid: string, ref: string, failfast = false): Promise<string[]> {
  await db.xapi.vdiAddToSmConfig(ref, 'paused', 'true'); // MAP_DUPLICATE_KEY: paused by someone else, the verb fails
  const paused: string[] = [];
  try {
    // The whole record, not only its sm_config: the VDI's update after the change compares with it (xapi-sync.ts).
    const record = await db.xapi.vdiRecord(ref);
    db.notePausedRecord(ref, record);
    for (const host of otherHostsOf(db, record.sm_config ?? {})) {
      const answer = await db.xapi.callPlugin(host, 'tapdisk-pause', 'pause', pluginArgs(db, uuid, failfast));
      if (answer !== 'True') throw new XapiPluginFailure(`failed to pause VDI ${uuid} on host ${host}: the plugin answered ${JSON.stringify(answer)}`);
      paused.push(host);
    }
    getLog().info(`XenAPI: VDI ${uuid} paused${paused.length ? ` (and on hosts ${paused.join(', ')})` : ''}`);
    return paused;
  } catch (err) {
    db.dropPausedRecord(ref);
    await unpause(db, uuid, ref, paused).catch((e: Error) => getLog().warn(`XenAPI: VDI ${uuid} not unpaused: ${e.message}`));
    throw err;
  }
}

async function unpause(db: ToolstackDb, uuid: string, ref: string, hosts: string[], failfast = false): Promise<void> {
  const failed: string[] = [];
  for (const host of hosts) {
    const answer = await db.xapi.callPlugin(host, 'tapdisk-pause', 'unpause', pluginArgs(db, uuid, failfast)).catch((err: Error) => err.message);
    if (answer !== 'True') failed.push(`${host} (${answer})`);
  }
  if (failed.length) throw new XapiPluginFailure(`failed to unpause VDI ${uuid} on ${failed.join(', ')}: it stays paused`);
  await db.xapi.vdiRemoveFromSmConfig(ref, 'paused');
}

/**
 * Every `paused` of the SR's VDIs left by a killed verb or collector run: the
 * hosts serving them are asked to unpause, and it goes. Only where no pause
 * can be in progress: under the SR lock (verbs pause under it, and so does
 * the collector), as sr_scan does.
 */
export async function unpauseAllLeftBehind(db: ToolstackDb): Promise<number> {
  let n = 0;
  for (const [ref, rec] of Object.entries(await db.xapi.vdisOfSr(await db.srRef()))) {
    if (rec.sm_config?.paused === undefined) continue;
    await unpauseLeftBehind(db, rec.uuid, ref, rec.sm_config);
    n++;
  }
  return n;
}

/**
 * The collector's relink (the established `_tagChildrenForRelink`): each VDI
 * whose chain is rewritten gets `relinking`, so no host activates it
 * meanwhile; an activation in progress (`activating`) is waited for. Returns
 * the refs tagged, for relinked().
 */
export async function tagRelinking(db: ToolstackDb, uuids: readonly string[], attempts = TAG_ATTEMPTS, delayMs = 1000): Promise<Map<string, string>> {
  const tagged = new Map<string, string>();
  try {
    for (const uuid of uuids) {
      const ref = await db.refOf(uuid);
      if (!ref) continue;
      for (let attempt = 1; ; attempt++) {
        if ((await db.xapi.vdiSmConfig(ref)).activating === undefined) {
          await db.xapi.vdiRemoveFromSmConfig(ref, 'relinking');
          await db.xapi.vdiAddToSmConfig(ref, 'relinking', 'True');
          // An activation that began between the read and the tag sees it and backs off; one that tagged first is waited for.
          if ((await db.xapi.vdiSmConfig(ref)).activating === undefined) break;
          await db.xapi.vdiRemoveFromSmConfig(ref, 'relinking');
        }
        if (attempt >= attempts) throw new SMError('SMGeneral', `VDI ${uuid} stays being activated (${attempts} tries): not relinked`);
        await new Promise((r) => setTimeout(r, delayMs));
      }
      tagged.set(uuid, ref);
    }
    return tagged;
  } catch (err) {
    await relinked(db, tagged, false).catch(() => undefined);
    throw err;
  }
}

/**
 * After the relink (the established `_reload`): per VDI, `relinking` goes and
 * every other host serving it refreshes its datapath (pause, then reopen its
 * leaf, now on the new chain). `refresh` false: untag only. Returns the hosts
 * refreshed and those that could not be, as "vdi@host": one of these still
 * reads through the coalesced image, which must stay until it reopens.
 */
export async function relinked(db: ToolstackDb, tagged: Map<string, string>, refresh = true): Promise<{ done: string[]; failed: string[] }> {
  const done: string[] = [];
  const failed: string[] = [];
  for (const [uuid, ref] of tagged) {
    await db.xapi.vdiRemoveFromSmConfig(ref, 'relinking');
    if (!refresh) continue;
    for (const host of otherHostsOf(db, await db.xapi.vdiSmConfig(ref))) {
      const answer = await db.xapi.callPlugin(host, 'tapdisk-pause', 'refresh', pluginArgs(db, uuid)).catch((err: Error) => err.message);
      if (answer === 'True') done.push(`${uuid}@${host}`);
      else {
        getLog().warn(`XenAPI: VDI ${uuid} not refreshed on host ${host} (${answer}): it still reads its old chain`);
        failed.push(`${uuid}@${host}`);
      }
    }
  }
  return { done, failed };
}
