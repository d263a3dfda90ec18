/** `npm run bench`: every benchmark, figures with same-run baselines. */
import { runVhdBenchmarks } from './vhd.bench.js';

console.log(`benchmarks on ${process.env.BENCH_DIR ?? 'the temp dir'} (node ${process.version})`);
await runVhdBenchmarks();
