export { XapiError, XapiFailure, XapiPluginFailure, XapiTransportError, isGone } from './errors.js';
export { XapiSession, loginAsRoot, NULL_REF, type VdiIntroduce, type XapiVdiRecord } from './client.js';
export { callXapi, connectAhead, type CallHeaders } from './transport.js';
