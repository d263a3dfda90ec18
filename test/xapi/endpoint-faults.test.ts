// The verbs that change an SR, each while the XenAPI endpoint misbehaves: a
// named call refused with a XenAPI failure, the endpoint gone in the middle of
// the verb (a call unanswered, the socket removed), an answer that comes too
// late. The endpoint is the stand-in xapi (test/helpers/xapi-standin.ts: xapi
// itself cannot run here), the drivers the real FileSR executable, one process
// per call as xapi runs it. Each time: the verb fails with its own SM error
// (the established SM's EXCEPTION_TYPE), the SR's own state is consistent, and
// an sr_scan once the endpoint is healthy again leaves xapi's database exactly
// what it must be for the SR (test/helpers/xapi-expected.ts).
import test, { type ExecutionContext } from 'ava';
import { callDriver, createArgs, request, xml, type SmEnv } from '../helpers/sm.js';
import { checkProblems, listImages, readMetadata, readTree, strayFiles } from '../helpers/sr-state.js';
import { XapiDbHistory } from '../helpers/xapi-expected.js';
import type { XapiStandin } from '../helpers/xapi-standin.js';
import { HOST_REF, MiB, SR_REF, withXapiSr } from './standin-world.js';

/** The driver's bound on one XenAPI call (SM_XAPI_TIMEOUT_MS) in the verb under test; the late answer comes well after it. */
const TIMEOUT_MS = 3000;

interface VerbCase {
  code: number;
  /** The call refused, or answered too late. */
  call: string;
  /** The endpoint goes away at this call of the verb (1: its first), after the change on disk where the verb has one by then. */
  goneAt: number;
  run(ctx: SmEnv, vdi: string, ref: string): Promise<Awaited<ReturnType<typeof callDriver>>>;
}

const vdiFields = (vdi: string, ref: string) => ({ vdi_uuid: vdi, vdi_location: vdi, vdi_ref: ref });
const call = (ctx: SmEnv, verb: string, extra: Record<string, unknown>) => callDriver(verb, request(ctx, verb, extra), ctx.env);

const VERBS: Record<string, VerbCase> = {
  vdi_create: { code: 78, call: 'VDI.db_introduce', goneAt: 2, run: (ctx) => call(ctx, 'vdi_create', { args: createArgs(8 * MiB), vdi_type: 'user' }) },
  // paused, its record read, the SR's allocation read while the files are made: the 4th call is the first after them.
  vdi_snapshot: { code: 82, call: 'VDI.db_introduce', goneAt: 4, run: (ctx, v, ref) => call(ctx, 'vdi_snapshot', vdiFields(v, ref)) },
  vdi_clone: { code: 81, call: 'VDI.db_introduce', goneAt: 4, run: (ctx, v, ref) => call(ctx, 'vdi_clone', vdiFields(v, ref)) },
  vdi_delete: { code: 80, call: 'VDI.db_forget', goneAt: 1, run: (ctx, v, ref) => call(ctx, 'vdi_delete', vdiFields(v, ref)) },
  vdi_resize: { code: 110, call: 'VDI.set_virtual_size', goneAt: 3, run: (ctx, v, ref) => call(ctx, 'vdi_resize', { ...vdiFields(v, ref), args: [String(32 * MiB)] }) },
  sr_scan: { code: 40, call: 'VDI.get_all_records_where', goneAt: 2, run: (ctx) => call(ctx, 'sr_scan', {}) },
};

type Fault = 'refused' | 'gone' | 'slow';

function inject(xapi: XapiStandin, c: VerbCase, fault: Fault): void {
  if (fault === 'refused') xapi.failNext(c.call, ['INTERNAL_ERROR', 'refused by the test']);
  else if (fault === 'gone') xapi.goneAtCall(c.goneAt);
  else xapi.answerSlowly(TIMEOUT_MS * 2.5, c.call);
}

/** The SR's own state: every image passes check, nothing stray or journaled is left, records and images agree. */
async function assertSrConsistent(t: ExecutionContext, ctx: SmEnv, what: string): Promise<void> {
  t.deepEqual(await checkProblems(ctx), [], `${what}: every image passes check`);
  t.deepEqual(strayFiles(ctx), [], `${what}: no stray files or journals`);
  const nodes = await readTree(ctx);
  const records = readMetadata(ctx).vdis;
  for (const uuid of Object.keys(records)) t.true(nodes.has(uuid), `${what}: record ${uuid} has an image`);
  for (const n of nodes.values()) if (!n.hidden) t.true(records[n.uuid]?.managed === true, `${what}: visible image ${n.uuid} has a managed record`);
}

for (const [verb, c] of Object.entries(VERBS)) {
  for (const fault of ['refused', 'gone', 'slow'] as const) {
    const how = fault === 'refused' ? `${c.call} refused` : fault === 'gone' ? `the endpoint gone at call ${c.goneAt}` : `${c.call} answered too late`;
    test(`${verb} with ${how}: ${c.code}, the SR consistent, the next scan puts the database right`, async (t) => {
      await withXapiSr(async (ctx, xapi) => {
        const history = new XapiDbHistory(ctx, xapi, { srRef: SR_REF, hostRef: HOST_REF });
        const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB), vdi_type: 'user' })) as { uuid: string };
        const ref = history.refOf(vdi)!;
        // Something for the scan to repair: a record xapi lost.
        if (verb === 'sr_scan') xapi.vdis.delete(ref);
        const imagesBefore = listImages(ctx);

        inject(xapi, c, fault);
        ctx.env.SM_XAPI_TIMEOUT_MS = String(TIMEOUT_MS);
        const r = await c.run(ctx, vdi, ref);
        delete ctx.env.SM_XAPI_TIMEOUT_MS;
        t.is(r.code, 0, 'the driver answers');
        t.is(r.response.kind, 'fault', `${verb} fails`);
        if (r.response.kind !== 'fault') return;
        t.is(r.response.faultCode, c.code, `${verb}: its own SM error (${r.response.faultString})`);
        t.regex(r.response.faultString, /XenAPI /, 'the fault names the XenAPI call');
        if (fault === 'slow') t.regex(r.response.faultString, new RegExp(`no reply within ${TIMEOUT_MS} ms`));
        await assertSrConsistent(t, ctx, `after the failed ${verb}`);
        if (verb === 'vdi_create') t.deepEqual(listImages(ctx), imagesBefore, 'the new image is removed again');

        await xapi.restart();
        xapi.answerPromptly();
        await xml(ctx, 'sr_scan');
        await history.verbDone('sr_scan');
        await history.assert(t, 'sr_scan with a healthy endpoint');
        await assertSrConsistent(t, ctx, 'after the scan');
      });
    });
  }
}

test('answers slower than usual but within the bound: the verbs succeed and the database is in step', async (t) => {
  await withXapiSr(async (ctx, xapi) => {
    const history = new XapiDbHistory(ctx, xapi, { srRef: SR_REF, hostRef: HOST_REF });
    xapi.answerSlowly(100);
    const { uuid: vdi } = (await xml(ctx, 'vdi_create', { args: createArgs(16 * MiB), vdi_type: 'user' })) as { uuid: string };
    await history.assert(t, 'vdi_create');
    await xml(ctx, 'vdi_snapshot', vdiFields(vdi, history.refOf(vdi)!));
    await history.verbDone('vdi_snapshot', vdi);
    await history.assert(t, 'vdi_snapshot');
  });
});
