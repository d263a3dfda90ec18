/** The two waiting primitives the writable VHD device needs: a mutex and a lock over ranges. */

/** One holder at a time, in arrival order. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  /** Resolves to the release function once every earlier holder has released. */
  async acquire(): Promise<() => void> {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const before = this.tail;
    this.tail = before.then(() => held);
    await before;
    return release;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

interface HeldRange {
  from: number;
  to: number;
  released: Promise<void>;
}

/**
 * Holders of overlapping [from, to) ranges exclude each other; disjoint ranges
 * run together. A waiter re-checks after each release it waited for, so it
 * never holds a range while another overlapping holder is inside.
 */
export class RangeLock {
  private readonly held = new Set<HeldRange>();

  async acquire(from: number, to: number): Promise<() => void> {
    for (;;) {
      let blocker: HeldRange | undefined;
      for (const h of this.held) {
        if (h.from < to && from < h.to) {
          blocker = h;
          break;
        }
      }
      if (!blocker) break;
      await blocker.released;
    }
    let release!: () => void;
    const entry: HeldRange = { from, to, released: new Promise<void>((r) => (release = r)) };
    this.held.add(entry);
    return () => {
      this.held.delete(entry);
      release();
    };
  }

  get size(): number {
    return this.held.size;
  }
}
