// What a driver hands the protocol layer: its description and its verbs.
import type { Request } from './request.js';
import { CAPABILITY_NEEDS, EXTRA_CAPABILITIES, VERB_CAPABILITIES, VERB_NAMES, type ExtraCapability, type VerbName } from './verbs.js';

/** One verb implementation. Throw SMError for protocol errors; anything else becomes 1200. */
export type Verb = (req: Request) => Promise<unknown>;

/** Every verb a driver may implement; sr_get_driver_info is answered from `info`. */
export type DriverVerbName = Exclude<VerbName, 'sr_get_driver_info'>;

export interface DriverInfo {
  name: string;
  description: string;
  vendor: string;
  copyright: string;
  driver_version: string;
  /** Defaults to "1.0", the SMAPIv1 level. */
  required_api_version?: string;
  /** Capabilities beyond those implied by the implemented verbs. */
  capabilities?: readonly ExtraCapability[];
  /** The device_config keys the SR type understands. */
  configuration: ReadonlyArray<{ key: string; description: string }>;
}

export interface Driver {
  info: DriverInfo;
  verbs: Partial<Record<DriverVerbName, Verb>>;
}

/** Capability names: implemented verbs in protocol order, then declared extras. */
export function capabilitiesOf(driver: Driver): string[] {
  const out: string[] = [];
  for (const verb of VERB_NAMES) {
    const cap = (VERB_CAPABILITIES as Partial<Record<VerbName, string>>)[verb];
    const has = (v: VerbName) => typeof driver.verbs[v as DriverVerbName] === 'function';
    if (cap && has(verb) && (CAPABILITY_NEEDS[cap] ?? []).every(has) && !out.includes(cap)) out.push(cap);
  }
  for (const cap of driver.info.capabilities ?? []) {
    // Only property-style capabilities: a verb capability must come from a verb.
    if (EXTRA_CAPABILITIES.includes(cap) && !out.includes(cap)) out.push(cap);
  }
  return out;
}

/** The sr_get_driver_info reply, keys in the order the established drivers use. */
export function driverInfoReply(driver: Driver): Record<string, unknown> {
  const info = driver.info;
  return {
    name: info.name,
    description: info.description,
    vendor: info.vendor,
    copyright: info.copyright,
    driver_version: info.driver_version,
    required_api_version: info.required_api_version ?? '1.0',
    capabilities: capabilitiesOf(driver),
    configuration: info.configuration.map(({ key, description }) => ({ key, description })),
  };
}
