// Build step: bundles each driver executable's entry (dist/drivers/<x>-main.js)
// into one file, dist/bundle/<Type>SR.mjs: a process per toolstack call then
// loads one file instead of ~60 modules.
import { build } from 'esbuild';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const entries = { FileSR: 'file-sr-main.js', NFSSR: 'nfs-sr-main.js', LVMoISCSISR: 'lvmoiscsi-sr-main.js' };

for (const [name, entry] of Object.entries(entries)) {
  if (!existsSync(join(root, 'drivers', entry.replace(/\.js$/, '.ts')))) continue; // a driver not in this tree
  const from = join(root, 'dist', 'drivers', entry);
  if (!existsSync(from)) throw new Error(`bundle: ${from} missing (run tsc first)`);
  await build({
    entryPoints: [from],
    outfile: join(root, 'dist', 'bundle', `${name}.mjs`),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'warning',
    // CommonJS dependencies (winston, xml2js) call require(); give the ESM bundle one.
    banner: { js: "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);" },
  });
}
