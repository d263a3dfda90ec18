/**
 * A xapi host plugin's executable form: xapi runs `/etc/xapi.d/plugins/<name>`
 * with one argv element, an XML-RPC methodCall whose method is the plugin
 * function and whose params are [session_id, struct of strings]; the plugin
 * prints one methodResponse holding {Status: "Success", Value} or
 * {Status: "Failure", ErrorDescription: [code, ...]} and exits 0.
 */
import { getLog } from '../lib/log/index.js';
import { claimStdout } from '../lib/smapi/main.js';
import { encodeResponse, parseMethodCall } from '../lib/smapi/xmlrpc-codec.js';

export type PluginFunction = (args: Record<string, string>) => Promise<string>;

const success = (value: string) => encodeResponse({ Status: 'Success', Value: value });
const failure = (description: string[]) => encodeResponse({ Status: 'Failure', ErrorDescription: description });

/** The whole response for one plugin call (argv[1]); never throws. */
export async function answerPluginCall(functions: Record<string, PluginFunction>, argv: readonly string[]): Promise<string> {
  if (argv.length !== 1) return failure(['XENAPI_PLUGIN_FAILURE', '', 'BadRequest', `expected one argument, the methodCall; got ${argv.length}`]);
  let method = '';
  try {
    const call = parseMethodCall(argv[0]);
    method = call.methodName;
    const fn = Object.hasOwn(functions, method) ? functions[method] : undefined;
    if (!fn) return failure(['UNKNOWN_XENAPI_PLUGIN_FUNCTION', method]);
    const args = call.params[1];
    if (args === null || typeof args !== 'object' || Array.isArray(args) || !Object.values(args).every((v) => typeof v === 'string')) {
      throw Object.assign(new Error('params must be [session_id, struct of strings]'), { name: 'BadRequest' });
    }
    return success(await fn(args as Record<string, string>));
  } catch (err) {
    const e = err as Error;
    getLog().error(`plugin ${method || '(unparsed call)'} failed: ${e.name}: ${e.message}`);
    return failure(['XENAPI_PLUGIN_FAILURE', method, e.name, e.message]);
  }
}

/** Runs the plugin as its executable: the response alone on stdout, exit 0. */
export async function runPluginMain(functions: Record<string, PluginFunction>): Promise<void> {
  const write = claimStdout();
  await write(await answerPluginCall(functions, process.argv.slice(2)));
  process.exit(0);
}
