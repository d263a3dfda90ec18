// Active VDIs under load for the live GC tests: attach + activate, and NBD
// clients writing through the datapath's socket, the model updated on each
// acknowledgement.
import { pattern, type SparseDisk } from './model.js';
import { openNbd, type NbdPlace, type NbdVdiClient } from './nbd-vdi.js';
import type { World } from './world.js';

const vdiArgs = (vdi: string, extra: Record<string, unknown> = {}) => ({ vdi_uuid: vdi, vdi_location: vdi, ...extra });

export async function activate(w: World, vdi: string): Promise<void> {
  await w.s.call('vdi_attach', vdiArgs(vdi, { args: ['true'] }));
  await w.s.call('vdi_activate', vdiArgs(vdi, { args: ['true'] }));
}

export async function deactivate(w: World, vdi: string): Promise<void> {
  await w.s.call('vdi_deactivate', vdiArgs(vdi));
  await w.s.call('vdi_detach', vdiArgs(vdi));
}

/** Where the writers connect and whose models they keep: a World, or an SR in the VM tier. */
export interface LoadedVdis {
  ctx: NbdPlace;
  models: Map<string, SparseDisk>;
}

/**
 * `clients` connections writing 4 KiB at pseudo-random places of `size` bytes,
 * each in its own stripe of 4 KiB pages (no two clients write the same page, so
 * the model's order is the acknowledgement order). The model takes a write once acknowledged.
 * `writesPerSecond`: each client writes at most that often (a steady load, as
 * a running VM's); unset, as fast as the datapath answers.
 */
export async function writeLoad(w: LoadedVdis, vdi: string, size: number, clients: number, writesPerSecond?: number) {
  const conns: NbdVdiClient[] = [];
  for (let i = 0; i < clients; i++) conns.push(await openNbd(w.ctx, vdi));
  let stop = false;
  let writes = 0;
  const errors: unknown[] = [];
  const pages = size / 4096;
  const loops = conns.map(async (c, k) => {
    let x = 12345 + k * 7919;
    let next = performance.now();
    try {
      while (!stop) {
        if (writesPerSecond) {
          next += 1000 / writesPerSecond;
          const wait = next - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        }
        x = (x * 1103515245 + 12345) % 2147483648;
        const page = Math.floor((x / 2147483648) * Math.floor(pages / clients)) * clients + k;
        const data = pattern(x, 4096);
        await c.write(page * 4096, data);
        w.models.get(vdi)!.write(page * 4096, data);
        writes++;
      }
    } catch (err) {
      errors.push(err);
    }
  });
  return {
    get writes() {
      return writes;
    },
    errors,
    async stop() {
      stop = true;
      await Promise.all(loops);
    },
    conns,
    close() {
      for (const c of conns) c.close();
    },
  };
}

/** The collector's lines about live work, for the test's log. */
export const liveLines = (log: string) =>
  log
    .split('\n')
    .filter((l) => /Live leaf|paused|given up/.test(l))
    .join('\n');

export const waitWrites = async (load: { writes: number }, n: number) => {
  const target = load.writes + n;
  while (load.writes < target) await new Promise((r) => setTimeout(r, 10));
};

