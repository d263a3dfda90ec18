/** Setting an image's hidden flag (a base copy) by path: both footers, synced unless told not to. */
import { VhdImage } from './image.js';

export async function setImageHidden(path: string, hidden: boolean, opts: { sync?: boolean } = {}): Promise<void> {
  const image = await VhdImage.open(path, true);
  try {
    if (image.hidden === hidden) return;
    await image.setHidden(hidden);
    if (opts.sync ?? true) await image.sync();
  } finally {
    await image.close();
  }
}
