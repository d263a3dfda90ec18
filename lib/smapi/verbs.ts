// The SMAPIv1 verbs, what capability each advertises, and which ones the
// protocol answers with nil whatever the driver computes.

export const VERB_NAMES = [
  'sr_get_driver_info',
  'sr_create',
  'sr_delete',
  'sr_attach',
  'sr_detach',
  'sr_scan',
  'sr_probe',
  'sr_update',
  'sr_content_type',
  'vdi_create',
  'vdi_delete',
  'vdi_attach',
  'vdi_detach',
  'vdi_activate',
  'vdi_deactivate',
  'vdi_snapshot',
  'vdi_clone',
  'vdi_resize',
  'vdi_resize_online',
  'vdi_update',
  'vdi_introduce',
  'vdi_generate_config',
  'vdi_compose',
  'vdi_epoch_begin',
  'vdi_epoch_end',
  'vdi_attach_from_config',
  'vdi_detach_from_config',
  'vdi_reset_leaf',
  'vdi_enable_cbt',
  'vdi_disable_cbt',
  'vdi_data_destroy',
  'vdi_list_changed_blocks',
] as const;

export type VerbName = (typeof VERB_NAMES)[number];

export function isVerbName(name: string): name is VerbName {
  return (VERB_NAMES as readonly string[]).includes(name);
}

/** Capability a verb advertises once the driver implements it. */
export const VERB_CAPABILITIES = {
  sr_create: 'SR_CREATE',
  sr_delete: 'SR_DELETE',
  sr_attach: 'SR_ATTACH',
  sr_detach: 'SR_DETACH',
  sr_scan: 'SR_SCAN',
  sr_probe: 'SR_PROBE',
  sr_update: 'SR_UPDATE',
  vdi_create: 'VDI_CREATE',
  vdi_delete: 'VDI_DELETE',
  vdi_attach: 'VDI_ATTACH',
  vdi_detach: 'VDI_DETACH',
  vdi_resize: 'VDI_RESIZE',
  vdi_resize_online: 'VDI_RESIZE_ONLINE',
  vdi_clone: 'VDI_CLONE',
  vdi_snapshot: 'VDI_SNAPSHOT',
  vdi_activate: 'VDI_ACTIVATE',
  vdi_deactivate: 'VDI_DEACTIVATE',
  vdi_update: 'VDI_UPDATE',
  vdi_introduce: 'VDI_INTRODUCE',
  vdi_generate_config: 'VDI_GENERATE_CONFIG',
  // Implementing epoch_begin means implementing reset on boot (the "/2" form the established SM checks).
  vdi_epoch_begin: 'VDI_RESET_ON_BOOT/2',
  // One capability for the four changed-block-tracking verbs, as the established SM advertises it.
  vdi_enable_cbt: 'VDI_CONFIG_CBT',
  vdi_disable_cbt: 'VDI_CONFIG_CBT',
  vdi_data_destroy: 'VDI_CONFIG_CBT',
  vdi_list_changed_blocks: 'VDI_CONFIG_CBT',
} as const satisfies Partial<Record<VerbName, string>>;

/** Capabilities that are properties of the SR type, not verbs; a driver declares them. */
export type ExtraCapability =
  | 'SR_METADATA'
  | 'SR_TRIM'
  | 'SR_STATS'
  | 'VDI_RESET_ON_BOOT/2'
  | 'THIN_PROVISIONING'
  | 'LARGE_VDI';

export const EXTRA_CAPABILITIES: readonly ExtraCapability[] = [
  'SR_METADATA',
  'SR_TRIM',
  'SR_STATS',
  'VDI_RESET_ON_BOOT/2',
  'THIN_PROVISIONING',
  'LARGE_VDI',
];

/**
 * Verbs whose SMAPIv1 reply is nil. The XML-RPC adapter enforces it, so a
 * verb may return something useful to other callers (JSON-RPC's sr_scan
 * returns the VDI records) without changing the established protocol.
 */
export const NIL_REPLY_VERBS: ReadonlySet<VerbName> = new Set<VerbName>([
  'sr_create',
  'sr_delete',
  'sr_attach',
  'sr_detach',
  'sr_scan',
  'sr_update',
  'vdi_delete',
  'vdi_detach',
  'vdi_activate',
  'vdi_deactivate',
  'vdi_update',
  'vdi_epoch_begin',
  'vdi_epoch_end',
  'vdi_detach_from_config',
  'vdi_enable_cbt',
  'vdi_disable_cbt',
  'vdi_data_destroy',
]);

/**
 * Verbs a capability needs besides its own: the toolstack's use of it calls
 * them too, so without them the capability is not advertised.
 */
export const CAPABILITY_NEEDS: Partial<Record<string, readonly VerbName[]>> = {
  // A generated config is only worth having if the host can attach and detach with it.
  VDI_GENERATE_CONFIG: ['vdi_attach_from_config', 'vdi_detach_from_config'],
  // Changed-block tracking is the four verbs together.
  VDI_CONFIG_CBT: ['vdi_enable_cbt', 'vdi_disable_cbt', 'vdi_data_destroy', 'vdi_list_changed_blocks'],
};
