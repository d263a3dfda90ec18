// The one dispatch contract: (driver, methodName, params) -> result or SMError.
// XML-RPC, JSON-RPC and the socket server are thin adapters onto it.
import { log } from '../log/smlog.js';
import { driverInfoReply, type Driver, type DriverVerbName } from './driver.js';
import { SMError, toSMError } from '../errors/sm-error.js';
import { parseRequest } from './request.js';
import { isVerbName } from './verbs.js';

/**
 * Runs one call. Logs `<verb> <params>` (secrets masked) to SMlog, then:
 * - sr_get_driver_info: answered from driver.info (params not needed);
 * - an SMAPIv1 verb the driver implements: params checked (BadRequest 143), verb run;
 * - a verb it does not implement, or a name that is no SMAPIv1 verb:
 *   Unimplemented (38) with the name as opterr; the toolstack reads 38 as
 *   "not implemented" either way.
 * Always throws SMError (other exceptions become GenericException 1200).
 */
export async function dispatch(driver: Driver, methodName: string, params: readonly unknown[]): Promise<unknown> {
  const started = Date.now();
  log.logVerb(methodName, params.length === 1 ? params[0] : params);
  try {
    const result = await run(driver, methodName, params);
    log.debug(`${methodName} done in ${Date.now() - started} ms`);
    return result;
  } catch (err) {
    const smError = toSMError(err);
    log.logError(smError, methodName);
    throw smError;
  }
}

async function run(driver: Driver, methodName: string, params: readonly unknown[]): Promise<unknown> {
  if (methodName === 'sr_get_driver_info') return driverInfoReply(driver);
  if (!isVerbName(methodName)) throw new SMError('Unimplemented', `unknown verb ${methodName}`);
  const verb = driver.verbs[methodName as DriverVerbName];
  if (typeof verb !== 'function') throw new SMError('Unimplemented', methodName);
  return verb(parseRequest(methodName, params));
}
