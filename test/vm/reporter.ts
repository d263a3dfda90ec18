/**
 * node:test reporter for the VM tier: one line per test
 * ("VM PASS|FAIL <suite> › <test> (1.2s)", failure details indented), one
 * "VM PART <suite> <s>" per test file's suite, "VM SKIP <suite> › <test>" per
 * test not run (left out by --test-name-pattern), and a last line
 * "VM: N passed, N failed" (a failed hook counts as one failure).
 */
interface Failure {
  failureType?: string;
  message?: string;
  cause?: { message?: string; stack?: string } | string;
}
interface TestData {
  name: string;
  nesting: number;
  /** Set on a test left out (a --test-name-pattern it does not match, or `skip`). */
  skip?: boolean | string;
  details?: { duration_ms?: number; type?: string; error?: Failure };
}
type Event = { type: string; data: TestData };

function describeFailure(e: Failure | undefined): string {
  const cause = e?.cause;
  const text =
    typeof cause === 'object' && cause !== null
      ? (cause.stack ?? cause.message ?? '')
      : typeof cause === 'string'
        ? cause
        : (e?.message ?? 'failed');
  return text
    .split('\n')
    .filter((l) => !/node:internal|node_modules/.test(l))
    .slice(0, 30)
    .map((l) => `    ${l}\n`)
    .join('');
}

export default async function* vmReporter(source: AsyncIterable<Event>): AsyncGenerator<string> {
  const path: string[] = [];
  let passed = 0;
  let failed = 0;
  for await (const { type, data } of source) {
    if (type === 'test:start') {
      path.length = data.nesting;
      path.push(data.name);
      continue;
    }
    if (type !== 'test:pass' && type !== 'test:fail') continue;
    const name = [...path.slice(0, data.nesting), data.name].join(' › ');
    const secs = ((data.details?.duration_ms ?? 0) / 1000).toFixed(1);
    const error = data.details?.error;
    if (data.details?.type === 'suite') {
      if (type === 'test:fail' && error?.failureType !== 'subtestsFailed') {
        failed++;
        yield `VM FAIL ${name} (${error?.message ?? 'suite failed'})\n${describeFailure(error)}`;
      }
      yield `VM PART ${name} ${secs}s\n`;
    } else if (type === 'test:pass' && data.skip !== undefined && data.skip !== false) {
      yield `VM SKIP ${name}\n`; // not run: neither passed nor failed
    } else if (type === 'test:pass') {
      passed++;
      yield `VM PASS ${name} (${secs}s)\n`;
    } else {
      failed++;
      yield `VM FAIL ${name} (${secs}s)\n${describeFailure(error)}`;
    }
  }
  yield `VM: ${passed} passed, ${failed} failed\n`;
}
