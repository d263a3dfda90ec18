/**
 * What the collector can do next with a forest of images, as pure functions:
 * garbage (hidden subtrees nobody can reach), coalesceable nodes (a hidden node
 * whose parent has it as only child), and leaf-coalesce candidates.
 */
import type { ImageNode } from '../lib/sr/repository.js';

export type Nodes = Map<string, ImageNode>;

/**
 * Hidden images whose whole subtree is hidden, children before parents. An
 * image in `keep` (in use: attached and activated) is not garbage, and so
 * neither is any ancestor it still reads through.
 */
export function findGarbage(nodes: Nodes, keep: ReadonlySet<string> = new Set()): string[] {
  const memo = new Map<string, boolean>();
  const isGarbage = (n: ImageNode, depth = 0): boolean => {
    if (memo.has(n.uuid)) return memo.get(n.uuid)!;
    const result = n.hidden && !keep.has(n.uuid) && depth <= nodes.size && n.children.every((c) => nodes.has(c) && isGarbage(nodes.get(c)!, depth + 1));
    memo.set(n.uuid, result);
    return result;
  };
  const out: string[] = [];
  const visit = (n: ImageNode) => {
    for (const c of n.children) {
      const child = nodes.get(c);
      if (child) visit(child);
    }
    if (isGarbage(n)) out.push(n.uuid);
  };
  for (const n of nodes.values()) if (!n.parent || !nodes.has(n.parent)) visit(n);
  return out;
}

/**
 * A hidden node with children, whose parent exists, is hidden, and has it as
 * its only child. A visible parent is a VDI (a `single` snapshot is the old
 * image itself): copying into it would change what that VDI reads as.
 * Nearest the root first: each coalesce then copies one original delta, so a
 * chain collapses in linear, not quadratic, time.
 */
export function findCoalesceable(nodes: Nodes, skip: ReadonlySet<string>): ImageNode[] {
  const depth = (n: ImageNode) => {
    let d = 0;
    for (let p = n.parent; p && nodes.has(p) && d <= nodes.size; p = nodes.get(p)!.parent) d++;
    return d;
  };
  return [...nodes.values()]
    .filter((n) => {
      if (!n.hidden || n.children.length === 0 || !n.parent || skip.has(n.uuid)) return false;
      const parent = nodes.get(n.parent);
      return parent !== undefined && parent.hidden && parent.children.length === 1;
    })
    .sort((a, b) => depth(a) - depth(b) || byUuid(a, b));
}

/**
 * The run of hidden nodes that collapses into `first`'s parent together:
 * `first`, then upwards while the node has exactly one child that is itself
 * coalesceable once the node is gone (hidden, with children). Bottom first.
 */
export function coalesceRun(nodes: Nodes, first: ImageNode, skip: ReadonlySet<string>): string[] {
  const run = [first.uuid];
  for (let n = first; n.children.length === 1 && run.length <= nodes.size; ) {
    const c = nodes.get(n.children[0]!);
    if (!c || !c.hidden || c.children.length === 0 || skip.has(c.uuid)) break;
    run.push(c.uuid);
    n = c;
  }
  return run;
}

/** A visible leaf without siblings whose parent is hidden: it can merge into the parent. */
export function findLeafCoalesceable(nodes: Nodes, skip: ReadonlySet<string>): ImageNode[] {
  return [...nodes.values()]
    .filter((n) => {
      if (n.hidden || n.children.length > 0 || !n.parent || skip.has(n.uuid)) return false;
      const parent = nodes.get(n.parent);
      return parent !== undefined && parent.hidden && parent.children.length === 1;
    })
    .sort(byUuid);
}

const byUuid = (a: ImageNode, b: ImageNode) => a.uuid.localeCompare(b.uuid);
