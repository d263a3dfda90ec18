/** Identifiers arriving from outside are validated before they touch any path. */
import { SMError, type SMErrorName } from '../errors/sm-error.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID_RE.test(value);
}

/** The value as a lower-case uuid, or the given SM error. */
export function requireUuid(value: unknown, what: string, error: SMErrorName): string {
  if (value === undefined || value === '') throw new SMError(error, `${what} missing`);
  if (!isUuid(value)) throw new SMError(error, `${what} is not a uuid: ${JSON.stringify(String(value).slice(0, 80))}`);
  return value.toLowerCase();
}
