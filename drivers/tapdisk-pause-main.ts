/**
 * Entry of the `tapdisk-pause` host plugin (bundled into
 * dist/bundle/tapdisk-pause.mjs): the SR master's pause, unpause and refresh
 * of a VDI, done on this host's datapath (lib/sr/host-pause.ts).
 */
import { initLog } from '../lib/log/index.js';
import { hostPause, type HostPauseAction } from '../lib/sr/host-pause.js';
import { runPluginMain } from './host-plugin.js';

const action = (name: HostPauseAction) => async (args: Record<string, string>) => {
  await hostPause(name, args);
  return 'True';
};

initLog('SM');
await runPluginMain({ pause: action('pause'), unpause: action('unpause'), refresh: action('refresh') });
