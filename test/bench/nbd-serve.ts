/**
 * Benchmark server: serves VHD chains over NBD from a process of its own, so a
 * benchmark client does not share the server's event loop.
 *
 *   node dist/test/bench/nbd-serve.js SOCKET NAME=LEAF.vhd [NAME=LEAF.vhd ...]
 *
 * Each leaf is opened writable (`openVhdDevice`) and added to one NbdServer.
 * Prints "ready" once listening; SIGTERM/SIGINT close the server, then the
 * devices, then exit 0 (so `node --cpu-prof` writes its profile).
 */
import { NbdServer } from '../../lib/nbd/index.js';
import { openVhdDevice, type WritableVhdDevice } from '../../lib/datapath/vhd-device.js';

const [socketPath, ...specs] = process.argv.slice(2);
if (!socketPath || specs.length === 0) {
  console.error('usage: nbd-serve SOCKET NAME=LEAF.vhd [NAME=LEAF.vhd ...]');
  process.exit(2);
}

const server = new NbdServer({ maxConnections: 4 * specs.length + 8 });
const devices: WritableVhdDevice[] = [];
for (const spec of specs) {
  const eq = spec.indexOf('=');
  const device = await openVhdDevice(spec.slice(eq + 1), { writable: true });
  devices.push(device);
  server.addExport(spec.slice(0, eq), device);
}
await server.listen(socketPath);
process.stdout.write('ready\n');

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await server.close();
  await Promise.all(devices.map((d) => d.close()));
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
