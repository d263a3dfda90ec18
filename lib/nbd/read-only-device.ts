/** Serves a device read-only (nbdkit's readonly filter): only the write side is hidden. */
import type { BlockDevice } from './block-device.js';
import { hideOperations, PassthroughDevice } from './passthrough-device.js';

export class ReadOnlyDevice extends PassthroughDevice {
  constructor(inner: BlockDevice) {
    super(inner);
    hideOperations(this, ['write', 'trim', 'zero']);
  }
}
