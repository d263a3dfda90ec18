/**
 * Never acting on a partial view: an image that is there but cannot be read now
 * (EIO, a torn footer, truncation, a parent it names that is not in the SR)
 * may be a child of images the tree cannot see it under, or a parent of images
 * that look like nobody's. Until it reads again, its whole VHD tree is left
 * alone: nothing in it is deleted, coalesced, relinked or renamed. When nothing
 * says whose child it is, every tree of the SR is.
 */
import type { ImageNode } from './repository.js';

export interface LeftAlone {
  /** Images nothing may delete, coalesce, relink or rename now. */
  images: Set<string>;
  /** One line per unreadable image: which, why, and what is left alone for it. */
  reasons: string[];
  /**
   * Some unreadable image's parent is unknown: any image may have a child
   * nobody sees. Otherwise every unreadable image sits under its known parent,
   * so an image's children are exactly those the tree shows.
   */
  hiddenChildrenPossible: boolean;
}

export function leftAloneFor(nodes: Map<string, ImageNode>): LeftAlone {
  const unreadable = [...nodes.values()].filter((n) => n.unreadable !== undefined);
  const images = new Set<string>();
  const reasons: string[] = [];
  const hiddenChildrenPossible = unreadable.some((u) => u.parentUnknown);
  for (const u of unreadable) {
    if (u.parentUnknown) {
      for (const k of nodes.keys()) images.add(k);
      reasons.push(`image ${u.uuid} is unreadable (${u.unreadable}) and its parent is unknown: every tree is left alone`);
      continue;
    }
    const root = rootOf(nodes, u);
    for (const k of subtreeOf(nodes, root)) images.add(k);
    reasons.push(`image ${u.uuid} is unreadable (${u.unreadable}): its tree (root ${root.uuid}) is left alone`);
  }
  return { images, reasons, hiddenChildrenPossible };
}

function rootOf(nodes: Map<string, ImageNode>, n: ImageNode): ImageNode {
  let r = n;
  for (let steps = 0; r.parent && nodes.has(r.parent) && steps <= nodes.size; steps++) r = nodes.get(r.parent)!;
  return r;
}

function subtreeOf(nodes: Map<string, ImageNode>, root: ImageNode): string[] {
  const out = [root.uuid];
  const seen = new Set(out);
  for (let i = 0; i < out.length; i++) {
    for (const c of nodes.get(out[i])?.children ?? []) if (!seen.has(c)) seen.add(c) && out.push(c);
  }
  return out;
}
