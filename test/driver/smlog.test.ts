// SMlog's line format, and the operator CLI over a real SR: `sm sr-scan`,
// `sm tree` (the GC's tree picture) and `sm log --vdi`.
import test from 'ava';
import { MiB, pattern } from '../helpers/model.js';
import { createAttachedSr, createVdi, deleteVdi, gc, makeSmEnv, readSmlog, smCli, snapshot, withServer } from '../helpers/sm.js';
import { readTree, shapeOf, writeVdi, type Node } from '../helpers/sr-state.js';

const SM_LINE = /^[A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2} \S+ SM: \[\d+\] .+$/;
const SMGC_LINE = /^[A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2} \S+ SMGC: \[\d+\] .+$/;
const TREE_LINE = /^( {8}(?: {4})*)(\*?)([0-9a-f]{8})\[VHD\]\((\d+(?:\.\d{3}[GMK])?)\/\/(\d+(?:\.\d{3}[GMK])?)\|([an])\)$/;

/** Rebuilds the forest from tree lines (indentation = depth) as shapeOf renders it, names = first 8 uuid characters. */
function shapeFromPicture(lines: string[]): { shape: string; active: Set<string> } {
  type P = { name: string; hidden: boolean; children: P[] };
  const roots: P[] = [];
  const stack: P[] = [];
  const active = new Set<string>();
  for (const line of lines) {
    const m = TREE_LINE.exec(line);
    if (!m) throw new Error(`not a tree line: ${JSON.stringify(line)}`);
    const depth = (m[1].length - 8) / 4;
    const node: P = { name: m[3], hidden: m[2] === '*', children: [] };
    if (m[6] === 'a') active.add(m[3]);
    if (depth === 0) roots.push(node);
    else stack[depth - 1].children.push(node);
    stack[depth] = node;
    stack.length = depth + 1;
  }
  const render = (n: P): string => {
    const own = `${n.hidden ? '*' : ''}${n.name}`;
    const kids = n.children.map(render).sort();
    return kids.length ? `${own}(${kids.join(',')})` : own;
  };
  return { shape: roots.map(render).sort().join(' '), active };
}

const prefixNames = (nodes: Map<string, Node>) => Object.fromEntries([...nodes.keys()].map((u) => [u, u.slice(0, 8)]));

test('SMlog lines, sm sr-scan, sm tree and sm log --vdi on a real SR', async (t) => {
  const ctx = await makeSmEnv();
  try {
    const { a, b, sa, sb } = await withServer(ctx, async (s) => {
      await createAttachedSr(s);
      const a = await createVdi(s, 8 * MiB, 'disk A');
      const b = await createVdi(s, 6 * MiB, 'disk B');
      await writeVdi(ctx, a, 0, pattern(1, 3 * MiB));
      await writeVdi(ctx, b, MiB, pattern(2, MiB));
      const sa = await snapshot(s, a);
      const sb = await snapshot(s, b);
      await snapshot(s, b);
      await s.call('vdi_attach', { vdi_uuid: a, vdi_location: a, args: ['true'] });
      await s.call('vdi_activate', { vdi_uuid: a, vdi_location: a, args: ['true'] });
      return { a, b, sa, sb };
    });

    // sm sr-scan: the VDI table, one row per image
    const scan = await smCli(ctx, ['sr-scan', ctx.sr]);
    t.is(scan.code, 0, scan.stderr);
    const rows = scan.stdout.trimEnd().split('\n');
    t.regex(rows[0], /^uuid\s+name\s+virtual\s+physical\s+hidden\s+parent$/);
    let nodes = await readTree(ctx);
    t.is(rows.at(-1), `${nodes.size} images`);
    t.is(rows.length, nodes.size + 2);
    for (const n of nodes.values()) {
      const row = rows.find((r) => r.startsWith(n.uuid));
      t.truthy(row, `a row for ${n.uuid}`);
      const cols = row!.split(/\s{2,}/);
      t.is(cols.at(-2), n.hidden ? 'yes' : 'no', `hidden column of ${n.uuid}`);
      t.is(cols.at(-1), n.parent ?? '-', `parent column of ${n.uuid}`);
    }
    t.regex(rows.find((r) => r.startsWith(a))!, /disk A/);

    // sm tree: the picture of the real trees
    const tree = await smCli(ctx, ['tree', ctx.sr]);
    t.is(tree.code, 0, tree.stderr);
    const lines = tree.stdout.trimEnd().split('\n');
    t.regex(lines[0], new RegExp(`^SR ${ctx.sr.slice(0, 4)} \\('test SR'\\) \\(\\d+ VDIs in 2 VHD trees\\):$`));
    const picture = shapeFromPicture(lines.slice(1));
    t.is(picture.shape, shapeOf(nodes, prefixNames(nodes)), 'the picture shows the trees as they are');
    t.deepEqual([...picture.active], [a.slice(0, 8)], 'only the activated VDI is marked a');
    for (const l of lines.slice(1)) t.regex(l, /^ {8}( {4})*\*?[0-9a-f]{8}\[VHD\]/, '8-space base indent, +4 per level');

    // Let the GC run on A's tree after its snapshot goes, so SMlog has SMGC lines too.
    await withServer(ctx, async (s) => {
      await s.call('vdi_deactivate', { vdi_uuid: a, vdi_location: a });
      await s.call('vdi_detach', { vdi_uuid: a, vdi_location: a });
      await deleteVdi(s, sa);
    });
    await gc(ctx);
    nodes = await readTree(ctx);
    t.is(nodes.get(a)!.parent, undefined, 'A is one image again');

    // Every line of SMlog has the established layout.
    const log = readSmlog(ctx).split('\n');
    t.is(log.pop(), '', 'SMlog ends with a newline');
    const bad = log.filter((l) => !SM_LINE.test(l) && !SMGC_LINE.test(l));
    t.deepEqual(bad, [], 'every SMlog line matches the layout');
    t.true(log.filter((l) => SM_LINE.test(l)).length > 10);
    t.true(log.some((l) => SMGC_LINE.test(l) && l.includes(`=== SR ${ctx.sr}: gc ===`)));

    // sm log --vdi B: the lines about B and its chain, nothing about A's tree.
    const chainOfB = [...nodes.values()].filter((n) => n.uuid === b || nodes.get(b)!.parent === n.uuid || depthChainHas(nodes, b, n.uuid));
    const keysB = chainOfB.flatMap((n) => [n.uuid, n.uuid.slice(0, 8)]);
    const keysA = [a, a.slice(0, 8), sa, sa.slice(0, 8)];
    const outB = await smCli(ctx, ['log', '--vdi', b]);
    t.is(outB.code, 0, outB.stderr);
    const linesB = outB.stdout.trimEnd().split('\n');
    t.true(linesB.length >= 3);
    for (const l of linesB) t.true(keysB.some((k) => l.includes(k)), `line is about B's chain: ${l}`);
    for (const l of linesB) t.false(keysA.some((k) => l.includes(k)) && !keysB.some((k) => l.includes(k)), `line about A leaked: ${l}`);
    const aboutB = log.filter((l) => l.includes(b));
    for (const l of aboutB) t.true(linesB.includes(l), `every line naming B is shown: ${l}`);
    t.true(linesB.some((l) => l.includes('vdi_snapshot') && l.includes(b)), 'the snapshot requests of B are there');
    t.true(linesB.some((l) => l.includes(sb)), 'the creation of the snapshot of B is logged and shown');

    // sm log --vdi A after the GC: A's own lines (creation, snapshot, the GC work on it).
    const outA = await smCli(ctx, ['log', '--vdi', a]);
    const linesA = outA.stdout.trimEnd().split('\n');
    for (const l of linesA) t.true(l.includes(a) || l.includes(a.slice(0, 8)), `line is about A: ${l}`);
    t.true(linesA.some((l) => l.includes('vdi_snapshot')));
    t.true(linesA.some((l) => / created/.test(l)), 'the creation of A is in its log');
    t.true(linesA.some((l) => /SMGC: \[\d+\] .*[Ll]eaf-coalesc/.test(l)), 'the leaf-coalesce of A is in its log');
    t.false(linesA.some((l) => l.includes(b)));
  } finally {
    await ctx.cleanup();
  }
});

/** True when `other` is an ancestor or a descendant of `uuid`. */
function depthChainHas(nodes: Map<string, Node>, uuid: string, other: string): boolean {
  for (let n = nodes.get(uuid); n; n = n.parent ? nodes.get(n.parent) : undefined) if (n.uuid === other) return true;
  const down = [uuid];
  while (down.length) {
    for (const c of nodes.get(down.pop()!)?.children ?? []) {
      if (c === other) return true;
      down.push(c);
    }
  }
  return false;
}
