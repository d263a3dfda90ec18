// Secret masking for SMlog. Lives in lib/log (not lib/smapi) so the logger has
// no upward dependency; the protocol layer imports it from here.

export const MASK = '******';

/** Keys whose values never reach the log: any *password* key, and the session. */
export function isSecretKey(key: string): boolean {
  return /password/i.test(key) || key === 'session_ref';
}

/**
 * Deep copy of `value` with every secret key's value replaced by MASK.
 * Recurses into plain objects and arrays (device_config, sm_config, batches);
 * other objects (Buffers, dates) are returned as they are.
 */
export function maskSecrets<T>(value: T): T {
  return maskValue(value, new Set()) as T;
}

function maskValue(value: unknown, ancestors: Set<object>): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (ancestors.has(value)) return '[circular]';
  if (Array.isArray(value)) {
    ancestors.add(value);
    const out = value.map((v) => maskValue(v, ancestors));
    ancestors.delete(value);
    return out;
  }
  if (!isPlainObject(value)) return value;
  ancestors.add(value);
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    // defineProperty: a key named "__proto__" must stay a plain key.
    Object.defineProperty(out, key, {
      value: isSecretKey(key) ? MASK : maskValue(v, ancestors),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  ancestors.delete(value);
  return out;
}

function isPlainObject(value: object): boolean {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

// key (optionally quoted) containing "password", or session_ref, then = or :,
// then a value that is quoted or runs to the next separator.
const SECRET_IN_TEXT =
  /((?:\b\w*password\w*|\bsession_ref)["']?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&)}\]]+)/gi;

// The same keys as XML-RPC struct members, as in the start of a malformed
// request that gets logged: <name>session_ref</name><value><string>SECRET...
const SECRET_IN_XML = /(<name>\s*(?:\w*password\w*|session_ref)\s*<\/name>\s*<value>\s*(?:<string>)?)([^<]+)/gi;

/** Masks `password=...`, `"chappassword": "..."`, `session_ref=...` (and such XML-RPC members) in free text. */
export function maskText(text: string): string {
  return text
    .replace(SECRET_IN_TEXT, (_all, prefix: string, secret: string) => {
      const quote = secret[0] === '"' || secret[0] === "'" ? secret[0] : '';
      return `${prefix}${quote}${MASK}${quote}`;
    })
    .replace(SECRET_IN_XML, (_all, prefix: string) => `${prefix}${MASK}`);
}
