/** The parent an image's header names, as an image uuid. */
import { VhdImage } from '../lib/vhd/index.js';
import { uuidOfImageName, type Repository } from '../lib/sr/repository.js';

export async function parentNameOf(repo: Repository, uuid: string): Promise<string | undefined> {
  const image = await VhdImage.open(repo.imagePath(uuid), false);
  try {
    return image.isDifferencing ? uuidOfImageName(image.header.parentUnicodeName) : undefined;
  } finally {
    await image.close();
  }
}
