// lib/xapi's client against the stand-in xapi (test/helpers/xapi-standin.ts;
// xapi itself cannot run here): the wire format, typed failures, and the
// database semantics the SM relies on.
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { loginAsRoot, XapiFailure, XapiSession, XapiTransportError, type VdiIntroduce } from '../../lib/xapi/index.js';
import { XapiStandin } from '../helpers/xapi-standin.js';

const SR = 'OpaqueRef:sr-1';
const SESSION = 'OpaqueRef:session-1';

async function withStandin(fn: (xapi: XapiStandin, session: XapiSession) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'xapi-client-'));
  const socket = path.join(dir, 'xapi');
  const xapi = await XapiStandin.start(socket, { smSessions: [{ ref: SESSION, sr: SR }], srs: [{ ref: SR, uuid: randomUUID() }] });
  try {
    await fn(xapi, new XapiSession(socket, SESSION, { subtaskOf: 'OpaqueRef:task-1' }));
  } finally {
    await xapi.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const fields = (over: Partial<VdiIntroduce> = {}): VdiIntroduce => {
  const uuid = randomUUID();
  return {
    uuid,
    name_label: 'n',
    name_description: 'd',
    SR,
    type: 'user',
    sharable: false,
    read_only: false,
    other_config: {},
    location: uuid,
    xenstore_data: {},
    sm_config: {},
    managed: true,
    virtual_size: 2 ** 40,
    physical_utilisation: 512,
    metadata_of_pool: '',
    is_a_snapshot: false,
    snapshot_time: '',
    snapshot_of: '',
    cbt_enabled: false,
    ...over,
  };
};

async function failure(t: import('ava').ExecutionContext, p: Promise<unknown>): Promise<XapiFailure> {
  const err = await t.throwsAsync(p, { instanceOf: XapiFailure });
  return err!;
}

test('db_introduce: 64-bit sizes as strings, defaults xapi sets; get_by_uuid and get_record read it back', async (t) => {
  await withStandin(async (xapi, s) => {
    const f = fields();
    const ref = await s.vdiIntroduce(f);
    t.is(await s.vdiByUuid(f.uuid), ref);
    const rec = await s.vdiRecord(ref);
    t.is(rec.virtual_size, String(2 ** 40));
    t.is(rec.on_boot, 'persist');
    t.is(rec.metadata_of_pool, 'OpaqueRef:NULL');
    t.is(xapi.calls[0].headers['subtask-of'], 'OpaqueRef:task-1');
  });
});

test('typed failures: LOCATION_NOT_UNIQUE, UUID_INVALID, HANDLE_INVALID, MAP_DUPLICATE_KEY, MESSAGE_METHOD_UNKNOWN, SESSION_INVALID (session masked)', async (t) => {
  await withStandin(async (xapi, s) => {
    const f = fields();
    const ref = await s.vdiIntroduce(f);
    t.is((await failure(t, s.vdiIntroduce(fields({ location: f.location })))).code, 'LOCATION_NOT_UNIQUE');
    t.is((await failure(t, s.vdiIntroduce(fields({ uuid: 'not-a-uuid' })))).code, 'UUID_INVALID');
    const gone = await failure(t, s.vdiByUuid(randomUUID()));
    t.deepEqual([gone.code, gone.params[0]], ['UUID_INVALID', 'VDI']);
    await s.vdiAddToSmConfig(ref, 'k', 'v');
    t.is((await failure(t, s.vdiAddToSmConfig(ref, 'k', 'w'))).code, 'MAP_DUPLICATE_KEY');
    await s.vdiRemoveFromSmConfig(ref, 'absent'); // a missing key: nothing happens
    t.deepEqual(await s.vdiSmConfig(ref), { k: 'v' });
    t.is((await failure(t, s.call('VDI.no_such_call', ref))).code, 'MESSAGE_METHOD_UNKNOWN');
    await s.vdiForget(ref);
    t.is((await failure(t, s.vdiForget(ref))).code, 'HANDLE_INVALID');
    xapi.sessions.delete(SESSION);
    const invalid = await failure(t, s.srByUuid('x'));
    t.is(invalid.code, 'SESSION_INVALID');
    t.deepEqual(invalid.params, ['(session)'], 'the session never leaves the client in an error');
  });
});

test('the GC root login: a session of its own, logged out again; only the SR\'s own SM session may set its sizes', async (t) => {
  await withStandin(async (xapi, s) => {
    const root = await loginAsRoot(s.socketPath);
    t.not(root.session, SESSION);
    t.true(xapi.sessions.has(root.session));
    t.is((await failure(t, root.srSetPhysicalSize(SR, 1))).code, 'PERMISSION_DENIED');
    await s.srSetPhysicalSize(SR, 1);
    await root.logout();
    t.false(xapi.sessions.has(root.session));
  });
});

test('no endpoint: a transport error, not a failure', async (t) => {
  const s = new XapiSession(path.join(os.tmpdir(), `no-xapi-${randomUUID()}`), SESSION);
  await t.throwsAsync(s.srByUuid('x'), { instanceOf: XapiTransportError });
});

test('calls of one process share a kept-alive connection; one xapi dropped while idle is replaced without a failed call', async (t) => {
  await withStandin(async (xapi, session) => {
    for (let i = 0; i < 3; i++) t.is(await session.srVirtualAllocation(SR), 0);
    xapi.closeIdleConnections();
    await new Promise((r) => setTimeout(r, 50));
    t.is(await session.srVirtualAllocation(SR), 0, 'the next call goes out on a new connection');
    t.is(xapi.callsOf('SR.get_virtual_allocation').length, 4, 'each call reached xapi once');
  });
});

test('kept-alive connections belong to their socket: calls to two endpoints from one process each reach their own', async (t) => {
  await withStandin(async (a, sa) => {
    await withStandin(async (b, sb) => {
      for (let i = 0; i < 3; i++) {
        await sa.srVirtualAllocation(SR);
        await sb.srVirtualAllocation(SR);
      }
      t.is(a.callsOf('SR.get_virtual_allocation').length, 3);
      t.is(b.callsOf('SR.get_virtual_allocation').length, 3);
    });
  });
});

test('independent calls sent together each get their own answer', async (t) => {
  await withStandin(async (xapi, s) => {
    xapi.answerSlowly(50);
    const refs = await Promise.all(Array.from({ length: 6 }, () => s.vdiIntroduce(fields())));
    t.is(new Set(refs).size, 6, 'six distinct refs');
    for (const ref of refs) t.truthy(xapi.vdis.get(ref));
  });
});
