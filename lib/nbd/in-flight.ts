/**
 * Bounds what one connection holds at once: requests whose reply is not yet
 * handed to the kernel, and the payload bytes they pin. The connection loop
 * stops reading while the budget is spent, which pauses the socket.
 */
export class InFlightBudget {
  private requests = 0;
  private bytes = 0;
  private waiter: { cost: number; resolve: () => void } | undefined;
  private idleWaiters: (() => void)[] = [];

  constructor(
    readonly maxRequests: number,
    readonly maxBytes: number,
  ) {}

  get count(): number {
    return this.requests;
  }

  /** Waits for room; a single request larger than maxBytes still runs, alone. */
  acquire(cost: number): Promise<void> {
    if (this.fits(cost)) {
      this.take(cost);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.waiter = { cost, resolve };
    });
  }

  release(cost: number): void {
    this.requests--;
    this.bytes -= cost;
    const w = this.waiter;
    if (w && this.fits(w.cost)) {
      this.waiter = undefined;
      this.take(w.cost);
      w.resolve();
    }
    if (this.requests === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  /** Resolves once nothing is in flight. */
  idle(): Promise<void> {
    if (this.requests === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private fits(cost: number): boolean {
    return this.requests === 0 || (this.requests < this.maxRequests && this.bytes + cost <= this.maxBytes);
  }

  private take(cost: number): void {
    this.requests++;
    this.bytes += cost;
  }
}
