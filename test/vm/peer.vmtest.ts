// The two-VM harness (support/peer.ts, support/peer-agent.ts): this VM drives a
// second one, a second host of a pool with a kernel of its own, over the link
// run-tier.sh sets up: commands there, a unix socket there that reaches a
// server here, and an iSCSI login there to a target served here.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { byPathLink, parseDiscovery } from '../../lib/os/iscsi.js';
import { OUT, requireGuest, sparseFile, until } from './support/guest.js';
import { httpPostOverUnix, Peer, PeerError, peerConfigured, serveTcpToUnix } from './support/peer.js';
import { Tgt } from './support/tgt.js';

requireGuest();
const MiB = 1024 * 1024;
const SKIP = peerConfigured() ? false : 'no peer VM (run-tier.sh boots one when a suite of its PEER_SUITES runs)';
const IQN = 'iqn.2024-01.test.smvm:peer';
const ISCSI_PORT = 3260;
const LUN_BYTES = 96 * MiB;
/** The targets of this kernel's iSCSI sessions. */
async function iscsiSessionTargets(): Promise<string[]> {
  const dir = '/sys/class/iscsi_session';
  const sessions = await readdir(dir).catch(() => []);
  return Promise.all(sessions.map(async (s) => (await readFile(`${dir}/${s}/targetname`, 'utf8')).trim()));
}
const bootId = () => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();

describe('peer', { timeout: 600_000 }, () => {
  let peer: Peer;
  before(async () => {
    if (SKIP) return;
    peer = await Peer.connect({ timeoutMs: 300_000 }); // the peer boots alongside this VM
  });

  it('the peer is another kernel: its boot_id differs from ours', { skip: SKIP }, async () => {
    const theirs = (await peer.runOk(['cat', '/proc/sys/kernel/random/boot_id'])).stdout.trim();
    assert.match(theirs, /^[0-9a-f-]{36}$/);
    assert.equal(theirs, peer.bootId, 'the agent and a command it runs are on one kernel');
    assert.notEqual(theirs, bootId());
    assert.equal((await peer.runOk(['hostname'])).stdout.trim(), 'smvm-peer');
  });

  it('run reports exit code, signal, stdout and stderr as they were; input, env and cwd reach the program', { skip: SKIP }, async () => {
    const r = await peer.run(['node', '-e', 'process.stdout.write("to out"); process.stderr.write("to err"); process.exit(3)']);
    assert.deepEqual([r.code, r.signal, r.stdout, r.stderr], [3, null, 'to out', 'to err']);
    assert.equal((await peer.runOk(['cat'], { input: 'line 1\nline 2\n' })).stdout, 'line 1\nline 2\n');
    assert.equal((await peer.runOk(['printenv', 'PEER_TEST_VALUE'], { env: { PEER_TEST_VALUE: 'a b "c"' } })).stdout, 'a b "c"\n');
    assert.equal((await peer.runOk(['pwd'], { cwd: '/proc' })).stdout, '/proc\n');
    const slow = await peer.run(['sleep', '30'], { timeoutMs: 500 });
    assert.deepEqual([slow.code, slow.signal], [null, 'SIGKILL']);
    await assert.rejects(peer.runOk(['ls', '/no/such/path']), /exited with code 2: ls: cannot access '\/no\/such\/path'/);
    const missing = await peer.run(['no-such-program']).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(missing instanceof PeerError && missing.status === 500 && /ENOENT/.test(missing.message), String(missing));
    await assert.rejects(peer.run([]), (e: unknown) => e instanceof PeerError && e.status === 400);
  });

  describe('relay', () => {
    const sock = '/tmp/peer-relay-a.sock';
    let server: Server | undefined;
    let tcp: Awaited<ReturnType<typeof serveTcpToUnix>> | undefined;
    after(async () => {
      await tcp?.close();
      await new Promise((r) => (server ? server.close(r) : r(undefined)));
      await rm(sock, { force: true });
    });

    it("a unix socket on the peer reaches a unix-socket server of this VM, both ways", { skip: SKIP }, async () => {
      // an HTTP server only this VM can reach: it answers with our boot_id and what it was sent
      server = createServer((req, res) => {
        let body = '';
        req.on('data', (c: Buffer) => (body += c.toString()));
        req.on('end', () => res.end(JSON.stringify({ bootId: bootId(), url: req.url, body })));
      });
      await new Promise<void>((r) => server!.listen(sock, r));
      tcp = await serveTcpToUnix(0, sock);
      const there = await peer.relayToHere('/run/peer-test/relay/a.sock', tcp.port); // folders made there
      assert.equal(there, '/run/peer-test/relay/a.sock');
      for (const n of [1, 2]) {
        const r = await peer.runOk(httpPostOverUnix(there, `/req${n}`, `sent from the peer #${n}`), { timeoutMs: 60_000 });
        assert.deepEqual(JSON.parse(r.stdout), { bootId: bootId(), url: `/req${n}`, body: `sent from the peer #${n}` });
      }
    });
  });

  describe('iscsi', () => {
    let tgt: Tgt | undefined;
    const portal = () => `${peer.localAddress}:${ISCSI_PORT}`;
    after(async () => {
      if (SKIP) return;
      await peer.run(['iscsiadm', '-m', 'node', '-T', IQN, '-p', portal(), '--logout']).catch(() => {});
      await peer.run(['iscsiadm', '-k', '0']).catch(() => {}); // iscsid ends: a later suite starts its own
      await tgt?.stop();
    });

    it('the peer discovers, logs in to and out of a tgtd target on this VM and sees its LUN as a disk of its own', { skip: SKIP }, async () => {
      const lunFile = await sparseFile('/tmp/peer-lun.img', LUN_BYTES);
      tgt = await Tgt.start(peer.localAddress, ISCSI_PORT, `${OUT}/tgtd-peer.log`); // the link's address, not loopback
      await tgt.addTarget(1, IQN, [lunFile]);

      await peer.runOk(['iscsid']); // forks into the background once it listens
      await until('iscsid on the peer', async () => (await peer.runOk(['cat', '/proc/net/unix'])).stdout.includes('ISCSIADM_ABSTRACT_NAMESPACE'), 30_000);
      const found = parseDiscovery((await peer.runOk(['iscsiadm', '-m', 'discovery', '-t', 'sendtargets', '-p', portal()])).stdout);
      assert.deepEqual(found, [{ address: peer.localAddress, port: ISCSI_PORT, tpgt: 1, iqn: IQN }]);

      await peer.runOk(['iscsiadm', '-m', 'node', '-T', IQN, '-p', portal(), '--login']);
      const link = byPathLink(peer.localAddress, ISCSI_PORT, IQN, 1);
      let disk = '';
      await until('the LUN as a disk on the peer', async () => {
        await peer.run(['udevadm', 'settle', '-t', '10']);
        disk = (await peer.run(['readlink', '-e', link])).stdout.trim();
        return disk !== '';
      }, 60_000);
      assert.match(disk, /^\/dev\/sd[a-z]+$/);
      const sectors = (await peer.runOk(['cat', `/sys/class/block/${disk.slice('/dev/'.length)}/size`])).stdout.trim();
      assert.equal(Number(sectors) * 512, LUN_BYTES);

      // bytes written there land in the file behind the LUN here
      const block = `written on ${peer.hostname} through iSCSI `.padEnd(4096, '.');
      await peer.runOk(['dd', `of=${disk}`, 'bs=4096', 'count=1', 'oflag=direct', 'status=none'], { input: block });
      assert.equal((await readFile(lunFile)).subarray(0, 4096).toString('latin1'), block);

      // the session is the peer's kernel's: this one has none to the target
      assert.ok(!(await iscsiSessionTargets()).includes(IQN), 'no session to the target in this VM');

      await peer.runOk(['iscsiadm', '-m', 'node', '-T', IQN, '-p', portal(), '--logout']);
      await until('the disk gone on the peer', async () => (await peer.run(['test', '-e', disk])).code !== 0, 30_000);
      const sessions = await peer.run(['iscsiadm', '-m', 'session']);
      assert.equal(sessions.code, 21, `no session left on the peer: ${sessions.stdout}${sessions.stderr}`); // 21: no objects found
      await peer.runOk(['iscsiadm', '-m', 'node', '-T', IQN, '-p', portal(), '-o', 'delete']);
    });
  });
});
