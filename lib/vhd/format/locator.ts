/** Parent locator payloads as blktap writes them: relative to the child's directory. */
import { LOCATOR_MACX, LOCATOR_W2KU, LOCATOR_W2RU } from './constants.js';

export const LOCATOR_CODES = [LOCATOR_MACX, LOCATOR_W2KU, LOCATOR_W2RU] as const;

export function encodeLocator(code: number, parentBasename: string): Buffer {
  switch (code) {
    case LOCATOR_MACX:
      return Buffer.from(`file://./${parentBasename}`, 'utf8');
    case LOCATOR_W2KU:
    case LOCATOR_W2RU:
      return Buffer.from(`.\\${parentBasename}`, 'utf16le');
    default:
      throw new RangeError(`unknown locator code 0x${code.toString(16)}`);
  }
}

/** The path a locator names, exactly as stored (not resolved, not trusted). */
export function decodeLocator(code: number, data: Buffer): string | undefined {
  switch (code) {
    case LOCATOR_MACX: {
      const s = data.toString('utf8').replace(/\0+$/, '');
      return s.startsWith('file://') ? s.slice('file://'.length) : s;
    }
    case LOCATOR_W2KU:
    case LOCATOR_W2RU:
      return data.toString('utf16le').replace(/\0+$/, '').replace(/\\/g, '/');
    default:
      return undefined;
  }
}
