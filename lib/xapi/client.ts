/**
 * The XenAPI calls the SM makes, typed. A session is used as given (the
 * toolstack's `session_ref` of the call): drivers never log in or out. Only
 * the GC, which runs outside any call, logs in as root over the socket
 * (`loginAsRoot`), as the established collector does. 64-bit integers travel
 * as decimal strings, as the wire protocol wants.
 */
import { XmlRpcDateTime, type XmlRpcValue } from '../smapi/xmlrpc-value.js';
import { XapiFailure } from './errors.js';
import { callXapi, type CallHeaders } from './transport.js';

export const NULL_REF = 'OpaqueRef:NULL';

/** The fields of `VDI.db_introduce`, in the order of its 19 positional parameters. */
export interface VdiIntroduce {
  uuid: string;
  name_label: string;
  name_description: string;
  SR: string;
  type: string;
  sharable: boolean;
  read_only: boolean;
  other_config: Record<string, string>;
  location: string;
  xenstore_data: Record<string, string>;
  sm_config: Record<string, string>;
  managed: boolean;
  virtual_size: number;
  physical_utilisation: number;
  metadata_of_pool: string;
  is_a_snapshot: boolean;
  /** `YYYYMMDDTHH:MM:SSZ`; `19700101T00:00:00Z` when unset. */
  snapshot_time: string;
  snapshot_of: string;
  cbt_enabled: boolean;
}

/** The fields of a VDI record the SM reads (xapi sends more). */
export interface XapiVdiRecord {
  uuid: string;
  location: string;
  SR: string;
  name_label: string;
  managed: boolean;
  read_only: boolean;
  virtual_size: string;
  physical_utilisation: string;
  sm_config: Record<string, string>;
  other_config: Record<string, string>;
  cbt_enabled: boolean;
  [field: string]: XmlRpcValue;
}

const str = (n: number) => String(Math.trunc(n));

export class XapiSession {
  constructor(
    readonly socketPath: string,
    readonly session: string,
    private readonly headers: CallHeaders = {},
  ) {}

  /** Any call, the session first: for what the typed ones below do not cover. */
  async call(method: string, ...params: unknown[]): Promise<XmlRpcValue> {
    try {
      return await callXapi(this.socketPath, method, [this.session, ...params], this.headers);
    } catch (err) {
      // SESSION_INVALID names the session: it is a secret, and the failure reaches SMlog and the toolstack.
      if (err instanceof XapiFailure && err.params.includes(this.session)) {
        throw new XapiFailure(err.code, err.params.map((p) => (p === this.session ? '(session)' : p)), method);
      }
      throw err;
    }
  }

  private async ref(method: string, ...params: unknown[]): Promise<string> {
    return String(await this.call(method, ...params));
  }

  private async unit(method: string, ...params: unknown[]): Promise<void> {
    await this.call(method, ...params);
  }

  // ------------------------------------------------------------------ VDI
  vdiIntroduce(v: VdiIntroduce): Promise<string> {
    return this.ref(
      'VDI.db_introduce',
      v.uuid,
      v.name_label,
      v.name_description,
      v.SR,
      v.type,
      v.sharable,
      v.read_only,
      v.other_config,
      v.location,
      v.xenstore_data,
      v.sm_config,
      v.managed,
      str(v.virtual_size),
      str(v.physical_utilisation),
      v.metadata_of_pool || NULL_REF,
      v.is_a_snapshot,
      new XmlRpcDateTime(v.snapshot_time || '19700101T00:00:00Z'),
      v.snapshot_of || NULL_REF,
      v.cbt_enabled,
    );
  }
  vdiForget = (vdi: string) => this.unit('VDI.db_forget', vdi);
  vdiByUuid = (uuid: string) => this.ref('VDI.get_by_uuid', uuid);
  vdiRecord = async (vdi: string) => (await this.call('VDI.get_record', vdi)) as XapiVdiRecord;
  /** Every VDI record of an SR, by ref (`get_all_records_where 'field "SR" = "<ref>"'`). */
  vdisOfSr = async (sr: string) => (await this.call('VDI.get_all_records_where', `field "SR" = "${sr}"`)) as Record<string, XapiVdiRecord>;
  vdiSmConfig = async (vdi: string) => (await this.call('VDI.get_sm_config', vdi)) as Record<string, string>;
  vdiSetSmConfig = (vdi: string, map: Record<string, string>) => this.unit('VDI.set_sm_config', vdi, map);
  vdiAddToSmConfig = (vdi: string, key: string, value: string) => this.unit('VDI.add_to_sm_config', vdi, key, value);
  vdiRemoveFromSmConfig = (vdi: string, key: string) => this.unit('VDI.remove_from_sm_config', vdi, key);
  vdiAddToOtherConfig = (vdi: string, key: string, value: string) => this.unit('VDI.add_to_other_config', vdi, key, value);
  vdiRemoveFromOtherConfig = (vdi: string, key: string) => this.unit('VDI.remove_from_other_config', vdi, key);
  vdiSetVirtualSize = (vdi: string, size: number) => this.unit('VDI.set_virtual_size', vdi, str(size));
  vdiSetPhysicalUtilisation = (vdi: string, size: number) => this.unit('VDI.set_physical_utilisation', vdi, str(size));
  vdiSetReadOnly = (vdi: string, value: boolean) => this.unit('VDI.set_read_only', vdi, value);
  vdiSetManaged = (vdi: string, value: boolean) => this.unit('VDI.set_managed', vdi, value);
  vdiSetCbtEnabled = (vdi: string, value: boolean) => this.unit('VDI.set_cbt_enabled', vdi, value);

  // ------------------------------------------------------------------- SR
  srByUuid = (uuid: string) => this.ref('SR.get_by_uuid', uuid);
  srVirtualAllocation = async (sr: string) => Number(await this.call('SR.get_virtual_allocation', sr));
  /** The SR's record; the SM reads its sizes (int64 fields as decimal strings). */
  srRecord = async (sr: string) => (await this.call('SR.get_record', sr)) as { virtual_allocation: string; physical_size: string; physical_utilisation: string; [field: string]: XmlRpcValue };
  srSetVirtualAllocation = (sr: string, bytes: number) => this.unit('SR.set_virtual_allocation', sr, str(bytes));
  srSetPhysicalSize = (sr: string, bytes: number) => this.unit('SR.set_physical_size', sr, str(bytes));
  srSetPhysicalUtilisation = (sr: string, bytes: number) => this.unit('SR.set_physical_utilisation', sr, str(bytes));
  srAddToOtherConfig = (sr: string, key: string, value: string) => this.unit('SR.add_to_other_config', sr, key, value);
  srRemoveFromOtherConfig = (sr: string, key: string) => this.unit('SR.remove_from_other_config', sr, key);

  // ----------------------------------------------------------- host, message
  hostByUuid = (uuid: string) => this.ref('host.get_by_uuid', uuid);
  hostUuid = async (host: string) => String(await this.call('host.get_uuid', host));
  callPlugin = async (host: string, plugin: string, fn: string, args: Record<string, string>) => String(await this.call('host.call_plugin', host, plugin, fn, args));
  /** `message.create(name, priority, class, obj_uuid, body)`: what an operator sees in the toolstack. */
  messageCreate = (name: string, priority: number, cls: string, objUuid: string, body: string) => this.ref('message.create', name, str(priority), cls, objUuid, body);

  // -------------------------------------------------------------- session
  logout = () => this.unit('session.logout');
}

/**
 * A root session of its own, for the GC: xapi takes a unix-socket caller as
 * root without a password, as the established collector relies on. Log out when done.
 */
export async function loginAsRoot(socketPath: string): Promise<XapiSession> {
  const ref = await callXapi(socketPath, 'session.login_with_password', ['root', '', '', 'SM']);
  return new XapiSession(socketPath, String(ref));
}
