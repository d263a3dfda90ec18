/** One's complement of the byte sum, with the 4-byte checksum field counted as zero. */
export function vhdChecksum(buf: Uint8Array, checksumOffset: number, length = buf.length): number {
  let sum = 0;
  for (let i = 0; i < length; i++) {
    if (i >= checksumOffset && i < checksumOffset + 4) continue;
    sum += buf[i];
  }
  return ~sum >>> 0;
}
