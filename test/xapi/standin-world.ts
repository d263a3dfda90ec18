// A test's SR attached through the real FileSR executable while the stand-in
// xapi (test/helpers/xapi-standin.ts: xapi itself cannot run here) listens at
// `$SM_ROOT/var/lib/xcp/xapi`, with the SR, this host and the call's session
// known to it as xapi would know them.
import path from 'node:path';
import { makeSmEnv, SESSION_SECRET, xml, type SmEnv } from '../helpers/sm.js';
import { XapiStandin, type StandinOptions } from '../helpers/xapi-standin.js';

export const SR_REF = 'OpaqueRef:sr-1';
export const HOST_REF = 'OpaqueRef:host-1';
export const MiB = 1024 * 1024;

export function xapiSocket(ctx: SmEnv): string {
  return path.join(ctx.root, 'var', 'lib', 'xcp', 'xapi');
}

export const OTHER_HOST_REF = 'OpaqueRef:host-2';

/** The stand-in at the test's `$SM_ROOT/var/lib/xcp/xapi`, knowing the SR, this host (and another) and the calls' session as xapi would. */
export function startStandinFor(ctx: SmEnv, opts: Omit<StandinOptions, 'smSessions' | 'srs' | 'hosts'> = {}): Promise<XapiStandin> {
  return XapiStandin.start(xapiSocket(ctx), {
    smSessions: [{ ref: SESSION_SECRET, sr: SR_REF }],
    srs: [{ ref: SR_REF, uuid: ctx.sr }],
    hosts: [
      { ref: HOST_REF, uuid: ctx.hostId },
      { ref: OTHER_HOST_REF, uuid: '7c1e0d4a-5b2f-4e8a-9c3d-1f0e2d3c4b5a' },
    ],
    ...opts,
  });
}

export async function withXapiSr(
  fn: (ctx: SmEnv, xapi: XapiStandin) => Promise<void>,
  opts: { attach?: boolean; plugin?: StandinOptions['plugin'] } = {},
): Promise<void> {
  const ctx = await makeSmEnv();
  const xapi = await startStandinFor(ctx, opts.plugin ? { plugin: opts.plugin } : {});
  try {
    await xml(ctx, 'sr_create', { args: ['0'] });
    if (opts.attach !== false) await xml(ctx, 'sr_attach');
    await fn(ctx, xapi);
  } finally {
    await xapi.close();
    await ctx.cleanup();
  }
}
