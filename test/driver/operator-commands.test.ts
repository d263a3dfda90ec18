// The operator commands of package.json's `bin` are executables after the
// build (the README runs them by name): each has its run bits and answers its
// usage when run directly, not through node.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { REPO } from '../helpers/sm.js';

const run = promisify(execFile);
const bins = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')).bin as Record<string, string>;

for (const [name, target] of Object.entries(bins)) {
  test(`${name} runs as an executable`, async (t) => {
    const file = path.join(REPO, target);
    t.is(fs.statSync(file).mode & 0o111, 0o111, 'run bits set');
    const r = await run(file, [], { env: { ...process.env, SM_ROOT: fs.mkdtempSync('/tmp/sm-bin-') } }).catch((e: { stdout: string; stderr: string }) => e);
    t.regex(r.stdout + r.stderr, /usage/i);
  });
}
