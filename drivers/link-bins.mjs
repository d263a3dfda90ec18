// Build step: makes the operator commands of package.json's `bin` (sm, sm-gc,
// sm-vhd) executable; with `--link DIR` (setup, as root) also links each into
// DIR, so the README's commands work as written from any folder.
import { chmodSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const bins = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).bin;
const at = process.argv.indexOf('--link');
const linkDir = at >= 0 ? process.argv[at + 1] : undefined;
if (at >= 0 && !linkDir) throw new Error('usage: node drivers/link-bins.mjs [--link DIR]');
for (const [name, target] of Object.entries(bins)) {
  const file = join(root, target);
  chmodSync(file, 0o755);
  if (!linkDir) continue;
  const link = join(linkDir, name);
  rmSync(link, { force: true });
  symlinkSync(file, link);
}
