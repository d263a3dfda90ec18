// Recording stand-ins for external tools, first on PATH: any use of a spied
// tool is logged (and fails), so a test can prove that bad input reached no
// tool. The stand-ins have no shell in them (sh itself is spied).
import fs from 'node:fs';
import path from 'node:path';
import type { SmEnv } from './sm.js';

export const NFS_TOOLS = ['mount', 'umount', 'mount.nfs', 'mount.nfs4', 'showmount', 'rpcinfo', 'exportfs'];
export const ISCSI_TOOLS = ['iscsiadm', 'lvm', 'udevadm', 'scsi_id', 'dmsetup', 'multipath', 'blockdev', 'mount', 'umount'];
/** What an injected command would run. */
export const SHELL_TOOLS = ['sh', 'bash', 'dash', 'touch', 'env'];

export interface Spy {
  env: NodeJS.ProcessEnv;
  /** Lines `<tool> <args>` of every spied tool that ran. */
  calls(): string[];
  /** A file a successful injection would create. */
  canary: string;
}

export function spyOn(ctx: SmEnv, tools: readonly string[] = [...NFS_TOOLS, ...SHELL_TOOLS]): Spy {
  const bin = path.join(ctx.base, 'spy-bin');
  const log = path.join(ctx.base, 'spy.log');
  fs.mkdirSync(bin, { recursive: true });
  for (const tool of new Set(tools)) {
    fs.writeFileSync(
      path.join(bin, tool),
      `#!${process.execPath}\nrequire('fs').appendFileSync(${JSON.stringify(log)}, ${JSON.stringify(tool)} + ' ' + process.argv.slice(2).join(' ') + '\\n'); process.exit(1);\n`,
      { mode: 0o755 },
    );
  }
  return {
    env: { ...ctx.env, PATH: `${bin}:${ctx.env.PATH ?? ''}` },
    calls: () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter(Boolean) : []),
    canary: path.join(ctx.base, 'injected'),
  };
}
