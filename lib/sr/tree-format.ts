/**
 * The VHD tree picture operators know from SMlog: an SR line, then each tree with
 * an 8-space base indent and 4 more per level; `*` marks a hidden image, then the
 * first 8 uuid characters, the type and (virtual size//physical size|a=active n=not).
 */
import type { ImageNode } from './repository.js';

const UNITS: [string, number][] = [
  ['G', 2 ** 30],
  ['M', 2 ** 20],
  ['K', 2 ** 10],
];

/** Sizes as the established collector prints them: `2.000G`, `40.000M`, `512`. */
export function num2str(n: number): string {
  for (const [unit, size] of UNITS) if (n >= size) return `${(n / size).toFixed(3)}${unit}`;
  return String(n);
}

/** An unreadable image keeps its place, its sizes replaced by why it cannot be read. */
export function nodeLabel(n: ImageNode, active: boolean): string {
  const sizes = n.unreadable === undefined ? `${num2str(n.virtualSize)}//${num2str(n.physicalSize)}` : '?//?';
  const note = n.unreadable === undefined ? '' : ` UNREADABLE${n.parentUnknown ? ' (parent unknown)' : ''}: ${n.unreadable}`;
  return `${n.hidden ? '*' : ''}${n.uuid.slice(0, 8)}[VHD](${sizes}|${active ? 'a' : 'n'})${note}`;
}

/** Roots of the forest: images without a parent, or whose parent is missing. */
export function rootsOf(nodes: Map<string, ImageNode>): ImageNode[] {
  return [...nodes.values()].filter((n) => !n.parent || !nodes.has(n.parent)).sort((a, b) => a.uuid.localeCompare(b.uuid));
}

export function formatTree(root: ImageNode, nodes: Map<string, ImageNode>, active: Set<string>): string[] {
  const lines: string[] = [];
  const walk = (n: ImageNode, depth: number) => {
    lines.push(' '.repeat(8 + 4 * depth) + nodeLabel(n, active.has(n.uuid)));
    for (const c of n.children) {
      const child = nodes.get(c);
      if (child && depth < nodes.size) walk(child, depth + 1);
    }
  };
  walk(root, 0);
  return lines;
}

export function formatForest(
  sr: { uuid: string; name_label: string },
  nodes: Map<string, ImageNode>,
  active: Set<string>,
  vdiCount: number,
): string[] {
  const roots = rootsOf(nodes);
  const lines = [`SR ${sr.uuid.slice(0, 4)} ('${sr.name_label}') (${vdiCount} VDIs in ${roots.length} VHD trees):`];
  for (const r of roots) lines.push(...formatTree(r, nodes, active));
  return lines;
}
