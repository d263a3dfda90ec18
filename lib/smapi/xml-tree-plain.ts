/**
 * The element tree of a plain XML-RPC document, built without the general
 * XML parser: what xapi, the toolstack and Python's xmlrpc write is a small
 * subset of XML (an optional `<?xml ...?>` declaration, the XML-RPC elements
 * without attributes, text with the five named entities). A driver process
 * parses its request and every XenAPI reply once each, cold: the general
 * parser costs about a millisecond per document there, this a few hundredths.
 *
 * It builds exactly the tree xml2js builds with the codec's options
 * (xmlrpc-codec.ts; test/smapi/xml-tree-plain.test.ts compares the two), and
 * it never decides that a document is wrong: anything outside the subset
 * (comments, CDATA, attributes, character references, other element names,
 * control characters, a carriage return, a document that does not close, too
 * deep, content after the root) gives undefined, and the general parser then
 * reads the document and says what is wrong with it.
 */
import { TEXT_KEY, type XmlNode } from './xmlrpc-value.js';

/** The element names of XML-RPC; none is a property of Object.prototype, so a tree built with them needs no care for it. */
const XMLRPC_ELEMENTS = new Set([
  'methodCall',
  'methodResponse',
  'methodName',
  'params',
  'param',
  'fault',
  'value',
  'string',
  'int',
  'i1',
  'i2',
  'i4',
  'i8',
  'bigint',
  'boolean',
  'double',
  'float',
  'dateTime.iso8601',
  'base64',
  'nil',
  'struct',
  'member',
  'name',
  'array',
  'data',
]);

const ENTITIES = new Map([
  ['amp', '&'],
  ['lt', '<'],
  ['gt', '>'],
  ['quot', '"'],
  ['apos', "'"],
]);
/** Characters the subset leaves to the general parser: C0 controls but tab and newline (a carriage return too: line ends are not normalised here). */
const UNUSUAL_TEXT = /[\x00-\x08\x0b-\x1f]/;
/** The general parser's test for text that does not count inside an element (JavaScript's \s, as xml2js uses). */
const BLANK = /^\s*$/;
/** The only text the general parser allows outside the root element (its own idea of white space; no carriage return here). */
const OUTSIDE = /^[ \t\n]*$/;

interface Open {
  name: string;
  node: Record<string, XmlNode[] | string>;
}

/** The tree `{rootName: node}`, or undefined when the document is not plain XML-RPC (see above). */
export function plainXmlRpcTree(xml: string, maxDepth: number): Record<string, XmlNode> | undefined {
  const stack: Open[] = [];
  let result: Record<string, XmlNode> | undefined;
  let at = 0;
  if (xml.startsWith('<?xml')) {
    const end = xml.indexOf('?>');
    if (end < 0) return undefined;
    at = end + 2;
  }
  for (;;) {
    const lt = xml.indexOf('<', at);
    const text = lt < 0 ? xml.slice(at) : xml.slice(at, lt);
    if (text) {
      const decoded = decodeText(text);
      if (decoded === undefined) return undefined;
      const top = stack[stack.length - 1];
      if (top) top.node[TEXT_KEY] = (top.node[TEXT_KEY] as string) + decoded;
      else if (!OUTSIDE.test(decoded)) return undefined; // text outside the root element
    }
    if (lt < 0) break;
    const gt = xml.indexOf('>', lt);
    if (gt < 0) return undefined;
    const tag = xml.slice(lt + 1, gt);
    at = gt + 1;
    if (tag.startsWith('/')) {
      const open = stack.pop();
      if (!open || open.name !== tag.slice(1)) return undefined;
      const value = closed(open.node);
      const parent = stack[stack.length - 1];
      if (parent) append(parent.node, open.name, value);
      else result = { [open.name]: value };
      continue;
    }
    const selfClosing = tag.endsWith('/');
    const name = selfClosing ? tag.slice(0, -1) : tag;
    if (result !== undefined || !XMLRPC_ELEMENTS.has(name) || stack.length >= maxDepth) return undefined;
    const node: Record<string, XmlNode[] | string> = { [TEXT_KEY]: '' };
    if (selfClosing) {
      const parent = stack[stack.length - 1];
      if (parent) append(parent.node, name, closed(node));
      else result = { [name]: closed(node) };
    } else {
      stack.push({ name, node });
    }
  }
  return stack.length === 0 ? result : undefined;
}

/** An element's node once it closes, as xml2js makes it: blank text dropped, text alone becomes a string, nothing at all the (blank) text. */
function closed(node: Record<string, XmlNode[] | string>): XmlNode {
  const text = node[TEXT_KEY] as string;
  if (BLANK.test(text)) {
    delete node[TEXT_KEY];
    return Object.keys(node).length === 0 ? text : node;
  }
  return Object.keys(node).length === 1 ? text : node;
}

function append(parent: Record<string, XmlNode[] | string>, name: string, value: XmlNode): void {
  const list = parent[name];
  if (Array.isArray(list)) list.push(value);
  else parent[name] = [value];
}

/** Text with its named entities decoded; undefined for anything the subset leaves to the general parser. */
function decodeText(text: string): string | undefined {
  if (UNUSUAL_TEXT.test(text) || text.includes('\r') || text.includes(']]>')) return undefined;
  if (!text.includes('&')) return text;
  let out = '';
  let at = 0;
  for (let amp = text.indexOf('&'); amp >= 0; amp = text.indexOf('&', at)) {
    const semi = text.indexOf(';', amp);
    const decoded = semi < 0 ? undefined : ENTITIES.get(text.slice(amp + 1, semi));
    if (decoded === undefined) return undefined;
    out += text.slice(at, amp) + decoded;
    at = semi + 1;
  }
  return out + text.slice(at);
}
