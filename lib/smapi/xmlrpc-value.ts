// XML-RPC values: the encoder writes exactly what Python's xmlrpc.client
// writes (the established drivers' output, byte for byte); the decoder reads
// the element tree xml2js builds (see xmlrpc-codec.ts for the parser options).
import { SMError } from '../errors/sm-error.js';
import { MAX_VALUE_DEPTH } from './limits.js';

/** An XML-RPC dateTime.iso8601, kept as the text it was sent as (no time zone in the format). */
export class XmlRpcDateTime {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
  toJSON(): string {
    return this.value;
  }
  /** `YYYYMMDDTHH:MM:SS` in UTC, the form Python writes for a datetime. */
  static fromDate(date: Date): XmlRpcDateTime {
    const p = (n: number, w = 2) => String(n).padStart(w, '0');
    return new XmlRpcDateTime(
      `${p(date.getUTCFullYear(), 4)}${p(date.getUTCMonth() + 1)}${p(date.getUTCDate())}T` +
        `${p(date.getUTCHours())}:${p(date.getUTCMinutes())}:${p(date.getUTCSeconds())}`,
    );
  }
}

export type XmlRpcValue =
  | string
  | number
  | bigint
  | boolean
  | null
  | Buffer
  | XmlRpcDateTime
  | XmlRpcValue[]
  | { [key: string]: XmlRpcValue };

/** Thrown for anything that is not valid XML-RPC; adapters turn it into a fault. */
export function malformed(detail: string): SMError {
  return new SMError('GenericException', `malformed XML-RPC: ${detail}`);
}

// ---------------------------------------------------------------- encoding

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

// Python escapes only & < >. Characters XML 1.0 cannot carry at all (most C0
// controls, U+FFFE/U+FFFF, lone surrogates) Python writes raw, producing a
// document no parser accepts; we write U+FFFD instead so the reply stays
// well-formed. Tab, LF and CR are legal and written raw, as Python does.
const NEEDS_ESCAPE =
  /[&<>\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

export function escapeXmlText(text: string): string {
  return text.replace(NEEDS_ESCAPE, (c) => (c === '&' ? '&amp;' : c === '<' ? '&lt;' : c === '>' ? '&gt;' : '\uFFFD'));
}

/** Python's repr() of a float: shortest round-trip digits, its own exponent rules. */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, expText] = x.toExponential().split('e'); // shortest digits
  const exp = Number(expText);
  const sign = mantissa.startsWith('-') ? '-' : '';
  const digits = mantissa.replace(/^-/, '').replace('.', '');
  if (exp < -4 || exp >= 16) {
    const frac = digits.length > 1 ? `.${digits.slice(1)}` : '';
    const e = String(Math.abs(exp)).padStart(2, '0');
    return `${sign}${digits[0]}${frac}e${exp < 0 ? '-' : '+'}${e}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  const intPart = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
  const fracPart = digits.slice(exp + 1) || '0';
  return `${sign}${intPart}.${fracPart}`;
}

/** Python's base64.encodebytes: 76-character lines, each ending in a newline. */
function base64Lines(bytes: Uint8Array): string {
  const b64 = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
  let out = '';
  for (let i = 0; i < b64.length; i += 76) out += b64.slice(i, i + 76) + '\n';
  return out;
}

function isPlainObject(value: object): value is Record<string, unknown> {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * Appends the XML of one value, laid out as xmlrpc.client.Marshaller does:
 * every value ends with a newline except nil, which Python leaves bare.
 * JS numbers carry no int/float distinction: integral ones within 32 bits are
 * <int>, other exact (safe) integers <i8> (Python refuses them; Python's and
 * most parsers read <i8>), everything else <double>.
 * `undefined` is nil at the top and in arrays, and omitted from structs (as JSON does).
 */
export function encodeValue(value: unknown, out: string[], ancestors: object[] = []): void {
  if (value === null || value === undefined) {
    out.push('<value><nil/></value>');
  } else if (typeof value === 'boolean') {
    out.push(`<value><boolean>${value ? 1 : 0}</boolean></value>\n`);
  } else if (typeof value === 'number') {
    if (Number.isInteger(value) && value >= INT32_MIN && value <= INT32_MAX) {
      out.push(`<value><int>${value}</int></value>\n`);
    } else if (Number.isSafeInteger(value)) {
      out.push(`<value><i8>${value}</i8></value>\n`);
    } else {
      out.push(`<value><double>${pythonFloatRepr(value)}</double></value>\n`);
    }
  } else if (typeof value === 'bigint') {
    const tag = value >= INT32_MIN && value <= INT32_MAX ? 'int' : 'i8';
    out.push(`<value><${tag}>${value}</${tag}></value>\n`);
  } else if (typeof value === 'string') {
    out.push(`<value><string>${escapeXmlText(value)}</string></value>\n`);
  } else if (value instanceof Uint8Array) {
    out.push(`<value><base64>\n${base64Lines(value)}</base64></value>\n`);
  } else if (value instanceof XmlRpcDateTime || value instanceof Date) {
    const dt = value instanceof Date ? XmlRpcDateTime.fromDate(value) : value;
    out.push(`<value><dateTime.iso8601>${escapeXmlText(dt.value)}</dateTime.iso8601></value>\n`);
  } else if (typeof value === 'object') {
    encodeContainer(value, out, ancestors);
  } else {
    throw new TypeError(`cannot encode a ${typeof value} as XML-RPC`);
  }
}

function encodeContainer(value: object, out: string[], ancestors: object[]): void {
  if (ancestors.includes(value)) throw new TypeError('cannot encode a value that contains itself');
  if (ancestors.length >= MAX_VALUE_DEPTH) throw new TypeError(`value nested deeper than ${MAX_VALUE_DEPTH}`);
  const inner = [...ancestors, value];
  if (Array.isArray(value)) {
    out.push('<value><array><data>\n');
    for (const item of value) encodeValue(item, out, inner);
    out.push('</data></array></value>\n');
    return;
  }
  let entries: [unknown, unknown][];
  if (value instanceof Map) entries = [...value.entries()];
  else if (isPlainObject(value)) entries = Object.entries(value);
  else throw new TypeError(`cannot encode a ${value.constructor?.name ?? 'object'} as XML-RPC`);
  out.push('<value><struct>\n');
  for (const [key, item] of entries) {
    if (typeof key !== 'string') throw new TypeError('struct keys must be strings');
    if (item === undefined) continue;
    out.push(`<member>\n<name>${escapeXmlText(key)}</name>\n`);
    encodeValue(item, out, inner);
    out.push('</member>\n');
  }
  out.push('</struct></value>\n');
}

// ---------------------------------------------------------------- decoding

/**
 * What xml2js yields for an element, given the codec's options
 * (explicitArray, ignoreAttrs, charkey '#text'): a string for an element with
 * only text (or nothing), else an object of child-name -> elements, with
 * '#text' present only when non-blank text sits beside children.
 */
export type XmlNode = string | { [name: string]: XmlNode[] | string };

export const TEXT_KEY = '#text';

/** The child-element names of a node; mixed text is refused. */
function childNames(node: XmlNode, where: string): string[] {
  if (typeof node === 'string') return [];
  if (TEXT_KEY in node) throw malformed(`text mixed with elements in <${where}>`);
  return Object.keys(node);
}

/** The single element named `name` inside `node`. */
export function onlyChild(node: XmlNode, name: string, where: string): XmlNode {
  const names = childNames(node, where);
  if (names.length !== 1 || names[0] !== name) {
    throw malformed(`<${where}> must hold exactly one <${name}>, found ${describe(names)}`);
  }
  const list = (node as Record<string, XmlNode[]>)[name];
  if (list.length !== 1) throw malformed(`<${where}> must hold exactly one <${name}>, found ${list.length}`);
  return list[0];
}

/** All elements named `name` inside `node` (none if it is empty). */
export function childrenNamed(node: XmlNode, name: string, where: string): XmlNode[] {
  if (typeof node === 'string') {
    if (node.trim() !== '') throw malformed(`<${where}> holds text instead of <${name}> elements`);
    return [];
  }
  const names = childNames(node, where);
  if (names.some((n) => n !== name)) throw malformed(`<${where}> may hold only <${name}>, found ${describe(names)}`);
  return (node as Record<string, XmlNode[]>)[name] ?? [];
}

export function textOf(node: XmlNode, where: string): string {
  if (typeof node !== 'string') throw malformed(`<${where}> must hold text only`);
  return node;
}

const describe = (names: string[]) => (names.length ? names.map((n) => `<${n}>`).join(', ') : 'nothing');

const INT_TYPES = new Set(['int', 'i4', 'i8', 'i1', 'i2', 'bigint']);
const DOUBLE_TEXT = /^\s*[+-]?(?:\d+\.?\d*(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?|inf(?:inity)?|nan)\s*$/i;
const BASE64_TEXT = /^[A-Za-z0-9+/]*={0,2}$/;

/** Decodes the content of one <value> element. */
export function decodeValue(node: XmlNode, depth = 0): XmlRpcValue {
  if (depth > MAX_VALUE_DEPTH) throw malformed(`values nested deeper than ${MAX_VALUE_DEPTH}`);
  // <value>text</value> with no type element is a string, whitespace and all.
  if (typeof node === 'string') return node;
  const names = childNames(node, 'value');
  if (names.length !== 1) throw malformed(`<value> must hold one typed element, found ${describe(names)}`);
  const type = names[0];
  const list = node[type] as XmlNode[];
  if (list.length !== 1) throw malformed(`<value> must hold one typed element, found ${list.length} <${type}>`);
  const inner = list[0];

  if (type === 'string') return textOf(inner, type);
  if (INT_TYPES.has(type)) return decodeInt(textOf(inner, type), type);
  if (type === 'boolean') {
    const text = textOf(inner, type).trim();
    if (text === '1') return true;
    if (text === '0') return false;
    throw malformed(`bad boolean ${JSON.stringify(text)}`);
  }
  if (type === 'double' || type === 'float') {
    const text = textOf(inner, type);
    if (!DOUBLE_TEXT.test(text)) throw malformed(`bad double ${JSON.stringify(text)}`);
    const t = text.trim().toLowerCase().replace(/inity$/, '');
    return t.endsWith('inf') ? (t.startsWith('-') ? -Infinity : Infinity) : t.endsWith('nan') ? NaN : Number(t);
  }
  if (type === 'nil') return null;
  if (type === 'base64') {
    const text = textOf(inner, type).replace(/\s+/g, '');
    if (!BASE64_TEXT.test(text)) throw malformed('bad base64 text');
    return Buffer.from(text, 'base64');
  }
  if (type === 'dateTime.iso8601') return new XmlRpcDateTime(textOf(inner, type).trim());
  if (type === 'array') {
    const data = onlyChild(inner, 'data', 'array');
    return childrenNamed(data, 'value', 'data').map((v) => decodeValue(v, depth + 1));
  }
  if (type === 'struct') return decodeStruct(inner, depth);
  throw malformed(`unknown value type <${type}>`);
}

function decodeInt(text: string, type: string): number | bigint {
  if (!/^\s*[+-]?\d+\s*$/.test(text)) throw malformed(`bad ${type} ${JSON.stringify(text)}`);
  const big = BigInt(text.trim());
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

function decodeStruct(node: XmlNode, depth: number): { [key: string]: XmlRpcValue } {
  const out: { [key: string]: XmlRpcValue } = {};
  for (const member of childrenNamed(node, 'member', 'struct')) {
    const names = childNames(member, 'member').sort().join(',');
    if (names !== 'name,value') throw malformed('<member> must hold one <name> and one <value>');
    const name = textOf(onlyOne(member, 'name'), 'name');
    const value = decodeValue(onlyOne(member, 'value'), depth + 1);
    // defineProperty: a member called "__proto__" is data, not a prototype.
    Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function onlyOne(node: XmlNode, name: string): XmlNode {
  const list = (node as Record<string, XmlNode[]>)[name];
  if (list.length !== 1) throw malformed(`<member> must hold exactly one <${name}>`);
  return list[0];
}
