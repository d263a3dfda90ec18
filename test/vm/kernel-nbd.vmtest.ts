// The kernel NBD path of the datapath (DESIGN item 8) on a File SR in a guest
// directory: vdi_attach's params is a /dev/nbdN, connected at vdi_activate and
// released at vdi_deactivate; ext4 made, mounted, written, checked and read
// back through it, a snapshot taken while mounted. The same case runs on an
// NFS SR (nfs-sr.vmtest) and an LVMoISCSI SR (lvmoiscsi-sr.vmtest).
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createAttachedSr, makeSmEnv, startServer, type Server, type SmEnv } from '../helpers/sm.js';
import { OUT, requireGuest } from './support/guest.js';
import { fileSystemOverKernelNbd } from './support/kernel-nbd.js';

requireGuest();

describe('kernel-nbd', { timeout: 600_000 }, () => {
  let ctx: SmEnv;
  // The resident driver (`FileSR --serve`, JSON-RPC): a process start per verb costs seconds under TCG.
  let server: Server;

  before(async () => {
    ctx = await makeSmEnv();
    server = await startServer(ctx);
    await createAttachedSr(server);
  });

  after(async () => {
    await copyFile(ctx.smlog, join(OUT, 'kernel-nbd-SMlog')).catch(() => {});
    await server?.call('sr_detach').catch(() => {});
    await server?.stop();
    await ctx.cleanup();
  });

  it('File SR: ext4 on the /dev/nbdN of vdi_attach, through deactivate/detach/attach and a snapshot while mounted', async () => {
    const { vdi, snapshot } = await fileSystemOverKernelNbd({ sr: ctx.sr, smRoot: ctx.root, ok: (verb, extra) => server.call(verb, extra) });
    for (const u of [snapshot, vdi]) await server.call('vdi_delete', { vdi_uuid: u, vdi_location: u });
  });
});
