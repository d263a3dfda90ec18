/** `npm run bench`: every benchmark, figures with same-run baselines. `npm run bench -- sr` runs one group. */
import { runCbtBenchmarks } from './cbt.bench.js';
import { runCoalesceCopyBenchmark } from './coalesce-copy.bench.js';
import { runDatapathBenchmarks } from './datapath.bench.js';
import { runGcBenchmarks } from './gc.bench.js';
import { runLiveGcBenchmarks } from './livegc.bench.js';
import { runLockWaitBenchmarks } from './lock-wait.bench.js';
import { runMgtBenchmarks } from './mgt.bench.js';
import { runPauseStallBenchmark } from './pausestall.bench.js';
import { runSrBenchmarks, runSrSizeBenchmarks } from './sr.bench.js';
import { runVhdBenchmarks } from './vhd.bench.js';
import { runXapiBenchmarks } from './xapi.bench.js';

const groups: Record<string, () => Promise<void>> = {
  vhd: runVhdBenchmarks,
  coalescecopy: runCoalesceCopyBenchmark,
  sr: runSrBenchmarks,
  srsize: runSrSizeBenchmarks,
  mgt: runMgtBenchmarks,
  gc: runGcBenchmarks,
  lockwait: runLockWaitBenchmarks,
  datapath: runDatapathBenchmarks,
  pausestall: runPauseStallBenchmark,
  livegc: runLiveGcBenchmarks,
  cbt: runCbtBenchmarks,
  xapi: runXapiBenchmarks,
};
const wanted = process.argv.slice(2);
console.log(`benchmarks on ${process.env.BENCH_DIR ?? 'the temp dir'} (node ${process.version})`);
for (const [name, run] of Object.entries(groups)) if (wanted.length === 0 || wanted.includes(name)) await run();
