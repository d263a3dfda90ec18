/**
 * Finding an image's parent. Locators are untrusted input: the default resolver
 * only follows a plain file name in the child's own directory, so a locator can
 * never lead outside it (no absolute paths, no `..`).
 */
import { access } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { VhdError } from './errors.js';
import type { VhdImage } from './image.js';

export type ParentResolver = (child: VhdImage) => Promise<string>;

/** A plain file name: no directory part, not `.`/`..`, no NUL. */
export function isPlainName(name: string): boolean {
  return name.length > 0 && name !== '.' && name !== '..' && !/[/\\\0]/.test(name);
}

export const siblingResolver: ParentResolver = async (child) => {
  const candidates = [...(await child.parentLocatorPaths()), child.header.parentUnicodeName];
  const dir = dirname(child.path);
  let refused: string | undefined;
  for (const raw of candidates) {
    const name = raw.replace(/^\.\//, '');
    if (!isPlainName(name)) {
      refused ??= raw;
      continue;
    }
    const path = join(dir, name);
    try {
      await access(path);
      return path;
    } catch {
      /* try the next locator */
    }
  }
  if (refused !== undefined) {
    throw new VhdError('chain', `parent locator "${refused}" points outside the image's directory`, child.path);
  }
  throw new VhdError('not-found', `parent ${child.header.parentUnicodeName || child.parentUuid} not found`, child.path);
};

/** The locator name for a parent: it must live beside the child. */
export function parentNameFor(childPath: string, parentPath: string): string {
  if (dirname(resolve(childPath)) !== dirname(resolve(parentPath))) {
    throw new VhdError('invalid-argument', 'parent must be in the same directory as the child', childPath);
  }
  return basename(parentPath);
}
