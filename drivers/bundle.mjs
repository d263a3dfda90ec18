// Build step: bundles each driver executable's entry (dist/drivers/<x>-main.js)
// into one file, dist/bundle/<Type>SR.mjs, and the collector into
// dist/bundle/sm-gc.mjs (the datapath into dist/bundle/sm-datapath.mjs, the host plugin into dist/bundle/tapdisk-pause.mjs): a process per call then loads one file instead of ~60 modules.
import { build } from 'esbuild';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const entries = {
  FileSR: 'drivers/file-sr-main.js',
  NFSSR: 'drivers/nfs-sr-main.js',
  LVMoISCSISR: 'drivers/lvmoiscsi-sr-main.js',
  'sm-gc': 'gc/sm-gc.js',
  'sm-datapath': 'lib/datapath/sm-datapath.js',
  'tapdisk-pause': 'drivers/tapdisk-pause-main.js',
};

// winston's debug channel (@dabh/diagnostics) prints nothing unless DEBUG names it;
// its production build skips loading the colour libraries that channel would use.
const quietDiagnostics = {
  name: 'quiet-diagnostics',
  setup(b) {
    b.onResolve({ filter: /^@dabh\/diagnostics$/ }, () => ({ path: join(root, 'node_modules/@dabh/diagnostics/node/production.js') }));
  },
};

for (const [name, entry] of Object.entries(entries)) {
  if (!existsSync(join(root, entry.replace(/\.js$/, '.ts')))) continue; // not in this tree
  const from = join(root, 'dist', entry);
  if (!existsSync(from)) throw new Error(`bundle: ${from} missing (run tsc first)`);
  await build({
    entryPoints: [from],
    outfile: join(root, 'dist', 'bundle', `${name}.mjs`),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'warning',
    plugins: [quietDiagnostics],
    // CommonJS dependencies (winston, xml2js) call require(); give the ESM bundle one,
    // under a name no bundled module's own import of createRequire collides with.
    banner: { js: "import { createRequire as bundleRequireFrom } from 'node:module'; const require = bundleRequireFrom(import.meta.url);" },
  });
}
