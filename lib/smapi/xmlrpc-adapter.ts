// SMAPIv1 over XML-RPC: one methodCall in, one methodResponse out, never a throw.
import { log } from '../log/smlog.js';
import type { Driver } from './driver.js';
import { dispatch } from './dispatch.js';
import { toSMError, type SMError } from '../errors/sm-error.js';
import { encodeFault, encodeResponse, parseMethodCall, type MethodCall } from './xmlrpc-codec.js';
import { NIL_REPLY_VERBS, type VerbName } from './verbs.js';

const faultOf = (err: SMError) => encodeFault(err.code, err.faultString);

/** Answers one XML-RPC request with a methodResponse: the result, or a fault. */
export async function runXmlRpc(driver: Driver, xml: string): Promise<string> {
  let call: MethodCall;
  try {
    call = parseMethodCall(xml);
  } catch (err) {
    const smError = toSMError(err);
    log.logError(smError, `malformed XML-RPC request (${xml.length} chars, starts ${JSON.stringify(xml.slice(0, 200))})`);
    return faultOf(smError);
  }
  let result: unknown;
  try {
    result = await dispatch(driver, call.methodName, call.params); // logs its own errors
  } catch (err) {
    return faultOf(toSMError(err));
  }
  try {
    // The established protocol answers these verbs with nil, whatever they return.
    return encodeResponse(NIL_REPLY_VERBS.has(call.methodName as VerbName) ? null : result);
  } catch (err) {
    const smError = toSMError(err);
    log.logError(smError, `${call.methodName}: result cannot be sent as XML-RPC`);
    return faultOf(smError);
  }
}
