/** Whole-chain raw export and raw import into the leaf (tests, operators, migration). */
import { open, rename, unlink } from 'node:fs/promises';
import { VhdChain, ChainOptions } from './chain.js';

const CHUNK = 8 * 1024 * 1024;

/** Writes the chain's whole virtual disk to `rawPath` (sparse where it reads as zero). */
export async function exportRaw(leafPath: string, rawPath: string, opts: ChainOptions = {}): Promise<number> {
  const chain = await VhdChain.open(leafPath, { ...opts, writable: false });
  const tmp = `${rawPath}.partial`;
  const out = await open(tmp, 'w');
  try {
    const size = chain.virtualSize;
    const buf = Buffer.alloc(CHUNK);
    const zero = Buffer.alloc(CHUNK);
    for (let pos = 0; pos < size; pos += CHUNK) {
      const part = buf.subarray(0, Math.min(CHUNK, size - pos));
      await chain.read(part, pos);
      if (!part.equals(zero.subarray(0, part.length))) await out.write(part, 0, part.length, pos);
    }
    await out.truncate(size);
    await out.sync();
    await out.close();
    await rename(tmp, rawPath);
    return size;
  } catch (err) {
    await out.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  } finally {
    await chain.close();
  }
}

/** Writes `data` at virtual byte `offset` of the leaf, durably (new blocks before the BAT). */
export async function writeAt(leafPath: string, data: Buffer, offset: number, opts: ChainOptions = {}): Promise<void> {
  const chain = await VhdChain.open(leafPath, { ...opts, writable: true, durable: true });
  try {
    await chain.write(data, offset);
    await chain.sync();
  } finally {
    await chain.close();
  }
}
