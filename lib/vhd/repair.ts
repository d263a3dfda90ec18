/** Restoring a damaged primary footer from the copy at offset 0 (as `vhd-util repair`). */
import { FOOTER_SIZE } from './format/constants.js';
import { decodeFooter } from './format/footer.js';
import { corrupt } from './errors.js';
import { FileIO } from './io.js';
import { VhdImage } from './image.js';

export async function repairFooter(path: string): Promise<boolean> {
  const io = await FileIO.open(path, true);
  try {
    const size = await io.size();
    const primary = Buffer.alloc(FOOTER_SIZE);
    if (size >= FOOTER_SIZE) await io.read(primary, size - FOOTER_SIZE);
    if (typeof decodeFooter(primary) !== 'string') return false;
    const backup = Buffer.alloc(FOOTER_SIZE);
    await io.read(backup, 0);
    const decoded = decodeFooter(backup);
    if (typeof decoded === 'string') throw corrupt(`both footers are invalid (${decoded})`, path);
    // Append the copy: whatever the tail holds (a torn allocation) is unreferenced.
    const end = Math.ceil(size / 512) * 512;
    await io.write(backup, end);
    await io.sync();
  } finally {
    await io.close();
  }
  const reopened = await VhdImage.open(path, false); // proves it opens now
  await reopened.close();
  return true;
}
