#!/usr/bin/env node
/**
 * sm-vhd: operator tool over the VHD library, with vhd-util's subcommand names
 * and output formats. Errors go to stderr with a non-zero exit; nothing is
 * written when the input is bad.
 */
import { readFile, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import {
  chainDepth,
  checkChain,
  coalesceIntoParent,
  createDifferencing,
  createDynamic,
  exportRaw,
  imageInfo,
  parentPath,
  repairFooter,
  resizeImage,
  scanImages,
  setParent,
  VhdError,
  VhdImage,
  writeAt,
} from '../index.js';
import {
  allSet,
  changedBetweenFiles,
  changedRanges,
  copyRanges,
  countSet,
  rawTarget,
  readLog,
  toXapiBase64,
  vhdTarget,
  type CbtLog,
} from '../../cbt/index.js';
import { NbdClient } from '../../nbd/client.js';

const MB = 1024 * 1024;

const USAGE = `usage: sm-vhd COMMAND [OPTIONS]
  create   -n FILE -s SIZE_MB [-S MAX_SIZE_MB]   new dynamic image (-S: BAT room for fast resize)
  snapshot -n CHILD -p PARENT [-S MAX_SIZE_MB]   new differencing child of PARENT
  query    -n FILE [-v] [-s] [-p] [-f] [-d] [-S] [-a]
  set      -n FILE -f hidden -v 0|1
  modify   -n FILE -p NEW_PARENT
  resize   -n FILE -s SIZE_MB                    grow only
  check    -n FILE [-p]                          -p: check the parents too
  coalesce -n CHILD [-p]                         merge CHILD into its parent (-p: progress on stderr)
  scan     [-f] -m GLOB                          one line per image
  write    -n FILE -i DATA_FILE -o OFFSET        write bytes at a virtual byte offset of the leaf
  export   -n FILE -o RAW_FILE                   the whole chain as a raw image
  repair   -n FILE                               restore the primary footer from its copy
  cbt-show    -n LOG [-b]                        a CBT log's header (-b: its changed ranges too)
  cbt-changed -n FROM_LOG -t TO_LOG [-x]         ranges changed from one snapshot's log to a later one's (-x: xapi's base64)
  cbt-export  -n FROM_LOG -t TO_LOG -s SOCKET -e EXPORT -o FILE [-f raw|vhd]
              reads only the changed ranges of the NBD export (the TO snapshot, served) onto FILE, a copy of FROM
  cbt-export  -a -s SOCKET -e EXPORT -o FILE [-f raw|vhd]    the full copy a first backup needs`;

class UsageError extends Error {}

type Flags = Record<string, string | boolean | undefined>;

function flags(args: string[], spec: Record<string, 'string' | 'boolean'>): Flags {
  const options = Object.fromEntries(Object.entries(spec).map(([k, type]) => [k, { type, short: k }]));
  try {
    return parseArgs({ args, options, allowPositionals: false, strict: true }).values as Flags;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function need(f: Flags, key: string, what: string): string {
  const v = f[key];
  if (typeof v !== 'string' || v === '') throw new UsageError(`missing -${key} ${what}`);
  return v;
}

function sizeMB(text: string, what: string): number {
  if (!/^\d+$/.test(text) || Number(text) <= 0) throw new UsageError(`bad ${what} "${text}": a positive whole number of MB`);
  return Number(text) * MB;
}

function byteOffset(text: string): number {
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw new UsageError(`bad offset "${text}"`);
  return Number(text);
}

const out = (line: string) => process.stdout.write(line + '\n');

const commands: Record<string, (args: string[]) => Promise<number>> = {
  async create(args) {
    const f = flags(args, { n: 'string', s: 'string', S: 'string' });
    const name = need(f, 'n', 'FILE');
    const size = sizeMB(need(f, 's', 'SIZE_MB'), 'size');
    const maxSize = typeof f.S === 'string' ? sizeMB(f.S, 'max size') : undefined;
    await createDynamic(name, size, { maxSize, durable: true });
    return 0;
  },

  async snapshot(args) {
    const f = flags(args, { n: 'string', p: 'string', S: 'string' });
    const child = need(f, 'n', 'CHILD');
    const parent = need(f, 'p', 'PARENT');
    const maxSize = typeof f.S === 'string' ? sizeMB(f.S, 'max size') : undefined;
    await createDifferencing(child, parent, { maxSize, durable: true });
    return 0;
  },

  async query(args) {
    const f = flags(args, { n: 'string', v: 'boolean', s: 'boolean', p: 'boolean', f: 'boolean', d: 'boolean', S: 'boolean', a: 'boolean' });
    const name = need(f, 'n', 'FILE');
    const info = await imageInfo(name);
    if (f.v) out(String(Math.floor(info.virtualSize / MB)));
    if (f.s) out(String(info.physicalSize));
    if (f.p) {
      const parent = await parentPath(name);
      out(parent ? resolve(parent) : `${name} has no parent`);
    }
    if (f.f) out(`hidden: ${info.hidden ? 1 : 0}`);
    if (f.d) out(`chain depth: ${await chainDepth(name)}`);
    if (f.S) out(String(Math.floor(info.maxVirtualSize / MB)));
    if (f.a) out(String(info.allocatedBlocks));
    return 0;
  },

  async set(args) {
    const f = flags(args, { n: 'string', f: 'string', v: 'string' });
    const name = need(f, 'n', 'FILE');
    if (need(f, 'f', 'FIELD') !== 'hidden') throw new UsageError(`unknown field "${f.f}" (only "hidden")`);
    const value = need(f, 'v', 'VALUE');
    if (value !== '0' && value !== '1') throw new UsageError(`bad value "${value}" for hidden: 0 or 1`);
    const image = await VhdImage.open(name, true);
    try {
      await image.setHidden(value === '1');
      await image.sync();
    } finally {
      await image.close();
    }
    return 0;
  },

  async modify(args) {
    const f = flags(args, { n: 'string', p: 'string' });
    await setParent(need(f, 'n', 'FILE'), need(f, 'p', 'NEW_PARENT'));
    return 0;
  },

  async resize(args) {
    const f = flags(args, { n: 'string', s: 'string' });
    const name = need(f, 'n', 'FILE');
    await resizeImage(name, sizeMB(need(f, 's', 'SIZE_MB'), 'size'));
    return 0;
  },

  async check(args) {
    const f = flags(args, { n: 'string', p: 'boolean' });
    const name = need(f, 'n', 'FILE');
    // A missing FILE is an operator error (exit 2, stderr), as in vhd-util; a missing
    // parent is a problem of the image and is reported as such.
    await stat(name).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'ENOENT' ? new VhdError('not-found', 'no such file', name) : err;
    });
    const reports = await checkChain(name, { parents: f.p === true });
    let bad = false;
    for (const r of reports) {
      if (r.problems.length === 0) {
        out(`${r.path} is valid`);
        continue;
      }
      bad = true;
      for (const p of r.problems) out(`${r.path}: ${p}`);
      out(`${r.path} appears invalid`);
    }
    return bad ? 22 : 0;
  },

  async coalesce(args) {
    const f = flags(args, { n: 'string', p: 'boolean' });
    const result = await coalesceIntoParent(need(f, 'n', 'CHILD'), {
      onProgress: f.p
        ? (p) => process.stderr.write(`coalesce: ${p.blocksDone}/${p.blocksTotal} blocks, ${(p.bytesCopied / MB).toFixed(1)} MiB\n`)
        : undefined,
    });
    out(`Coalesced ${result.sectors} sectors`);
    return 0;
  },

  async scan(args) {
    const f = flags(args, { f: 'boolean', m: 'string' });
    let failed = false;
    for (const e of await scanImages(need(f, 'm', 'GLOB'))) {
      if (!e.info) {
        failed = true;
        process.stderr.write(`sm-vhd: ${e.name}: ${e.error}\n`);
        out(`vhd=${e.name} scan-error=${JSON.stringify(e.error)}`);
        continue;
      }
      const i = e.info;
      out(`vhd=${e.name} capacity=${i.virtualSize} size=${i.physicalSize} hidden=${i.hidden ? 1 : 0} parent=${i.parentName ?? 'none'}`);
    }
    return failed ? 22 : 0;
  },

  async write(args) {
    const f = flags(args, { n: 'string', i: 'string', o: 'string' });
    const name = need(f, 'n', 'FILE');
    const data = await readFile(need(f, 'i', 'DATA_FILE'));
    await writeAt(name, data, byteOffset(need(f, 'o', 'OFFSET')));
    return 0;
  },

  async export(args) {
    const f = flags(args, { n: 'string', o: 'string' });
    await exportRaw(need(f, 'n', 'FILE'), need(f, 'o', 'RAW_FILE'));
    return 0;
  },

  async repair(args) {
    const f = flags(args, { n: 'string' });
    const name = need(f, 'n', 'FILE');
    out((await repairFooter(name)) ? `${name}: primary footer restored` : `${name}: primary footer is valid, nothing to do`);
    return 0;
  },
};

const ranges = (bitmap: Buffer, size: number) => changedRanges(bitmap, size).map((r) => `${r.offset} ${r.length}`);

function describeLog(log: CbtLog): string[] {
  const blocks = Math.ceil(log.size / 65536);
  return [`parent: ${log.parent}`, `child: ${log.child}`, `consistent: ${log.consistent ? 1 : 0}`, `size: ${log.size}`, `changed blocks: ${countSet(log.bitmap)} of ${blocks}${log.consistent ? '' : ' (not closed cleanly: every block counts as changed)'}`];
}

Object.assign(commands, {
  async 'cbt-show'(args: string[]) {
    const f = flags(args, { n: 'string', b: 'boolean' });
    const log = await readLog(need(f, 'n', 'LOG'));
    for (const line of describeLog(log)) out(line);
    if (f.b) for (const line of ranges(log.bitmap, log.size)) out(line);
    return 0;
  },

  async 'cbt-changed'(args: string[]) {
    const f = flags(args, { n: 'string', t: 'string', x: 'boolean' });
    const { bitmap, size, logs } = await changedBetweenFiles(need(f, 'n', 'FROM_LOG'), need(f, 't', 'TO_LOG'));
    if (f.x) {
      out(toXapiBase64(bitmap));
      return 0;
    }
    for (const line of ranges(bitmap, size)) out(line);
    process.stderr.write(`${countSet(bitmap)} of ${Math.ceil(size / 65536)} blocks changed over ${logs.length} logs\n`);
    return 0;
  },

  async 'cbt-export'(args: string[]) {
    const f = flags(args, { n: 'string', t: 'string', a: 'boolean', s: 'string', e: 'string', o: 'string', f: 'string' });
    const format = f.f ?? 'raw';
    if (format !== 'raw' && format !== 'vhd') throw new UsageError(`bad format "${format}": raw or vhd`);
    const socket = need(f, 's', 'SOCKET');
    const exportName = need(f, 'e', 'EXPORT');
    const file = need(f, 'o', 'FILE');
    let changed: { bitmap: Buffer; size: number } | undefined;
    if (!f.a) changed = await changedBetweenFiles(need(f, 'n', 'FROM_LOG'), need(f, 't', 'TO_LOG'));
    else if (f.n || f.t) throw new UsageError('-a copies every block: no -n or -t with it');
    // The size comes from the export itself for a full copy; an incremental one must match the logs'.
    const probe = await NbdClient.connect(socket, exportName);
    const size = probe.size;
    await probe.close();
    if (changed && changed.size !== size) throw new UsageError(`the export is ${size} bytes but the TO log is for ${changed.size}: is it the TO snapshot?`);
    const todo = changedRanges(changed?.bitmap ?? allSet(size), size);
    const target = format === 'raw' ? await rawTarget(file, size) : await vhdTarget(file);
    const r = await copyRanges(socket, exportName, todo, target);
    out(`read ${r.bytesRead} of ${r.size} bytes (${((100 * r.bytesRead) / Math.max(r.size, 1)).toFixed(2)}%) in ${r.ranges} ranges, ${r.ms} ms`);
    return 0;
  },
});

async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  if (!cmd || cmd === '-h' || cmd === '--help') {
    // Help asked for goes to stdout; no command at all is an error (stderr, exit 2).
    (cmd ? process.stdout : process.stderr).write(USAGE + '\n');
    return cmd ? 0 : 2;
  }
  const run = commands[cmd];
  if (!run) {
    process.stderr.write(`sm-vhd: unknown command "${cmd}"\n${USAGE}\n`);
    return 2;
  }
  try {
    return await run(args);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`sm-vhd ${cmd}: ${err.message}\n`);
      return 22;
    }
    if (err instanceof VhdError) {
      process.stderr.write(`sm-vhd ${cmd}: ${err.message}\n`);
      return err.kind === 'not-found' ? 2 : 22;
    }
    const e = err as NodeJS.ErrnoException;
    process.stderr.write(`sm-vhd ${cmd}: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
    return e.code === 'ENOENT' ? 2 : 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
