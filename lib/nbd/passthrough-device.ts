/**
 * The base for wrappers (nbdkit's filters, xen-orchestra's DiskPassthrough):
 * every member forwards to `inner`, so a wrapper overrides only what it
 * gates. Optional operations the inner device lacks are absent here too,
 * because the server reads capabilities from which members exist.
 */
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from './block-device.js';

/** The optional operations whose presence is a capability. */
export const OPTIONAL_OPERATIONS = ['write', 'flush', 'trim', 'zero', 'extents'] as const;
export type OptionalOperation = (typeof OPTIONAL_OPERATIONS)[number];

/** Makes `names` absent on `device` (an own `undefined` shadows the class's method). */
export function hideOperations(device: BlockDevice, names: readonly OptionalOperation[]): void {
  for (const name of names) Object.defineProperty(device, name, { value: undefined, writable: true, configurable: true });
}

/** Which optional operations `device` has. */
export function operationsOf(device: BlockDevice): OptionalOperation[] {
  return OPTIONAL_OPERATIONS.filter((name) => typeof device[name] === 'function');
}

export class PassthroughDevice implements BlockDevice {
  constructor(protected inner: BlockDevice) {
    hideOperations(
      this,
      OPTIONAL_OPERATIONS.filter((name) => typeof inner[name] !== 'function'),
    );
  }

  get size(): number {
    return this.inner.size;
  }
  get preferredBlockSize(): number | undefined {
    return this.inner.preferredBlockSize;
  }
  get multiConn(): boolean | undefined {
    return this.inner.multiConn;
  }
  get nativeFua(): boolean | undefined {
    return this.inner.nativeFua;
  }

  read(buf: Buffer, offset: number): Promise<void> {
    return this.inner.read(buf, offset);
  }
  write(data: Buffer, offset: number, opts?: WriteOptions): Promise<void> {
    return this.inner.write!(data, offset, opts);
  }
  flush(): Promise<void> {
    return this.inner.flush!();
  }
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.inner.trim!(offset, length, opts);
  }
  zero(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.inner.zero!(offset, length, opts);
  }
  extents(offset: number, length: number): Promise<Extent[]> {
    return this.inner.extents!(offset, length);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
