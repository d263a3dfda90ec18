/** Entry of the FileSR executable (bundled into dist/bundle/FileSR.mjs: one file loads faster). */
import { initLog } from '../lib/log/index.js';
import { runDriverMain } from '../lib/smapi/main.js';
import { fileSrDriver } from './file-sr.js';

initLog('SM');
await runDriverMain(fileSrDriver);
