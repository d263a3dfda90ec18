/** Entry of the NFSSR executable (bundled into dist/bundle/NFSSR.mjs: one file loads faster). */
import { initLog } from '../lib/log/index.js';
import { runDriverMain } from '../lib/smapi/main.js';
import { nfsSrDriver } from './nfs-sr.js';

initLog('SM');
await runDriverMain(nfsSrDriver);
