// Reaching a served VDI as its clients do: through its NBD socket (the link at
// `$SM_ROOT/run/blktap-control/nbd/<sr>/<vdi>`). A unix socket address holds at
// most 107 bytes and a test's SM_ROOT makes that path longer, so clients
// connect through a short link in the test's directory (the kernel follows it).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CMD, RawClient } from '../nbd/helpers.js';
import { run, type RunResult, type SmEnv } from './sm.js';

/** Where a served VDI's socket is: the SM_ROOT, a short directory for links, the SR (a test's SmEnv, or a guest's SR). */
export type NbdPlace = Pick<SmEnv, 'root' | 'base' | 'sr'>;

export const nbdSocket = (ctx: NbdPlace, vdi: string, sr = ctx.sr) => path.join(ctx.root, 'run', 'blktap-control', 'nbd', sr, vdi);

/** Whether the VDI is served here (its link exists). */
export const isServed = (ctx: NbdPlace, vdi: string, sr = ctx.sr) => fs.existsSync(nbdSocket(ctx, vdi, sr));

/** A short path that leads to the VDI's socket. */
export function shortSocket(ctx: NbdPlace, vdi: string, sr = ctx.sr): string {
  const link = path.join(ctx.base, `n-${randomBytes(3).toString('hex')}`);
  fs.symlinkSync(nbdSocket(ctx, vdi, sr), link);
  return link;
}

export const qemuUri = (socket: string, vdi: string) => `nbd:unix:${socket}:exportname=${vdi}`;
export const libnbdUri = (socket: string, vdi: string) => `nbd+unix:///${vdi}?socket=${socket}`;

/** qemu-io on the served VDI with these commands. */
export function qemuIo(ctx: NbdPlace, vdi: string, commands: string[], sr = ctx.sr): Promise<RunResult> {
  const sock = shortSocket(ctx, vdi, sr);
  return run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), qemuUri(sock, vdi)], { timeoutMs: 60_000 }).finally(() => fs.rmSync(sock, { force: true }));
}

/** A raw NBD connection to the served VDI (simple replies). */
export async function openNbd(ctx: NbdPlace, vdi: string, sr = ctx.sr): Promise<NbdVdiClient> {
  const sock = shortSocket(ctx, vdi, sr);
  try {
    return new NbdVdiClient(await RawClient.open(sock, vdi));
  } finally {
    fs.rmSync(sock, { force: true });
  }
}

/** One request at a time; every reply waited for (a paused datapath only delays it). */
export class NbdVdiClient {
  private cookie = 1n;
  constructor(readonly raw: RawClient) {}

  private async reply(dataLength = 0): Promise<Buffer | undefined> {
    const h = await this.raw.read(16, 120_000);
    if (!h) throw new Error('NBD connection closed');
    const error = h.readUInt32BE(4);
    if (error !== 0) throw new Error(`NBD error ${error}`);
    return dataLength > 0 ? this.raw.read(dataLength, 120_000) : undefined;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    for (let at = 0; at < data.length; at += 4 * 1024 * 1024) {
      const piece = data.subarray(at, at + 4 * 1024 * 1024);
      this.raw.request(CMD.WRITE, offset + at, piece.length, { cookie: this.cookie++, payload: piece });
      await this.reply();
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.raw.request(CMD.READ, offset, length, { cookie: this.cookie++ });
    return (await this.reply(length))!;
  }

  async flush(): Promise<void> {
    this.raw.request(CMD.FLUSH, 0, 0, { cookie: this.cookie++ });
    await this.reply();
  }

  close(): void {
    this.raw.request(CMD.DISC, 0, 0);
    this.raw.destroy();
  }
}

/** Writes through the datapath, then flushes: what a guest's acknowledged, flushed write is. */
export async function writeServed(ctx: NbdPlace, vdi: string, offset: number, data: Buffer, sr = ctx.sr): Promise<void> {
  const c = await openNbd(ctx, vdi, sr);
  try {
    await c.write(offset, data);
    await c.flush();
  } finally {
    c.close();
  }
}
