/** lib/os: typed wrappers for the system tools the SM drives (argv arrays only, parsed output). */
export * from './run.js';
export * from './validate.js';
export * from './tool.js';
export * from './net.js';
export * from './udev.js';
export * from './lvm.js';
export * from './scsi.js';
export * as iscsi from './iscsi.js';
export * as nfs from './nfs.js';
export * from './nbd-client.js';
