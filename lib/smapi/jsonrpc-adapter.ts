// SMAPIv1 over JSON-RPC 2.0 (json-rpc-2.0's server): method = verb name,
// params = the same struct as the XML-RPC param, result = the same value
// (nil -> null; sr_scan may return the VDI records, which XML-RPC drops).
//
// Errors: an SM error is {code: <SM code>, message: <description>,
// data: {name, opterr}} (opterr null when there is none). Protocol errors use
// the JSON-RPC codes: -32700 not JSON, -32600 not a request (or too large),
// -32602 params present but not an object. Unknown verbs are SM 38, exactly
// as over XML-RPC, so both adapters behave the same.
import {
  JSONRPCErrorCode,
  JSONRPCErrorException,
  JSONRPCServer,
  createJSONRPCErrorResponse,
  createJSONRPCSuccessResponse,
  type JSONRPCErrorResponse,
  type JSONRPCID,
  type JSONRPCRequest,
  type JSONRPCResponse,
} from 'json-rpc-2.0';
import type { Driver } from './driver.js';
import { dispatch } from './dispatch.js';
import { toSMError, type SMError } from '../errors/sm-error.js';
import { nestedDeeperThan, toJsonValue } from './json-value.js';
import { MAX_REQUEST_BYTES, MAX_VALUE_DEPTH } from './limits.js';

export function smErrorResponse(id: JSONRPCID, err: SMError): JSONRPCErrorResponse {
  return createJSONRPCErrorResponse(id, err.code, err.description, { name: err.name, opterr: err.opterr ?? null });
}

function isStruct(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

const servers = new WeakMap<Driver, JSONRPCServer>();

/** The json-rpc-2.0 server for a driver: every method name goes to dispatch. */
export function jsonRpcServerFor(driver: Driver): JSONRPCServer {
  let server = servers.get(driver);
  if (server) return server;
  // dispatch already logs errors to SMlog; the default listener would print
  // them to stderr a second time.
  server = new JSONRPCServer({ errorListener: () => {} });
  // No method table: "method not found" is the single entry point, so names
  // that are not SMAPIv1 verbs get dispatch's answer (38) as well.
  server.handleMethodNotFound = async (request: JSONRPCRequest) => {
    const params = request.params ?? {};
    if (!isStruct(params)) {
      throw new JSONRPCErrorException('Invalid params', JSONRPCErrorCode.InvalidParams, {
        detail: 'params must be the SM request struct (a JSON object)',
      });
    }
    const result = toJsonValue(await dispatch(driver, request.method, [params]));
    return request.id === undefined ? null : createJSONRPCSuccessResponse(request.id, result);
  };
  server.mapErrorToJSONRPCErrorResponse = (id: JSONRPCID, error: unknown) =>
    error instanceof JSONRPCErrorException
      ? createJSONRPCErrorResponse(id, error.code, error.message, error.data)
      : smErrorResponse(id, toSMError(error));
  servers.set(driver, server);
  return server;
}

/**
 * Answers one JSON-RPC text (a request or a batch) with response text, or ''
 * when everything in it was a notification. Never throws.
 * Batch members run one after another, in order: SM verbs change storage,
 * and a client batching "create then attach" means that order.
 */
export async function runJsonRpc(driver: Driver, text: string): Promise<string> {
  if (text.length > MAX_REQUEST_BYTES || Buffer.byteLength(text, 'utf8') > MAX_REQUEST_BYTES) {
    return JSON.stringify(createJSONRPCErrorResponse(null, JSONRPCErrorCode.InvalidRequest, 'Request too large'));
  }
  let payload: unknown;
  try {
    payload = JSON.parse(text);
  } catch {
    return JSON.stringify(createJSONRPCErrorResponse(null, JSONRPCErrorCode.ParseError, 'Parse error'));
  }
  // A batch, a request and its params add three levels above the SM values.
  if (nestedDeeperThan(payload, MAX_VALUE_DEPTH + 3)) {
    return JSON.stringify(createJSONRPCErrorResponse(null, JSONRPCErrorCode.InvalidRequest, 'Request nested too deep'));
  }
  const response = await answer(driver, payload);
  return response === null ? '' : JSON.stringify(response);
}

/** The response value for a parsed payload (null: nothing to send). */
export async function answer(driver: Driver, payload: unknown): Promise<JSONRPCResponse | JSONRPCResponse[] | null> {
  if (!Array.isArray(payload)) return answerOne(driver, payload);
  if (payload.length === 0) return createJSONRPCErrorResponse(null, JSONRPCErrorCode.InvalidRequest, 'Invalid Request');
  const responses: JSONRPCResponse[] = [];
  for (const item of payload) {
    const response = await answerOne(driver, item);
    if (response) responses.push(response);
  }
  // A batch is answered with an array even when one member needs an answer.
  return responses.length ? responses : null;
}

async function answerOne(driver: Driver, item: unknown): Promise<JSONRPCResponse | null> {
  if (!isStruct(item)) return createJSONRPCErrorResponse(null, JSONRPCErrorCode.InvalidRequest, 'Invalid Request');
  // JSON-RPC 2.0: a method that is not a string, or an id that is not a string,
  // number or null, makes the request invalid (json-rpc-2.0 would run it anyway).
  const badId = item.id !== undefined && item.id !== null && typeof item.id !== 'string' && typeof item.id !== 'number';
  if (typeof item.method !== 'string' || badId) return createJSONRPCErrorResponse(idOf(item), JSONRPCErrorCode.InvalidRequest, 'Invalid Request');
  try {
    return await jsonRpcServerFor(driver).receive(item as unknown as JSONRPCRequest);
  } catch (err) {
    return smErrorResponse(idOf(item), toSMError(err));
  }
}

function idOf(item: Record<string, unknown>): JSONRPCID {
  return typeof item.id === 'string' || typeof item.id === 'number' ? item.id : null;
}
