// Results as JSON: the same values XML-RPC carries, in JSON's types.
import { MAX_VALUE_DEPTH } from './limits.js';
import { XmlRpcDateTime } from './xmlrpc-value.js';

/**
 * nil/undefined -> null, Buffer (base64 in XML-RPC) -> base64 string,
 * dateTime -> its text, bigint -> number when exact else decimal string,
 * Map -> object; struct members that are undefined are dropped, as in XML-RPC.
 */
export function toJsonValue(value: unknown, depth = 0): unknown {
  if (depth > MAX_VALUE_DEPTH) throw new TypeError(`value nested deeper than ${MAX_VALUE_DEPTH}`);
  if (value === undefined || value === null) return null;
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  if (typeof value === 'function' || typeof value === 'symbol') throw new TypeError(`cannot send a ${typeof value} as JSON`);
  if (typeof value !== 'object') return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
  if (value instanceof XmlRpcDateTime) return value.value;
  if (value instanceof Date) return XmlRpcDateTime.fromDate(value).value;
  if (Array.isArray(value)) return value.map((v) => toJsonValue(v, depth + 1));
  const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
  const out: Record<string, unknown> = {};
  for (const [key, v] of entries) {
    if (v === undefined) continue;
    Object.defineProperty(out, String(key), { value: toJsonValue(v, depth + 1), enumerable: true, writable: true, configurable: true });
  }
  return out;
}

/**
 * Whether parsed JSON nests arrays/objects deeper than `limit`. Iterative:
 * JSON.parse accepts any depth, and every later recursive walk (request
 * parsing, secret masking for the log) would overflow the stack on it.
 */
export function nestedDeeperThan(value: unknown, limit: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (depth >= limit) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1]);
  }
  return false;
}
