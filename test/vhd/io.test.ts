/** Positional I/O: device numbers as Linux encodes them, and the size of a real block device. */
import test from 'ava';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { FileIO, splitDev } from '../../lib/vhd/io.js';

/** The kernel's new_encode_dev (and glibc's makedev), written out here. */
const makedev = (major: number, minor: number) => (minor & 0xff) + major * 0x100 + Math.floor(minor / 0x100) * 0x100000;

test('splitDev decodes majors and minors, including minors >= 256 (device-mapper LVs)', (t) => {
  for (const [major, minor] of [[7, 0], [8, 17], [253, 255], [253, 256], [253, 300], [259, 70000], [4095, 0xfffff]]) {
    t.deepEqual(splitDev(makedev(major, minor)), [major, minor], `${major}:${minor}`);
  }
});

/** A readable block device with a non-zero size in sysfs, or undefined (CI containers have none). */
function someBlockDevice(): { path: string; dev: string; size: number } | undefined {
  if (!existsSync('/sys/class/block')) return undefined;
  for (const name of readdirSync('/sys/class/block').sort()) {
    const path = `/dev/${name}`;
    try {
      if (!statSync(path).isBlockDevice()) continue;
      closeSync(openSync(path, 'r')); // permissions and sandboxes decide, not the mode bits
      const size = Number(readFileSync(`/sys/class/block/${name}/size`, 'utf8')) * 512;
      if (size > 0) return { path, dev: readFileSync(`/sys/class/block/${name}/dev`, 'utf8').trim(), size };
    } catch {
      /* not this one */
    }
  }
  return undefined;
}

const device = someBlockDevice();
const withDevice = device ? test : test.skip;

withDevice('a real block device: its dev_t splits as sysfs says, and FileIO reports its size', async (t) => {
  const { path, dev, size } = device!;
  t.is(splitDev(statSync(path).rdev).join(':'), dev);
  const io = await FileIO.open(path, false);
  try {
    t.is(await io.size(), size);
  } finally {
    await io.close();
  }
});
