// `npm run package`: the Debian package of the built tree (run `npm run build`
// first), xcp-sm_<version>_<arch>.deb in dist/package/ (or `--out DIR`): <arch>
// is this machine's (dpkg --print-architecture) when the build compiled the
// in-kernel copy program (dist/native/), else `all` (the code is then all JavaScript).
//
// Layout, as the toolstack and operators look for things:
//   /usr/lib/xcp-sm/                 the code: package.json, dist/ (no tests), the
//                                    executables' launchers (drivers/), the
//                                    production node_modules
//   /opt/xensource/sm/<Type>SR       the drivers, where xapi runs them
//   /usr/bin/sm, sm-gc, sm-vhd       the operator commands
//   /etc/xapi.d/plugins/tapdisk-pause  the host plugin
//   /lib/systemd/system/             sm-serve@.service, SMGC@.service
//   /etc/logrotate.d/SMlog           rotation of /var/log/SMlog
// Links are relative, so an extracted package (dpkg-deb -x) runs where it lies.
// Every tool runs with an argv array.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const repo = dirname(dirname(fileURLToPath(import.meta.url)));
const pkg = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8'));
const at = process.argv.indexOf('--out');
const outDir = at >= 0 ? process.argv[at + 1] : join(repo, 'dist', 'package');
if (!outDir) throw new Error('usage: node drivers/package-deb.mjs [--out DIR]');

const NAME = 'xcp-sm';
const CODE = '/usr/lib/xcp-sm';
const SR_TYPES = ['FileSR', 'NFSSR', 'LVMoISCSISR'];
/** Where the executables are found at run time: what the drivers call (lib/os) and what starts them. */
const DEPENDS = [
  // The code is JavaScript for Node 20 or later (package.json engines). On a host whose
  // node does not come from a Debian package, install with --force-depends.
  'nodejs (>= 20)',
  'lvm2', // LVMoISCSISR: vgs, lvs, lvcreate...
  'open-iscsi', // LVMoISCSISR: iscsiadm
  'nfs-common', // NFSSR: mount.nfs, showmount
  'rpcbind', // NFSSR probe: rpcinfo
  'udev', // udevadm settle, scsi_id
];
/** Files under /etc an operator may edit: dpkg keeps their changes on upgrade. */
const CONFFILES = ['/etc/logrotate.d/SMlog'];
// The kernel NBD client gives `params` a /dev/nbdN; without it `params` is the socket.
const RECOMMENDS = ['nbd-client', 'logrotate'];

if (!existsSync(join(repo, 'dist', 'bundle', 'FileSR.mjs'))) throw new Error('package: run `npm run build` first');
const ARCH = existsSync(join(repo, 'dist', 'native')) && readdirSync(join(repo, 'dist', 'native')).length > 0 ? execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim() : 'all';
const stage = mkdtempSync(join(tmpdir(), 'xcp-sm-deb-'));
try {
  const at = (p) => join(stage, p);
  const code = at(CODE);
  mkdirSync(code, { recursive: true });

  // The code, without the tests and earlier packages.
  cpSync(join(repo, 'package.json'), join(code, 'package.json'));
  cpSync(join(repo, 'dist'), join(code, 'dist'), { recursive: true, filter: (src) => !['test', 'package'].includes(relative(join(repo, 'dist'), src).split('/')[0]) });
  mkdirSync(join(code, 'drivers'));
  for (const exe of [...SR_TYPES, 'tapdisk-pause']) cpSync(join(repo, 'drivers', exe), join(code, 'drivers', exe));
  for (const dir of productionModules()) cpSync(join(repo, dir), join(code, dir), { recursive: true });

  // Where the toolstack and operators find it.
  const link = (path, target) => {
    mkdirSync(dirname(at(path)), { recursive: true });
    symlinkSync(relative(dirname(path), target), at(path));
  };
  for (const type of SR_TYPES) link(`/opt/xensource/sm/${type}`, `${CODE}/drivers/${type}`);
  for (const [name, target] of Object.entries(pkg.bin)) link(`/usr/bin/${name}`, `${CODE}/${target}`);
  link('/etc/xapi.d/plugins/tapdisk-pause', `${CODE}/drivers/tapdisk-pause`);

  const put = (path, from) => {
    mkdirSync(dirname(at(path)), { recursive: true });
    cpSync(join(repo, from), at(path));
  };
  put('/lib/systemd/system/sm-serve@.service', 'drivers/sm-serve@.service');
  put('/lib/systemd/system/SMGC@.service', 'gc/SMGC@.service');
  put('/etc/logrotate.d/SMlog', 'drivers/logrotate-SMlog');
  put(`/usr/share/doc/${NAME}/README.md`, 'README.md');
  for (const doc of readdirSync(join(repo, 'docs')).filter((f) => f.endsWith('.md'))) put(`/usr/share/doc/${NAME}/${doc}`, `docs/${doc}`);
  writeFileSync(at(`/usr/share/doc/${NAME}/copyright`), copyright());
  writeFileSync(at(`/usr/share/doc/${NAME}/changelog.gz`), gzipSync(changelog(), { level: 9 }));

  chmodSync(stage, 0o755); // the package's "./" is the host's /
  normaliseModes(stage);
  const control = at('/DEBIAN');
  mkdirSync(control);
  writeFileSync(join(control, 'md5sums'), md5sums(stage, CONFFILES));
  writeFileSync(join(control, 'conffiles'), CONFFILES.map((f) => `${f}\n`).join(''));
  writeFileSync(join(control, 'control'), controlFile(installedKiB(stage)));
  chmodSync(control, 0o755);
  for (const f of readdirSync(control)) chmodSync(join(control, f), 0o644);

  mkdirSync(outDir, { recursive: true });
  const deb = join(outDir, `${NAME}_${pkg.version}_${ARCH}.deb`);
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', stage, deb], { stdio: ['ignore', 'ignore', 'inherit'] });
  process.stdout.write(`${deb}\n`);
} finally {
  rmSync(stage, { recursive: true, force: true });
}

/** The top-level node_modules entries the code needs at run time (package-lock: not dev). */
function productionModules() {
  const lock = JSON.parse(readFileSync(join(repo, 'package-lock.json'), 'utf8'));
  return Object.entries(lock.packages)
    .filter(([path, meta]) => /^node_modules\/(@[^/]+\/)?[^/]+$/.test(path) && !meta.dev && !meta.devOptional)
    .map(([path]) => path);
}

/** Directories and files 0755/0644; executables (a shebang or an exec bit) 0755. */
function normaliseModes(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    const st = lstatSync(path);
    if (st.isSymbolicLink()) continue;
    if (st.isDirectory()) {
      chmodSync(path, 0o755);
      normaliseModes(path);
      continue;
    }
    const head = readFileSync(path).subarray(0, 2).toString('latin1');
    chmodSync(path, head === '#!' || (st.mode & 0o111) !== 0 ? 0o755 : 0o644);
  }
}

function filesUnder(dir, base = dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    const st = lstatSync(path);
    if (st.isDirectory()) return filesUnder(path, base);
    return st.isFile() ? [relative(base, path)] : [];
  });
}

/** As dh_md5sums: every file but the conffiles (dpkg tracks those itself). */
function md5sums(root, conffiles) {
  return filesUnder(root)
    .filter((f) => !conffiles.includes(`/${f}`))
    .sort()
    .map((f) => `${createHash('md5').update(readFileSync(join(root, f))).digest('hex')}  ${f}\n`)
    .join('');
}

function installedKiB(root) {
  let bytes = 0;
  for (const f of filesUnder(root)) bytes += lstatSync(join(root, f)).size;
  return Math.ceil(bytes / 1024);
}

function controlFile(kib) {
  return [
    `Package: ${NAME}`,
    `Version: ${pkg.version}`,
    `Architecture: ${ARCH}`,
    'Maintainer: xcp-sm contributors <xcp-sm@localhost>',
    `Installed-Size: ${kib}`,
    `Depends: ${DEPENDS.join(', ')}`,
    `Recommends: ${RECOMMENDS.join(', ')}`,
    'Section: admin',
    'Priority: optional',
    `Description: ${pkg.description.split(':')[0]}`,
    ' SMAPIv1 storage drivers for Xen/XCP hosts (FileSR, NFSSR, LVMoISCSISR) in',
    ' /opt/xensource/sm, a VHD library with the sm-vhd tool, the coalescing',
    ' garbage collector sm-gc, the operator command sm, an NBD datapath for',
    ' active VDIs and the tapdisk-pause host plugin.',
    '',
  ].join('\n');
}

function copyright() {
  return [
    'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/',
    `Upstream-Name: ${NAME}`,
    '',
    'Files: *',
    'Copyright: 2026 xcp-sm contributors',
    `License: ${pkg.license}`,
    '',
  ].join('\n');
}

function changelog() {
  return `${NAME} (${pkg.version}) unstable; urgency=medium\n\n  * Package of the built tree (npm run package).\n\n -- xcp-sm contributors <xcp-sm@localhost>  Sun, 06 Dec 2026 00:00:00 +0000\n`;
}
