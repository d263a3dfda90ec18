/**
 * This host's id in a pool: INSTALLATION_UUID from `$SM_ROOT/etc/xensource-inventory`
 * (the file the established SM reads), or the host name where there is none.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { smRoot } from './paths.js';

export function hostId(): string {
  try {
    const text = readFileSync(join(smRoot(), 'etc', 'xensource-inventory'), 'utf8');
    const m = /^INSTALLATION_UUID=['"]?([^'"\s]+)['"]?\s*$/m.exec(text);
    if (m) return m[1];
  } catch {
    // no inventory: a host outside a pool
  }
  return hostname();
}
