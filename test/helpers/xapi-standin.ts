// A stand-in for xapi, for tests: xapi itself cannot run here. It keeps the
// semantics the SM relies on, as documented in shared/reference/xapi-callbacks.md:
// XML-RPC over HTTP POST `/` on a unix socket; `{Status, Value}` /
// `{Status: "Failure", ErrorDescription}` replies; sessions (an unknown one is
// SESSION_INVALID); VDI/SR/host records; VDI.db_introduce (LOCATION_NOT_UNIQUE,
// UUID_INVALID, the datamodel's defaults for parameters 10-19, on_boot etc.
// set as xapi sets them); db_forget; get_by_uuid (UUID_INVALID when missing);
// maps (add_to_* of a present key is MAP_DUPLICATE_KEY, remove_from_* of a
// missing one does nothing); setters with their wire types (int64 as a decimal
// string); the setters restricted to the SR's own SM session; the
// `field "X" = "v"` form of get_all_records_where; host.call_plugin recorded
// (and answered by a test's handler); an unknown method is
// MESSAGE_METHOD_UNKNOWN. Every call is logged for assertions, and a test can
// make the endpoint misbehave: refuse a named method with a XenAPI failure
// (`failNext`), go away at the Nth call from now, that call unanswered and not
// applied, as xapi does when it stops or restarts (`goneAtCall`, then
// `restart`), or apply calls and answer them only after a delay (`answerSlowly`).
import { randomUUID } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { encodeResponse, parseMethodCall, parseMethodResponse } from '../../lib/smapi/xmlrpc-codec.js';
import { XmlRpcDateTime, type XmlRpcValue } from '../../lib/smapi/xmlrpc-value.js';

export const NULL_REF = 'OpaqueRef:NULL';

type Struct = Record<string, XmlRpcValue>;
type Map_ = Record<string, string>;

export interface StandinCall {
  method: string;
  /** The parameters after the session. */
  params: XmlRpcValue[];
  session: string;
  headers: http.IncomingHttpHeaders;
}

export interface StandinOptions {
  /** Sessions xapi made for SM calls, each tied to an SR ref (its `_sm_session`). */
  smSessions?: Array<{ ref: string; sr: string }>;
  srs?: Array<{ ref: string; uuid: string; type?: string }>;
  hosts?: Array<{ ref: string; uuid: string }>;
  /** Answers host.call_plugin (default "True"). */
  plugin?: (host: string, plugin: string, fn: string, args: Map_, standin: XapiStandin) => string | Promise<string>;
}

/** What xapi's host.call_plugin returns for a plugin's output: its `Value`, or "failed: ..." with what it said instead. */
export function pluginAnswer(stdout: string, stderr = ''): string {
  const response = parseMethodResponse(stdout);
  const value = response.kind === 'result' ? (response.value as { Status: string; Value?: string; ErrorDescription?: string[] }) : undefined;
  return value?.Status === 'Success' ? String(value.Value) : `failed: ${JSON.stringify(value ?? response)}${stderr ? ` ${stderr}` : ''}`;
}

class Failure extends Error {
  constructor(readonly description: string[]) {
    super(description.join(' '));
  }
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// The VDI fields of the datamodel the SM touches, with their wire types.
const VDI_FIELD_TYPES: Record<string, 'string' | 'bool' | 'int' | 'map' | 'ref' | 'datetime'> = {
  uuid: 'string',
  name_label: 'string',
  name_description: 'string',
  SR: 'ref',
  type: 'string',
  sharable: 'bool',
  read_only: 'bool',
  other_config: 'map',
  location: 'string',
  xenstore_data: 'map',
  sm_config: 'map',
  managed: 'bool',
  virtual_size: 'int',
  physical_utilisation: 'int',
  metadata_of_pool: 'ref',
  is_a_snapshot: 'bool',
  snapshot_time: 'datetime',
  snapshot_of: 'ref',
  cbt_enabled: 'bool',
  on_boot: 'string',
  allow_caching: 'bool',
  missing: 'bool',
};
/** The db_introduce parameters in order (after the session); from the 10th on they have datamodel defaults. */
const INTRODUCE_PARAMS = Object.keys(VDI_FIELD_TYPES).slice(0, 19);
const INTRODUCE_DEFAULTS: Struct = {
  xenstore_data: {},
  sm_config: {},
  managed: true,
  virtual_size: '0',
  physical_utilisation: '0',
  metadata_of_pool: NULL_REF,
  is_a_snapshot: false,
  snapshot_time: new XmlRpcDateTime('19700101T00:00:00Z'),
  snapshot_of: NULL_REF,
  cbt_enabled: false,
};
/** Setters only the SR's own SM session may call (`sm.ml:assert_session_has_internal_sr_access`). */
const SM_ONLY_VDI_SETTERS = new Set(['managed', 'read_only', 'virtual_size', 'physical_utilisation', 'is_a_snapshot', 'snapshot_of', 'snapshot_time', 'metadata_of_pool', 'sharable', 'missing']);
const SM_ONLY_SR_SETTERS = new Set(['virtual_allocation', 'physical_size', 'physical_utilisation']);
const SR_FIELD_TYPES: Record<string, 'string' | 'int' | 'map'> = {
  uuid: 'string',
  name_label: 'string',
  type: 'string',
  virtual_allocation: 'int',
  physical_size: 'int',
  physical_utilisation: 'int',
  other_config: 'map',
  sm_config: 'map',
};

function checkType(cls: string, field: string, kind: string, v: XmlRpcValue): XmlRpcValue {
  const ok =
    kind === 'string' || kind === 'ref'
      ? typeof v === 'string'
      : kind === 'bool'
        ? typeof v === 'boolean'
        : kind === 'int'
          ? typeof v === 'string' && /^-?\d+$/.test(v)
          : kind === 'map'
            ? v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof XmlRpcDateTime) && !Buffer.isBuffer(v) && Object.values(v).every((x) => typeof x === 'string')
            : kind === 'datetime'
              ? v instanceof XmlRpcDateTime
              : false;
  if (!ok) throw new Failure(['FIELD_TYPE_ERROR', `${cls}.${field}`]);
  return kind === 'map' ? { ...(v as Map_) } : v;
}

export class XapiStandin {
  readonly calls: StandinCall[] = [];
  readonly vdis = new Map<string, Struct>();
  readonly srs = new Map<string, Struct>();
  readonly hosts = new Map<string, Struct>();
  readonly messages: Struct[] = [];
  /** session ref -> the SR ref it was made for ('' for a root login). */
  readonly sessions = new Map<string, string>();
  private readonly failures = new Map<string, { description: string[]; times: number }>();
  private server: http.Server | undefined;
  private goneIn: number | undefined;
  private slow: { ms: number; method?: string } | undefined;
  /** The socket file's removal when the endpoint went away: a restart listens only after it, or it would remove the new one. */
  private removed: Promise<void> | undefined;

  private constructor(
    readonly socketPath: string,
    private readonly opts: StandinOptions,
  ) {
    for (const s of opts.smSessions ?? []) this.sessions.set(s.ref, s.sr);
    for (const sr of opts.srs ?? []) {
      this.srs.set(sr.ref, { uuid: sr.uuid, name_label: '', type: sr.type ?? 'file', virtual_allocation: '0', physical_size: '0', physical_utilisation: '0', other_config: {}, sm_config: {} });
    }
    for (const h of opts.hosts ?? []) this.hosts.set(h.ref, { uuid: h.uuid, other_config: {} });
  }

  /** Listens at `socketPath` (its directory made); the SM finds it at `$SM_ROOT/var/lib/xcp/xapi`. */
  static async start(socketPath: string, opts: StandinOptions = {}): Promise<XapiStandin> {
    const standin = new XapiStandin(socketPath, opts);
    await mkdir(path.dirname(socketPath), { recursive: true });
    await standin.listen();
    return standin;
  }

  private async listen(): Promise<void> {
    await this.removed;
    await rm(this.socketPath, { force: true });
    const server = http.createServer((req, res) => void this.serve(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, resolve);
    });
    this.server = server;
  }

  /** Stops listening and drops every connection, the socket file removed: xapi is gone. */
  private goAway(): void {
    const server = this.server;
    if (!server) return;
    server.close();
    server.closeAllConnections();
    this.removed = rm(this.socketPath, { force: true }).catch(() => undefined);
  }

  /** Drops the connections no call is using, as xapi does with idle clients. */
  closeIdleConnections(): void {
    this.server?.closeIdleConnections();
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server?.listening ? this.server.close(() => resolve()) : resolve()));
    await rm(this.socketPath, { force: true });
  }

  /**
   * The endpoint goes away at the `n`th call from now (1: the next one): that
   * call is neither applied nor answered, its connection and every other are
   * dropped, and the socket is gone until `restart()`. The database is kept.
   */
  goneAtCall(n: number): void {
    this.goneIn = n;
  }

  /** Listens again at the same socket, with the same database (xapi back after a restart). */
  async restart(): Promise<void> {
    if (this.server?.listening) return;
    await this.listen();
  }

  /** Each call (or each call of `method`) is applied at once and answered `ms` later. */
  answerSlowly(ms: number, method?: string): void {
    this.slow = { ms, ...(method ? { method } : {}) };
  }

  /** Answers without delay again. */
  answerPromptly(): void {
    this.slow = undefined;
  }

  /** `method` fails with `description` the next `times` calls. */
  failNext(method: string, description: string[], times = 1): void {
    this.failures.set(method, { description, times });
  }

  vdiByUuid(uuid: string): Struct | undefined {
    return [...this.vdis.values()].find((v) => v.uuid === uuid);
  }

  callsOf(method: string): StandinCall[] {
    return this.calls.filter((c) => c.method === method);
  }

  /** Adds a VDI record as xapi would have it (for tests that start from a known database). */
  putVdi(fields: Struct): string {
    const ref = `OpaqueRef:${randomUUID()}`;
    this.vdis.set(ref, { ...INTRODUCE_DEFAULTS, on_boot: 'persist', allow_caching: false, missing: false, tags: [], other_config: {}, sharable: false, read_only: false, ...fields });
    return ref;
  }

  // ------------------------------------------------------------- protocol

  private async serve(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    // Events, not `for await`: the stream's async iterator costs this per-call server a fifth of its CPU time.
    await new Promise((resolve, reject) => req.on('data', (c: Buffer) => chunks.push(c)).once('end', resolve).once('error', reject));
    if (req.method !== 'POST' || (req.url !== '/' && req.url !== '/RPC2')) {
      res.writeHead(404).end();
      return;
    }
    if (this.goneIn !== undefined && --this.goneIn <= 0) {
      this.goneIn = undefined;
      req.socket.destroy();
      this.goAway();
      return;
    }
    let reply: Struct;
    let method = '';
    try {
      const call = parseMethodCall(Buffer.concat(chunks).toString('utf8'));
      method = call.methodName;
      reply = { Status: 'Success', Value: await this.dispatch(call.methodName, call.params, req.headers) };
    } catch (err) {
      const description = err instanceof Failure ? err.description : ['INTERNAL_ERROR', (err as Error).message];
      reply = { Status: 'Failure', ErrorDescription: description };
    }
    if (this.slow && (!this.slow.method || this.slow.method === method)) await new Promise((r) => setTimeout(r, this.slow!.ms));
    if (!res.destroyed) res.writeHead(200, { 'Content-Type': 'text/xml' }).end(encodeResponse(reply));
  }

  private async dispatch(method: string, all: XmlRpcValue[], headers: http.IncomingHttpHeaders): Promise<XmlRpcValue> {
    if (method === 'session.login_with_password') {
      this.calls.push({ method, params: all.slice(0, 1), session: '', headers });
      // A unix-socket caller is root already: no password is checked.
      const ref = `OpaqueRef:${randomUUID()}`;
      this.sessions.set(ref, '');
      return ref;
    }
    const [session, ...params] = all;
    this.calls.push({ method, params, session: String(session), headers });
    if (typeof session !== 'string' || !this.sessions.has(session)) throw new Failure(['SESSION_INVALID', String(session)]);
    const failure = this.failures.get(method);
    if (failure && failure.times > 0) {
      failure.times--;
      throw new Failure(failure.description);
    }
    const [cls, name] = method.split('.');
    if (method === 'session.logout') {
      this.sessions.delete(session);
      return '';
    }
    if (cls === 'VDI') return this.vdiCall(name, params, session, method);
    if (cls === 'SR') return this.srCall(name, params, session, method);
    if (cls === 'host') return this.hostCall(name, params, method);
    if (method === 'message.create') {
      argc(method, params, 5);
      const ref = `OpaqueRef:${randomUUID()}`;
      this.messages.push({ ref, name: params[0], priority: params[1], cls: params[2], obj_uuid: params[3], body: params[4] });
      return ref;
    }
    throw new Failure(['MESSAGE_METHOD_UNKNOWN', method]);
  }

  private vdiCall(name: string, params: XmlRpcValue[], session: string, method: string): XmlRpcValue {
    if (name === 'db_introduce') return this.introduce(params, method);
    if (name === 'get_by_uuid') {
      argc(method, params, 1);
      const hit = [...this.vdis.entries()].find(([, v]) => v.uuid === params[0]);
      if (!hit) throw new Failure(['UUID_INVALID', 'VDI', String(params[0])]);
      return hit[0];
    }
    if (name === 'get_all_records_where') {
      argc(method, params, 1);
      return this.where(this.vdis, String(params[0]));
    }
    if (name === 'get_all_records') return Object.fromEntries(this.vdis);
    const ref = String(params[0]);
    const vdi = this.vdis.get(ref);
    if (!vdi) throw new Failure(['HANDLE_INVALID', 'VDI', ref]);
    if (name === 'db_forget') {
      argc(method, params, 1);
      this.vdis.delete(ref);
      return '';
    }
    if (name === 'get_record') return vdi;
    return this.fieldCall('VDI', vdi, VDI_FIELD_TYPES, name, params, method, () => {
      const field = name.replace(/^set_/, '');
      if (SM_ONLY_VDI_SETTERS.has(field)) this.requireSmSession(session, String(vdi.SR), method);
    });
  }

  private srCall(name: string, params: XmlRpcValue[], session: string, method: string): XmlRpcValue {
    if (name === 'get_by_uuid') {
      argc(method, params, 1);
      const hit = [...this.srs.entries()].find(([, v]) => v.uuid === params[0]);
      if (!hit) throw new Failure(['UUID_INVALID', 'SR', String(params[0])]);
      return hit[0];
    }
    const ref = String(params[0]);
    const sr = this.srs.get(ref);
    if (!sr) throw new Failure(['HANDLE_INVALID', 'SR', ref]);
    if (name === 'get_record') return sr;
    return this.fieldCall('SR', sr, SR_FIELD_TYPES, name, params, method, () => {
      if (SM_ONLY_SR_SETTERS.has(name.replace(/^set_/, ''))) this.requireSmSession(session, ref, method);
    });
  }

  private async hostCall(name: string, params: XmlRpcValue[], method: string): Promise<XmlRpcValue> {
    if (name === 'get_by_uuid') {
      argc(method, params, 1);
      const hit = [...this.hosts.entries()].find(([, v]) => v.uuid === params[0]);
      if (!hit) throw new Failure(['UUID_INVALID', 'host', String(params[0])]);
      return hit[0];
    }
    const ref = String(params[0]);
    const host = this.hosts.get(ref);
    if (!host) throw new Failure(['HANDLE_INVALID', 'host', ref]);
    if (name === 'call_plugin') {
      argc(method, params, 4);
      const [, plugin, fn, args] = params as [string, string, string, Map_];
      return this.opts.plugin ? this.opts.plugin(ref, plugin, fn, args, this) : 'True';
    }
    if (name === 'get_record') return host;
    if (name === 'get_uuid') return host.uuid;
    if (name === 'get_other_config') return host.other_config;
    throw new Failure(['MESSAGE_METHOD_UNKNOWN', method]);
  }

  /** get_X, set_X, add_to_X, remove_from_X on a record's fields. */
  private fieldCall(cls: string, rec: Struct, types: Record<string, string>, name: string, params: XmlRpcValue[], method: string, guardSet: () => void): XmlRpcValue {
    const m = /^(get|set|add_to|remove_from)_(.+)$/.exec(name);
    const field = m?.[2];
    if (!m || !field || !(field in types)) throw new Failure(['MESSAGE_METHOD_UNKNOWN', method]);
    const kind = types[field];
    const ref = String(params[0]);
    if (m[1] === 'get') {
      argc(method, params, 1);
      return rec[field];
    }
    if (m[1] === 'set') {
      argc(method, params, 2);
      if (field === 'uuid') throw new Failure(['MESSAGE_METHOD_UNKNOWN', method]);
      guardSet();
      rec[field] = checkType(cls, field, kind, params[1]);
      return '';
    }
    if (kind !== 'map') throw new Failure(['MESSAGE_METHOD_UNKNOWN', method]);
    const map = rec[field] as Map_;
    if (m[1] === 'add_to') {
      argc(method, params, 3);
      const [, key, value] = params.map(String);
      if (key in map) throw new Failure(['MAP_DUPLICATE_KEY', cls, field, ref, key]);
      map[key] = value;
      return '';
    }
    argc(method, params, 2);
    delete map[String(params[1])];
    return '';
  }

  private introduce(params: XmlRpcValue[], method: string): string {
    if (params.length < 9 || params.length > 19) throw new Failure(['MESSAGE_PARAMETER_COUNT_MISMATCH', method, '19', String(params.length)]);
    const rec: Struct = {};
    INTRODUCE_PARAMS.forEach((field, i) => {
      rec[field] = i < params.length ? checkType('VDI', field, VDI_FIELD_TYPES[field], params[i]) : structuredClone(INTRODUCE_DEFAULTS[field]);
    });
    if (!UUID_RE.test(String(rec.uuid))) throw new Failure(['UUID_INVALID', 'VDI', String(rec.uuid)]);
    if (!this.srs.has(String(rec.SR))) throw new Failure(['HANDLE_INVALID', 'SR', String(rec.SR)]);
    for (const v of this.vdis.values()) {
      if (v.SR === rec.SR && v.location === rec.location) throw new Failure(['LOCATION_NOT_UNIQUE', String(rec.SR), String(rec.location)]);
      if (v.uuid === rec.uuid) throw new Failure(['INTERNAL_ERROR', `Db_exn.Uniqueness_constraint_violation("VDI", "uuid", "${String(rec.uuid)}")`]);
    }
    const ref = `OpaqueRef:${randomUUID()}`;
    this.vdis.set(ref, { ...rec, on_boot: 'persist', allow_caching: false, missing: false, tags: [] });
    return ref;
  }

  private where(table: Map<string, Struct>, expr: string): Struct {
    const m = /^field "(\w+)" = "([^"]*)"$/.exec(expr.trim());
    if (!m) throw new Failure(['INTERNAL_ERROR', `expression not understood by the stand-in: ${expr}`]);
    return Object.fromEntries([...table].filter(([, rec]) => String(rec[m[1]]) === m[2]));
  }

  private requireSmSession(session: string, srRef: string, method: string): void {
    if (this.sessions.get(session) !== srRef) throw new Failure(['PERMISSION_DENIED', method, 'only the SM session of this SR may call it']);
  }
}

function argc(method: string, params: XmlRpcValue[], n: number): void {
  if (params.length !== n) throw new Failure(['MESSAGE_PARAMETER_COUNT_MISMATCH', method, String(n), String(params.length)]);
}
