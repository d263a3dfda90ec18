// Bounds on untrusted input, shared by the XML-RPC and JSON-RPC adapters.
// Real SMAPIv1 requests are a few KiB and a few levels deep; these are far
// above that and far below what could exhaust memory or the stack.

/** Largest request accepted (XML text, JSON text, or one line on the socket). */
export const MAX_REQUEST_BYTES = 16 * 1024 * 1024;

/** Deepest nesting of XML-RPC values (struct/array inside struct/array...). */
export const MAX_VALUE_DEPTH = 64;

/**
 * Deepest XML element nesting. Each value level costs three elements
 * (value, struct, member or value, array, data), plus the envelope.
 */
export const MAX_ELEMENT_DEPTH = 3 * MAX_VALUE_DEPTH + 8;
