/**
 * Setting an image's hidden flag (a base copy) by path: both footers, synced
 * unless told not to. The flag lives only in the footer, so only the footers
 * are read and written; the BAT is never loaded.
 */
import { FOOTER_SIZE } from './format/constants.js';
import { decodeFooter, encodeFooter } from './format/footer.js';
import { corrupt } from './errors.js';
import { FileIO } from './io.js';

export async function setImageHidden(path: string, hidden: boolean, opts: { sync?: boolean } = {}): Promise<void> {
  const io = await FileIO.open(path, true);
  try {
    const at = (await io.size()) - FOOTER_SIZE; // the primary footer: end of the file, or a device's last sector
    if (at <= 0) throw corrupt('file too small to be a VHD', path);
    const buf = Buffer.alloc(FOOTER_SIZE);
    await io.read(buf, at);
    const footer = decodeFooter(buf);
    if (typeof footer === 'string') throw corrupt(`primary footer invalid: ${footer}`, path);
    if ((footer.hidden !== 0) === hidden) return;
    footer.hidden = hidden ? 1 : 0;
    const encoded = encodeFooter(footer);
    await Promise.all([io.write(encoded, at), io.write(encoded, 0)]);
    if (opts.sync ?? true) await io.sync();
  } finally {
    await io.close();
  }
}
