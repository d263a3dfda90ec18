export { XapiError, XapiFailure, XapiPluginFailure, XapiTransportError, isGone } from './errors.js';
export { XapiSession, loginAsRoot, NULL_REF, type VdiIntroduce, type XapiVdiRecord } from './client.js';
export { callXapi, type CallHeaders } from './transport.js';
