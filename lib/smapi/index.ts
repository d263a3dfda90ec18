// The protocol layer's public API.
export { SMError, SM_ERRORS, toSMError, faultStringOf, isSMErrorName, type SMErrorName } from '../errors/sm-error.js';
export {
  XmlRpcDateTime,
  encodeValue,
  decodeValue,
  escapeXmlText,
  pythonFloatRepr,
  type XmlRpcValue,
} from './xmlrpc-value.js';
export {
  parseMethodCall,
  parseMethodResponse,
  encodeResponse,
  encodeFault,
  encodeMethodCall,
  type MethodCall,
  type MethodResponse,
} from './xmlrpc-codec.js';
export { parseRequest, maskSecrets, type Request } from './request.js';
export {
  VERB_NAMES,
  VERB_CAPABILITIES,
  EXTRA_CAPABILITIES,
  NIL_REPLY_VERBS,
  isVerbName,
  type VerbName,
  type ExtraCapability,
} from './verbs.js';
export { capabilitiesOf, driverInfoReply, type Driver, type DriverInfo, type DriverVerbName, type Verb } from './driver.js';
export { dispatch } from './dispatch.js';
export { runXmlRpc } from './xmlrpc-adapter.js';
export { runJsonRpc, jsonRpcServerFor, smErrorResponse } from './jsonrpc-adapter.js';
export { toJsonValue } from './json-value.js';
export { serveUnixSocket, callUnixSocket, sendUnixSocketLine, type UnixSocketServer } from './serve.js';
export { runDriverMain, claimStdout } from './main.js';
export { MAX_REQUEST_BYTES, MAX_VALUE_DEPTH, MAX_ELEMENT_DEPTH } from './limits.js';
