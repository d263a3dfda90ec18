/** Entry of the LVMoISCSISR executable (bundled into dist/bundle/LVMoISCSISR.mjs: one file loads faster). */
import { initLog } from '../lib/log/index.js';
import { runDriverMain } from '../lib/smapi/main.js';
import { lvmoiscsiSrDriver } from './lvmoiscsi-sr.js';

initLog('SM');
await runDriverMain(lvmoiscsiSrDriver);
