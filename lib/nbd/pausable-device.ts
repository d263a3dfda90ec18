/**
 * Pause/unpause/refresh as a wrapper (nbdkit's pause filter): while paused,
 * new requests wait here and see only latency; pause() resolves once the
 * requests already in the inner device have drained and it is flushed, so the
 * caller may then change what lies beneath and refresh() onto it. The paused
 * state lives only in this object.
 */
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from './block-device.js';
import { operationsOf, PassthroughDevice } from './passthrough-device.js';

export class PausableDevice extends PassthroughDevice {
  private isPaused = false;
  /** Set once pause() has drained and flushed; refresh() needs it. */
  private quiesced = false;
  private inFlight = 0;
  private held: (() => void)[] = [];
  private drained: (() => void)[] = [];
  private pausing: Promise<void> | undefined;

  constructor(inner: BlockDevice) {
    super(inner);
  }

  /** True from pause() until unpause(). */
  get paused(): boolean {
    return this.isPaused;
  }

  /** The device requests currently go to. */
  get current(): BlockDevice {
    return this.inner;
  }

  /**
   * Holds new requests; resolves once those already running have finished and
   * the inner device is flushed (`flush` false: not flushed, the caller makes
   * the inner device final itself). Calling it again while paused returns the same
   * promise. If the flush fails the device stays paused and the error is thrown.
   */
  pause(opts: { flush?: boolean } = {}): Promise<void> {
    if (this.pausing) return this.pausing;
    this.isPaused = true;
    this.pausing = (async () => {
      if (this.inFlight > 0) await new Promise<void>((resolve) => this.drained.push(resolve));
      if (opts.flush !== false && this.inner.flush) await this.inner.flush();
      if (this.isPaused) this.quiesced = true;
    })();
    return this.pausing;
  }

  /** Releases the held requests (to the refreshed device, if refresh() ran). */
  unpause(): void {
    if (!this.isPaused) return;
    this.isPaused = false;
    this.quiesced = false;
    this.pausing = undefined;
    const held = this.held;
    this.held = [];
    for (const release of held) release();
  }

  /**
   * Swaps the inner device; only once pause() has resolved. The new device must
   * have the same operations and the same size (clients negotiated against the
   * old one), or with `grow` a size at least as large: each connection keeps
   * checking ranges against the size it negotiated, new connections get the new
   * one. Returns the old device, still open: closing it is the caller's call.
   */
  refresh(next: BlockDevice, opts: { grow?: boolean } = {}): BlockDevice {
    if (!this.quiesced) throw new Error('refresh needs a paused device (await pause() first)');
    const sizeOk = opts.grow ? next.size >= this.inner.size : next.size === this.inner.size;
    if (!sizeOk) throw new Error(`refresh: size ${next.size} ${opts.grow ? 'is smaller than' : 'differs from'} ${this.inner.size}`);
    const had = operationsOf(this.inner).join(',');
    const has = operationsOf(next).join(',');
    if (had !== has) throw new Error(`refresh: operations [${has}] differ from [${had}]`);
    const old = this.inner;
    this.inner = next;
    return old;
  }

  override read(buf: Buffer, offset: number): Promise<void> {
    return this.gate(() => this.inner.read(buf, offset));
  }
  override write(data: Buffer, offset: number, opts?: WriteOptions): Promise<void> {
    return this.gate(() => this.inner.write!(data, offset, opts));
  }
  override flush(): Promise<void> {
    return this.gate(() => this.inner.flush!());
  }
  override trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    return this.gate(() => this.inner.trim!(offset, length, opts));
  }
  override zero(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.gate(() => this.inner.zero!(offset, length, opts));
  }
  override extents(offset: number, length: number): Promise<Extent[]> {
    return this.gate(() => this.inner.extents!(offset, length));
  }

  /** Runs `op` against whatever `inner` is when the request is let through. */
  private async gate<T>(op: () => Promise<T>): Promise<T> {
    while (this.isPaused) await new Promise<void>((resolve) => this.held.push(resolve));
    this.inFlight++;
    try {
      return await op();
    } finally {
      if (--this.inFlight === 0) {
        const drained = this.drained;
        this.drained = [];
        for (const resolve of drained) resolve();
      }
    }
  }
}
