/** VDI sizes from requests: decimal byte counts, rounded up to whole 2 MiB blocks. */
import { SMError } from '../errors/sm-error.js';
import { BLOCK_SIZE, MAX_VIRTUAL_SIZE } from '../vhd/index.js';

export function parseVdiSize(text: unknown): number {
  if (typeof text !== 'string' || !/^\d{1,16}$/.test(text.trim())) {
    throw new SMError('VDISize', `not a size in bytes: ${JSON.stringify(String(text).slice(0, 40))}`);
  }
  const size = Number(text.trim());
  if (size <= 0) throw new SMError('VDISize', `size must be positive, got ${size}`);
  const rounded = Math.ceil(size / BLOCK_SIZE) * BLOCK_SIZE;
  if (rounded > MAX_VIRTUAL_SIZE) throw new SMError('VDISize', `size ${size} exceeds the maximum ${MAX_VIRTUAL_SIZE}`);
  return rounded;
}

const GiB = 1024 * 1024 * 1024;

/**
 * BAT room reserved at creation, so a later grow is a footer update: four times
 * the size, at least 64 GiB, never past the maximum (a 10 GiB VDI costs a 128 KiB BAT).
 */
export function batRoomFor(size: number): number {
  return Math.max(size, Math.min(MAX_VIRTUAL_SIZE, Math.max(4 * size, 64 * GiB)));
}
