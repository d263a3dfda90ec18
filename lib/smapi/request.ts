// The typed SM request: the one struct param every SMAPIv1 call carries,
// checked and given types. Anything wrong with it is BadRequest (143) with an
// opterr naming the field, so a hand-written JSON-RPC call gets a clear answer.
import { SMError } from '../errors/sm-error.js';

export interface Request {
  /** The verb; equals the XML-RPC methodName. */
  command: string;
  host_ref: string;
  session_ref?: string;
  /** Positional arguments, per verb (see smapi-v1.md). */
  args: string[];
  /** Includes `SRmaster` ("true"/"false"). */
  device_config: Record<string, string>;
  sr_uuid?: string;
  sr_ref?: string;
  vdi_uuid?: string;
  vdi_location?: string;
  vdi_ref?: string;
  vdi_type?: string;
  sr_sm_config?: Record<string, string>;
  vdi_sm_config?: Record<string, string>;
  driver_params?: Record<string, string>;
  new_uuid?: string;
  subtask_of?: string;
  vdi_on_boot?: string;
  vdi_allow_caching?: string;
  local_cache_sr?: string;
}

const OPTIONAL_STRINGS = [
  'session_ref',
  'sr_uuid',
  'sr_ref',
  'vdi_uuid',
  'vdi_location',
  'vdi_ref',
  'vdi_type',
  'new_uuid',
  'subtask_of',
  'vdi_on_boot',
  'vdi_allow_caching',
  'local_cache_sr',
] as const;

const OPTIONAL_STRING_MAPS = ['sr_sm_config', 'vdi_sm_config', 'driver_params'] as const;

const bad = (detail: string) => new SMError('BadRequest', detail);

function isStruct(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function setField(target: object, key: string, value: unknown): void {
  // defineProperty: a key named "__proto__" stays an ordinary key.
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

function stringMap(value: unknown, field: string): Record<string, string> {
  if (!isStruct(value)) throw bad(`${field} must be a struct of strings`);
  const out: Record<string, string> = {};
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw bad(`${field}.${key} must be a string`);
    setField(out, key, v);
  }
  return out;
}

/**
 * Builds the Request from a call's params. Required, as the toolstack always
 * sends them: one struct param with `host_ref`, `args`, `device_config`;
 * `command` defaults to the methodName and must match it when present.
 * Optional fields may be absent or nil; unknown fields are ignored.
 */
export function parseRequest(methodName: string, params: readonly unknown[]): Request {
  if (params.length !== 1 || !isStruct(params[0])) {
    throw bad(`expected exactly one struct parameter, got ${params.length} parameter(s)`);
  }
  const p = params[0];
  const present = (key: string) => p[key] !== undefined && p[key] !== null;

  const command = present('command') ? p.command : methodName;
  if (typeof command !== 'string') throw bad('command must be a string');
  if (command !== methodName) throw bad(`command ${command} does not match method ${methodName}`);

  if (!present('host_ref')) throw bad('host_ref is missing');
  if (typeof p.host_ref !== 'string') throw bad('host_ref must be a string');

  if (!present('args')) throw bad('args is missing');
  if (!Array.isArray(p.args) || !p.args.every((a) => typeof a === 'string')) throw bad('args must be an array of strings');

  if (!present('device_config')) throw bad('device_config is missing');
  const request: Request = {
    command,
    host_ref: p.host_ref,
    args: [...(p.args as string[])],
    device_config: stringMap(p.device_config, 'device_config'),
  };
  for (const key of OPTIONAL_STRINGS) {
    if (!present(key)) continue;
    if (typeof p[key] !== 'string') throw bad(`${key} must be a string`);
    request[key] = p[key] as string;
  }
  for (const key of OPTIONAL_STRING_MAPS) {
    if (present(key)) request[key] = stringMap(p[key], key);
  }
  return request;
}

export { maskSecrets } from '../log/mask.js';
