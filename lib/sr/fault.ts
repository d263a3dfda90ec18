/**
 * Fault points: `SM_FAULT=<point>` makes the process kill itself with SIGKILL on
 * reaching that point, so tests can prove recovery from a crash at each step.
 * `SM_FAULT=<point>:<n>` fires on the n-th time the point is reached.
 */
const counts = new Map<string, number>();

export function faultPoint(name: string): void {
  const spec = process.env.SM_FAULT;
  if (!spec) return;
  const [point, nth] = spec.split(':');
  if (point !== name) return;
  const seen = (counts.get(name) ?? 0) + 1;
  counts.set(name, seen);
  if (seen >= Number(nth ?? 1)) process.kill(process.pid, 'SIGKILL');
}
