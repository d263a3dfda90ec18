/** A tgtd iSCSI target inside the test VM (tgtadm), for the iSCSI tests. */
import { runTool } from '../../../lib/os/run.js';
import { checkIqn } from '../../../lib/os/validate.js';
import { startDaemon, until } from './guest.js';
import type { Daemon } from './guest.js';

const tgtadm = (args: string[], secrets: string[] = []) => runTool('tgtadm', ['--lld', 'iscsi', ...args], { timeoutMs: 30_000, secrets });

export class Tgt {
  private constructor(
    private readonly daemon: Daemon,
    readonly address: string,
    readonly port: number,
  ) {}

  /** Starts tgtd listening on address:port and waits until tgtadm reaches it. */
  static async start(address = '127.0.0.1', port = 3260, logFile = '/tmp/tgtd.log'): Promise<Tgt> {
    const daemon = startDaemon('tgtd', ['-f', '--iscsi', `portal=${address}:${port}`], logFile);
    await until('tgtd', () => tgtadm(['--mode', 'sys', '--op', 'show']).then(() => true, () => false));
    return new Tgt(daemon, address, port);
  }

  /** A target with one file-backed LUN (LUN 1; LUN 0 is tgt's controller), open to all initiators. */
  async addTarget(tid: number, iqn: string, backingFiles: string[]): Promise<void> {
    await tgtadm(['--mode', 'target', '--op', 'new', '--tid', String(tid), '--targetname', checkIqn(iqn)]);
    for (const [i, file] of backingFiles.entries()) {
      await tgtadm(['--mode', 'logicalunit', '--op', 'new', '--tid', String(tid), '--lun', String(i + 1), '--backing-store', file]);
    }
    await tgtadm(['--mode', 'target', '--op', 'bind', '--tid', String(tid), '--initiator-address', 'ALL']);
  }

  /**
   * CHAP on a target: `user`/`password` is what initiators must present;
   * `outgoing` is the target's own account for mutual CHAP.
   */
  async requireChap(tid: number, user: string, password: string, outgoing?: { user: string; password: string }): Promise<void> {
    await tgtadm(['--mode', 'account', '--op', 'new', '--user', user, '--password', password], [password]);
    await tgtadm(['--mode', 'account', '--op', 'bind', '--tid', String(tid), '--user', user]);
    if (outgoing) {
      await tgtadm(['--mode', 'account', '--op', 'new', '--user', outgoing.user, '--password', outgoing.password], [outgoing.password]);
      await tgtadm(['--mode', 'account', '--op', 'bind', '--tid', String(tid), '--user', outgoing.user, '--outgoing']);
    }
  }

  async show(): Promise<string> {
    return (await tgtadm(['--mode', 'target', '--op', 'show'])).stdout;
  }

  /** tgtd ignores SIGTERM: take it offline, then SIGKILL. */
  async stop(): Promise<void> {
    await tgtadm(['--mode', 'sys', '--op', 'update', '--name', 'State', '--value', 'offline']).catch(() => {});
    await this.daemon.kill();
  }
}
