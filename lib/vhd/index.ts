/** The VHD library: format codec, images, chains and the algorithms over them. */
export { VhdError, type VhdErrorKind } from './errors.js';
export { FileIO, fileIdentity, type PositionalIO } from './io.js';
export { VhdImage, formatUuid, parseUuid, type BlockBuffer, type DiscardStep, type NewBlock } from './image.js';
export { VhdChain, type ChainOptions } from './chain.js';
export { createDynamic, createDifferencing, validVirtualSize, type CreateOptions } from './create.js';
export { coalesceIntoParent, coalesceChainInto, coalesceImages, type CoalesceOptions, type CoalesceProgress, type CoalesceResult } from './coalesce.js';
export { PreparedInKernelCopy } from './coalesce-in-kernel.js';
export { resizeImage, setVirtualSize } from './resize.js';
export { setParent, syncRelinked } from './relink.js';
export { checkChain, type CheckReport, type CheckOptions } from './check.js';
export { imageInfo, parentPath, chainDepth, scanImages, globFiles, type ImageInfo, type ScanEntry } from './info.js';
export { exportRaw, writeAt } from './export.js';
export { repairFooter } from './repair.js';
export { scrubUnmarkedSectors } from './scrub.js';
export { siblingResolver, isPlainName, type ParentResolver } from './parent.js';
export { MAX_VIRTUAL_SIZE, BLOCK_SIZE, SECTOR } from './format/constants.js';
export { readImageSummary, readImageRemains, type ImageSummary, type ImageRemains } from './summary.js';
export { setImageHidden } from './hidden.js';
