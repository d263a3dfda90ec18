/** Sector bitmaps: one bit per sector, most significant bit first within each byte. */

export function testBit(map: Uint8Array, bit: number): boolean {
  return (map[bit >> 3] & (0x80 >> (bit & 7))) !== 0;
}

export function setBit(map: Uint8Array, bit: number): void {
  map[bit >> 3] |= 0x80 >> (bit & 7);
}

export function clearBit(map: Uint8Array, bit: number): void {
  map[bit >> 3] &= ~(0x80 >> (bit & 7));
}

/** Sets bits [from, to). Whole bytes are filled at once. */
export function setBits(map: Uint8Array, from: number, to: number): void {
  let i = from;
  while (i < to && (i & 7) !== 0) setBit(map, i++);
  if (i + 8 <= to) {
    const endByte = (to >> 3);
    map.fill(0xff, i >> 3, endByte);
    i = endByte << 3;
  }
  while (i < to) setBit(map, i++);
}

/** True when the first `bits` bits are all set. */
export function allSet(map: Uint8Array, bits: number): boolean {
  const whole = bits >> 3;
  for (let i = 0; i < whole; i++) if (map[i] !== 0xff) return false;
  for (let b = whole << 3; b < bits; b++) if (!testBit(map, b)) return false;
  return true;
}

/** True when no bit among the first `bits` is set. */
export function noneSet(map: Uint8Array, bits: number): boolean {
  const whole = bits >> 3;
  for (let i = 0; i < whole; i++) if (map[i] !== 0) return false;
  for (let b = whole << 3; b < bits; b++) if (testBit(map, b)) return false;
  return true;
}

export function countSet(map: Uint8Array, bits: number): number {
  let n = 0;
  for (let b = 0; b < bits; b++) if (testBit(map, b)) n++;
  return n;
}

/**
 * Calls fn(start, end) for each maximal run of set bits within [from, to).
 * Skips whole 0x00 bytes and takes whole 0xFF bytes at once, so dense and
 * empty maps cost one step per byte, not per bit.
 */
export function forEachSetRun(
  map: Uint8Array,
  from: number,
  to: number,
  fn: (start: number, end: number) => void,
): void {
  let runStart = -1;
  let i = from;
  while (i < to) {
    if ((i & 7) === 0 && i + 8 <= to) {
      const byte = map[i >> 3];
      if (byte === 0xff) {
        if (runStart < 0) runStart = i;
        i += 8;
        continue;
      }
      if (byte === 0) {
        if (runStart >= 0) {
          fn(runStart, i);
          runStart = -1;
        }
        i += 8;
        continue;
      }
    }
    if (testBit(map, i)) {
      if (runStart < 0) runStart = i;
    } else if (runStart >= 0) {
      fn(runStart, i);
      runStart = -1;
    }
    i++;
  }
  if (runStart >= 0) fn(runStart, to);
}
