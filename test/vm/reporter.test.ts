// Host-tier check of the VM tier's node:test reporter (counts, hook failures, summary line).
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const reporter = fileURLToPath(new URL('./reporter.js', import.meta.url));

test('one line per test, PART per suite, hook failures counted, summary last', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vm-reporter-'));
  const file = join(dir, 'suites.mjs');
  writeFileSync(
    file,
    `import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
describe('ok', () => { it('passes', () => {}); it('fails', () => assert.equal(1, 2)); });
describe('broken', () => { before(() => { throw new Error('setup broke'); }); it('never runs', () => {}); });
describe('cleanup', () => { after(() => { throw new Error('cleanup broke'); }); it('passes too', () => {}); });
`,
  );
  const r = spawnSync(process.execPath, [`--test-reporter=${reporter}`, file], { encoding: 'utf8' });
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('VM '));
  t.is(r.status, 1);
  t.deepEqual(
    lines.map((l) => l.replace(/ \(\d+\.\d+s\)$/, '').replace(/ \d+\.\ds$/, '')),
    [
      'VM PASS ok › passes',
      'VM FAIL ok › fails',
      'VM PART ok',
      'VM FAIL broken › never runs',
      'VM FAIL broken (failed running before hook)',
      'VM PART broken',
      'VM PASS cleanup › passes too',
      'VM FAIL cleanup (failed running after hook)',
      'VM PART cleanup',
    ],
  );
  t.regex(r.stdout, /setup broke/);
  t.regex(r.stdout, /Expected values to be strictly equal/);
  t.is(r.stdout.trim().split('\n').pop(), 'VM: 2 passed, 4 failed');
});

test('a test left out by --test-name-pattern is a SKIP line, counted neither passed nor failed', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vm-reporter-'));
  const file = join(dir, 'suites.mjs');
  writeFileSync(file, `import { describe, it } from 'node:test';
describe('s', () => { it('chosen', () => {}); it('left out', () => {}); });
`);
  const r = spawnSync(process.execPath, ['--test-name-pattern=chosen', `--test-reporter=${reporter}`, file], { encoding: 'utf8' });
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('VM '));
  t.is(r.status, 0);
  t.deepEqual(lines.map((l) => l.replace(/ \(\d+\.\d+s\)$/, '').replace(/ \d+\.\ds$/, '')), ['VM PASS s › chosen', 'VM SKIP s › left out', 'VM PART s']);
  t.is(r.stdout.trim().split('\n').pop(), 'VM: 1 passed, 0 failed');
});
