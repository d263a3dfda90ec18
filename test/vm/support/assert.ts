/** The assertions the VM tests use beyond node:assert. */
import assert from 'node:assert/strict';

/** Each key of `expected` deep-equals the same key of `actual` (other keys ignored). */
export function like(actual: unknown, expected: Record<string, unknown>, message?: string): void {
  assert.ok(actual !== null && typeof actual === 'object', message ?? `expected an object, got ${String(actual)}`);
  const picked: Record<string, unknown> = {};
  for (const k of Object.keys(expected)) picked[k] = (actual as Record<string, unknown>)[k];
  assert.deepEqual(picked, expected, message);
}

/** Awaits a promise that must reject with an instance of `type`; returns the error. */
export async function rejects<E extends Error>(promise: Promise<unknown>, type: new (...args: never[]) => E): Promise<E> {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof type, `expected ${type.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
    return e;
  }
  assert.fail(`expected a ${type.name}, but it resolved`);
}
