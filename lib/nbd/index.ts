/** lib/nbd: an NBD server over the BlockDevice contract, wrappers, and two simple devices. */
export { DeviceError, type BlockDevice, type Extent, type WriteOptions, type ZeroOptions } from './block-device.js';
export { capabilitiesOf, transmissionFlags, MAX_PAYLOAD, type Capabilities } from './capabilities.js';
export { NbdServerClosedError, NbdProtocolError, nbdErrnoOf } from './errors.js';
export { NbdServer, type ExportFactory, type ExportOptions, type NbdServerOptions } from './server.js';
export { silentLogger, type NbdLogger } from './logger.js';
export { PassthroughDevice, hideOperations, operationsOf, OPTIONAL_OPERATIONS, type OptionalOperation } from './passthrough-device.js';
export { PausableDevice } from './pausable-device.js';
export { ReadOnlyDevice } from './read-only-device.js';
export { MemoryDevice, type MemoryDeviceOptions } from './memory-device.js';
export { FileDevice, type FileDeviceOptions } from './file-device.js';
export { Errno, TFlag, type ErrnoName } from './protocol.js';
