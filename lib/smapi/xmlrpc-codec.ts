// XML-RPC documents: parse a methodCall (untrusted: from argv), write a
// methodResponse exactly as Python's xmlrpc.client.dumps(methodresponse=True,
// allow_none=True) does.
//
// Every envelope-level problem (not well-formed, a DOCTYPE, too large, too
// deep, not a methodCall, no methodName, a bad value) is a GenericException
// (1200) whose opterr says what was wrong: that is the code the established
// Python driver gives when its XML-RPC parser throws, so the toolstack sees
// the same thing. Problems with the SM request inside a well-formed call are
// BadRequest (143), raised by request.ts.
import { createRequire } from 'node:module';
import type xml2js from 'xml2js';
import { MAX_ELEMENT_DEPTH, MAX_REQUEST_BYTES } from './limits.js';
import { plainXmlRpcTree } from './xml-tree-plain.js';
import {
  TEXT_KEY,
  childrenNamed,
  decodeValue,
  encodeValue,
  escapeXmlText,
  malformed,
  onlyChild,
  textOf,
  type XmlNode,
  type XmlRpcValue,
} from './xmlrpc-value.js';

export interface MethodCall {
  methodName: string;
  params: XmlRpcValue[];
}

export type MethodResponse =
  | { kind: 'result'; value: XmlRpcValue }
  | { kind: 'fault'; faultCode: number; faultString: string };

const XML_DECLARATION = "<?xml version='1.0'?>\n";

// ---------------------------------------------------------------- writing

/** A methodResponse carrying one value (`undefined`/`null` become nil). */
export function encodeResponse(value: unknown): string {
  const out = [XML_DECLARATION, '<methodResponse>\n', '<params>\n', '<param>\n'];
  encodeValue(value, out);
  out.push('</param>\n', '</params>\n', '</methodResponse>\n');
  return out.join('');
}

/** A methodResponse carrying a fault. */
export function encodeFault(faultCode: number, faultString: string): string {
  const out = [XML_DECLARATION, '<methodResponse>\n', '<fault>\n'];
  encodeValue({ faultCode, faultString }, out);
  out.push('</fault>\n', '</methodResponse>\n');
  return out.join('');
}

/** A methodCall, as a toolstack (or a test) sends it. */
export function encodeMethodCall(methodName: string, params: unknown[]): string {
  const out = [XML_DECLARATION, '<methodCall>\n', `<methodName>${escapeXmlText(methodName)}</methodName>\n`, '<params>\n'];
  for (const param of params) {
    out.push('<param>\n');
    encodeValue(param, out);
    out.push('</param>\n');
  }
  out.push('</params>\n', '</methodCall>\n');
  return out.join('');
}

// ---------------------------------------------------------------- reading

// Keep every character of string values (no trim/normalize), one array per
// child name (explicitArray), attributes ignored (XML-RPC has none), and text
// under a key no element can be named, so a <_> element cannot collide with it.
const PARSER_OPTIONS: xml2js.ParserOptions = {
  explicitArray: true,
  explicitRoot: true,
  ignoreAttrs: true,
  charkey: TEXT_KEY,
  trim: false,
  normalize: false,
  emptyTag: '',
  strict: true,
  async: false,
};

/**
 * The general parser, loaded on the first document outside the plain subset:
 * a driver process nearly never reads one, and loading xml2js (with sax and
 * xmlbuilder) at every start cost each call about 7 ms.
 */
let generalParser: typeof xml2js | undefined;
const loadGeneralParser = (): typeof xml2js => (generalParser ??= createRequire(import.meta.url)('xml2js') as typeof xml2js);

interface SaxHandlers {
  onopentag(node: unknown): void;
  onclosetag(name: string): void;
  onerror(err: Error): void;
}

/**
 * Parses untrusted XML into xml2js's tree. Runs synchronously (xml2js with
 * async:false) so that every error is seen here: we hook the underlying sax
 * parser to bound element depth while parsing (a deep document must fail
 * before it fills memory) and to refuse anything after the root element,
 * which xml2js would otherwise silently drop.
 */
function parseXmlTree(xml: string): Record<string, XmlNode> {
  if (xml.length > MAX_REQUEST_BYTES || Buffer.byteLength(xml, 'utf8') > MAX_REQUEST_BYTES) {
    throw malformed(`document larger than ${MAX_REQUEST_BYTES} bytes`);
  }
  // No DTDs at all: nothing legitimate in XML-RPC needs one, and refusing it
  // outright rules out entity expansion and external entities (XXE).
  if (/<!DOCTYPE/i.test(xml) || /<!ENTITY/i.test(xml)) throw malformed('DOCTYPE and ENTITY declarations are not allowed');
  // A plain XML-RPC document (nearly all of them) is read without the general parser; it reads the rest (xml-tree-plain.ts).
  const plain = plainXmlRpcTree(xml, MAX_ELEMENT_DEPTH);
  if (plain) return plain;

  const parser = new (loadGeneralParser().Parser)(PARSER_OPTIONS);
  const sax = (parser as unknown as { saxParser?: SaxHandlers }).saxParser;
  if (!sax || typeof sax.onopentag !== 'function' || typeof sax.onclosetag !== 'function') {
    throw new Error('xml2js internals changed: cannot bound XML depth'); // fail closed
  }
  let failure: Error | undefined;
  let result: unknown;
  let depth = 0;
  let rootClosed = false;
  const fail = (message: string): never => {
    failure ??= new Error(message);
    throw failure;
  };
  const { onopentag, onclosetag, onerror } = sax;
  sax.onopentag = function (this: unknown, node) {
    if (rootClosed) fail('content after the document element');
    if (++depth > MAX_ELEMENT_DEPTH) fail(`elements nested deeper than ${MAX_ELEMENT_DEPTH}`);
    onopentag.call(this, node);
  };
  sax.onclosetag = function (this: unknown, name) {
    onclosetag.call(this, name);
    if (--depth === 0) rootClosed = true;
  };
  sax.onerror = function (this: unknown, err) {
    failure ??= err;
    onerror.call(this, err);
  };
  try {
    parser.parseString(xml, (err, value) => {
      if (err) failure ??= err;
      else result ??= value;
    });
  } catch (err) {
    failure ??= err instanceof Error ? err : new Error(String(err));
  }
  if (failure) throw malformed(failure.message.split('\n')[0]);
  if (result === null || typeof result !== 'object') throw malformed('empty document');
  return result as Record<string, XmlNode>;
}

function rootElement(xml: string, expected: string): XmlNode {
  const tree = parseXmlTree(xml);
  const [name] = Object.keys(tree);
  if (name !== expected) throw malformed(`expected <${expected}>, found <${name}>`);
  return tree[name] as XmlNode;
}

/** Parses a methodCall; throws SMError GenericException (1200) if it is not one. */
export function parseMethodCall(xml: string): MethodCall {
  const root = rootElement(xml, 'methodCall');
  if (typeof root === 'string' || TEXT_KEY in root) throw malformed('<methodCall> must hold <methodName> and <params>');
  const extra = Object.keys(root).filter((n) => n !== 'methodName' && n !== 'params');
  if (extra.length) throw malformed(`unexpected <${extra[0]}> in <methodCall>`);
  if (!root.methodName) throw malformed('missing <methodName>');
  if (root.methodName.length !== 1) throw malformed('more than one <methodName>');
  const methodName = textOf((root.methodName as XmlNode[])[0], 'methodName').trim();
  if (!methodName) throw malformed('empty <methodName>');
  const paramsList = (root.params ?? []) as XmlNode[];
  if (paramsList.length > 1) throw malformed('more than one <params>');
  return { methodName, params: paramsList.length ? decodeParams(paramsList[0]) : [] };
}

function decodeParams(node: XmlNode): XmlRpcValue[] {
  return childrenNamed(node, 'param', 'params').map((param) => decodeValue(onlyChild(param, 'value', 'param')));
}

/** Parses a methodResponse (what drivers print); used by tests and clients. */
export function parseMethodResponse(xml: string): MethodResponse {
  const root = rootElement(xml, 'methodResponse');
  if (typeof root !== 'string' && !(TEXT_KEY in root) && Object.keys(root).join() === 'fault') {
    const fault = decodeValue(onlyChild(onlyChild(root, 'fault', 'methodResponse'), 'value', 'fault'));
    const f = fault as { faultCode?: unknown; faultString?: unknown };
    if (typeof f.faultCode !== 'number' || typeof f.faultString !== 'string') throw malformed('bad fault struct');
    return { kind: 'fault', faultCode: f.faultCode, faultString: f.faultString };
  }
  const params = decodeParams(onlyChild(root, 'params', 'methodResponse'));
  if (params.length !== 1) throw malformed(`a methodResponse holds one param, found ${params.length}`);
  return { kind: 'result', value: params[0] };
}
