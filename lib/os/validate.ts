/**
 * Checks for values that become argv elements. No shell is involved, so the
 * dangers are option injection (a value starting with "-" read as a flag),
 * line breaks in tools that parse line-based input or config, and paths that
 * climb out of where they should be.
 */
import { isIP } from 'node:net';

export class InvalidArgumentError extends Error {
  override readonly name = 'InvalidArgumentError';
  constructor(
    readonly what: string,
    readonly reason: string,
    /** Never holds a secret: secret checks pass undefined. */
    readonly value?: string,
  ) {
    super(`invalid ${what}${value === undefined ? '' : ` ${JSON.stringify(clip(value))}`}: ${reason}`);
  }
}

function clip(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** Any value placed in argv: non-empty, no leading "-", no control characters. */
export function checkArg(what: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) throw new InvalidArgumentError(what, 'must be a non-empty string');
  if (value.startsWith('-')) throw new InvalidArgumentError(what, 'must not start with "-"', value);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(value)) throw new InvalidArgumentError(what, 'must not contain control characters or line breaks', value);
  if (value.length > 4096) throw new InvalidArgumentError(what, 'is too long', value);
  return value;
}

const HOST_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;

/** A host name, IPv4 or IPv6 address ("[v6]" accepted). Returns it without brackets. */
export function checkHost(value: unknown, what = 'host'): string {
  let v = checkArg(what, value);
  if (v.startsWith('[') && v.endsWith(']')) v = v.slice(1, -1);
  if (isIP(v)) return v;
  if (v.length <= 253 && v.split('.').every((l) => HOST_LABEL.test(l))) return v;
  throw new InvalidArgumentError(what, 'is not a host name or IP address', String(value));
}

export function checkPort(value: unknown, what = 'port'): number {
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535) {
    throw new InvalidArgumentError(what, 'must be an integer from 1 to 65535', String(value));
  }
  return n;
}

/** An iSCSI name: iqn.YYYY-MM.reversed.domain[:anything], eui.<16 hex> or naa.<hex>. */
export function checkIqn(value: unknown, what = 'iSCSI name'): string {
  const v = checkArg(what, value);
  if (/^iqn\.\d{4}-\d{2}\.[A-Za-z0-9][A-Za-z0-9.:_-]*$/.test(v) || /^eui\.[0-9A-Fa-f]{16}$/.test(v) || /^naa\.[0-9A-Fa-f]{16,32}$/.test(v)) {
    if (v.length <= 223) return v;
  }
  throw new InvalidArgumentError(what, 'is not an iqn./eui./naa. name', v);
}

/** An absolute path with no "." or ".." segment. */
export function checkAbsPath(value: unknown, what = 'path'): string {
  const v = checkArg(what, value);
  if (!v.startsWith('/')) throw new InvalidArgumentError(what, 'must be an absolute path', v);
  if (v.split('/').some((seg) => seg === '..' || seg === '.')) {
    throw new InvalidArgumentError(what, 'must not contain "." or ".." segments', v);
  }
  return v;
}

/** A device path safe to embed in an LVM filter regex and config string. */
export function checkDevicePath(value: unknown, what = 'device'): string {
  const v = checkAbsPath(value, what);
  if (!/^\/dev\/[A-Za-z0-9._:@+=,/-]+$/.test(v)) {
    throw new InvalidArgumentError(what, 'must be a /dev path of letters, digits and ._:@+=,/-', v);
  }
  return v;
}

/** An LVM VG or LV name (lvm2's rules: [A-Za-z0-9+_.-], not "-"-led, not . or ..). */
export function checkLvmName(value: unknown, what = 'LVM name'): string {
  const v = checkArg(what, value);
  if (!/^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$/.test(v) || v === '.' || v === '..' || v.length > 127) {
    throw new InvalidArgumentError(what, 'must be letters, digits and +_.- (at most 127)', v);
  }
  return v;
}

/** An LVM tag ([A-Za-z0-9_+.-/=!:&#], up to 1024 characters). */
export function checkLvmTag(value: unknown, what = 'LVM tag'): string {
  const v = checkArg(what, value);
  if (!/^[A-Za-z0-9_+./=!:&#-]{1,1024}$/.test(v)) throw new InvalidArgumentError(what, 'has characters LVM does not allow in tags', v);
  return v;
}

/** A secret (CHAP password): checked like any argument but never echoed. */
export function checkSecret(value: unknown, what = 'secret'): string {
  try {
    return checkArg(what, value);
  } catch (e) {
    throw new InvalidArgumentError(what, (e as InvalidArgumentError).reason);
  }
}
