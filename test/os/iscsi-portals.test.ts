// Several addresses for one target: the argv sequence tries each in turn until
// discovery and login work, and undoes a half login before moving on.
import test from 'ava';
import { loginFirstPortal } from '../../lib/os/iscsi-portals.js';
import { ToolError } from '../../lib/os/run.js';
import { recorder } from './helpers.js';

const IQN = 'iqn.2024-01.test.smvm:multi';
const refused = (args: readonly string[]) => new ToolError('iscsiadm', args, 4, 'iscsiadm: cannot make connection to 10.0.0.1: Connection refused', '', null, false);
const offers = (portal: string, ...iqns: string[]) => ({ stdout: iqns.map((i) => `${portal},1 ${i}\n`).join('') });
const portals = [
  { address: '10.0.0.1', port: 3260 },
  { address: '10.0.0.2', port: 3260 },
  { address: '10.0.0.3', port: 3260 },
];

test('a dead first address, one not offering the IQN, then the one that works: discovery on each, login on the third only', async (t) => {
  const rec = recorder((c) => {
    const portal = c.args[c.args.indexOf('-p') + 1];
    if (c.args.includes('discovery') && portal === '10.0.0.1:3260') throw refused(c.args);
    if (c.args.includes('discovery') && portal === '10.0.0.2:3260') return offers(portal, 'iqn.2024-01.test.smvm:other');
    if (c.args.includes('discovery')) return offers(portal!, IQN);
    if (c.args[1] === 'session') throw new ToolError('iscsiadm', c.args, 21, 'iscsiadm: No active sessions.', '', null, false);
    return undefined;
  });
  const logged = await loginFirstPortal(portals, IQN, undefined, { run: rec.run });
  t.deepEqual(logged, { portal: portals[2], iqns: [IQN], fresh: [IQN] });
  const node = ['iscsiadm', '-m', 'node', '-T', IQN, '-p', '10.0.0.3:3260'];
  t.deepEqual(rec.argv(), [
    ['iscsiadm', '-m', 'discovery', '-t', 'sendtargets', '-p', '10.0.0.1:3260'],
    ['iscsiadm', '-m', 'discovery', '-t', 'sendtargets', '-p', '10.0.0.2:3260'],
    ['iscsiadm', '-m', 'discovery', '-t', 'sendtargets', '-p', '10.0.0.3:3260'],
    ['iscsiadm', '-m', 'session'],
    [...node, '-o', 'new'],
    [...node, '-o', 'update', '-n', 'node.session.auth.authmethod', '-v', 'None'],
    [...node, '--login'],
  ]);
});

test('a login failing on one address is logged out there before the next address is tried; all failing names each', async (t) => {
  const rec = recorder((c) => {
    const portal = c.args[c.args.indexOf('-p') + 1]!;
    if (c.args.includes('discovery')) return offers(portal, IQN, 'iqn.2024-01.test.smvm:second');
    if (c.args[1] === 'session') throw new ToolError('iscsiadm', c.args, 21, 'iscsiadm: No active sessions.', '', null, false);
    // The second target of `*` fails to log in everywhere.
    if (c.args.includes('--login') && c.args.includes('iqn.2024-01.test.smvm:second')) throw new ToolError('iscsiadm', c.args, 24, 'iscsiadm: Login failed', '', null, false);
    return undefined;
  });
  const err = await t.throwsAsync(loginFirstPortal(portals.slice(0, 2), '*', undefined, { run: rec.run }));
  t.regex(err!.message, /10\.0\.0\.1:3260: .*; 10\.0\.0\.2:3260: /);
  const logouts = rec.argv().filter((a) => a.includes('--logout'));
  t.deepEqual(logouts, [
    ['iscsiadm', '-m', 'node', '-T', IQN, '-p', '10.0.0.1:3260', '--logout'],
    ['iscsiadm', '-m', 'node', '-T', IQN, '-p', '10.0.0.2:3260', '--logout'],
  ]);
});
