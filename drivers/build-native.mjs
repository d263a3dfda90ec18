// Build step: compiles the project's own C helpers (lib/native/*.c) into
// dist/native/, where the code looks for them at run time (and the Debian
// package ships them with dist/). Without a C compiler it says so and builds
// nothing: the code then uses its slower JavaScript path (`npm run setup`
// installs gcc).
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const out = join(root, 'dist', 'native');
const compiler = ['cc', 'gcc'].find((c) => {
  try {
    execFileSync(c, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
});
const sources = readdirSync(join(root, 'lib', 'native')).filter((f) => f.endsWith('.c'));
if (!compiler) {
  process.stderr.write(`build: no C compiler: ${sources.join(', ')} not built (the JavaScript copy is used instead)\n`);
} else {
  mkdirSync(out, { recursive: true });
  for (const src of sources) {
    execFileSync(compiler, ['-O2', '-Wall', '-Wextra', '-Werror', '-o', join(out, src.replace(/\.c$/, '')), join(root, 'lib', 'native', src)], { stdio: 'inherit' });
  }
}
