/**
 * Work sent together: every piece has ended (none is left in flight when the
 * caller goes on, e.g. a verb answering or undoing) before the first failure,
 * if any, is thrown.
 */
export async function allSettledOrThrow<T extends readonly unknown[]>(calls: T): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const settled = await Promise.allSettled(calls);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as { -readonly [K in keyof T]: Awaited<T[K]> };
}
