/**
 * VM-tier test entry (runs inside the VM, started by guest-tier.sh): imports
 * every *.vmtest.js beside it, in name order, so node:test runs their suites
 * one after another in this one process (a process per file costs seconds
 * under TCG). Arguments, if any, pick files by name, in that order: `lvm nfs`. A file in
 * OPT_IN runs only when named (a benchmark that takes an hour, say).
 */
import { readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { requireGuest } from './support/guest.js';

requireGuest();
const dir = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2).filter(Boolean);
/** Long measurements, not checks: run only when asked for by name. */
const OPT_IN = new Set(['lvm-scale']);
const names = (await readdir(dir))
  .filter((f) => f.endsWith('.vmtest.js'))
  .map((f) => f.slice(0, -'.vmtest.js'.length))
  .sort();
// Named files run in the order given (a long measurement last, after the checks).
const files = (only.length === 0 ? names.filter((n) => !OPT_IN.has(n)) : only.filter((n) => names.includes(n))).map((n) => `${n}.vmtest.js`);
if (files.length === 0) throw new Error(`no VM tests${only.length ? ` named ${only.join(', ')}` : ''} in ${dir}`);
for (const f of files) await import(pathToFileURL(join(dir, f)).href);
