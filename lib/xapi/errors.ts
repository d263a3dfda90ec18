/**
 * What a XenAPI call can fail with. A Failure is xapi's own answer
 * (`{Status: "Failure", ErrorDescription: [code, params...]}`); anything that
 * kept the call from getting an answer (socket gone, not HTTP 200, a reply that
 * is not XML-RPC) is a transport error. Neither is retried here: a verb turns
 * either into its own SM error, as the established SM does (sync-errors in lib/sr).
 */
export class XapiError extends Error {}

export class XapiFailure extends XapiError {
  override readonly name = 'XapiFailure';
  constructor(
    readonly code: string,
    readonly params: string[],
    readonly method: string,
  ) {
    super(`${method}: ${[code, ...params].join(' ')}`);
  }
}

export class XapiTransportError extends XapiError {
  override readonly name = 'XapiTransportError';
  constructor(
    readonly method: string,
    detail: string,
  ) {
    super(`${method}: ${detail}`);
  }
}

/**
 * A host plugin answered, but not with success (`tapdisk-pause` answers the
 * string "True"): the established SM's "failed to pause VDI", which its verbs
 * turn into their own SM error, as a XenAPI failure.
 */
export class XapiPluginFailure extends XapiError {
  override readonly name = 'XapiPluginFailure';
}

/** xapi's "that object is not there": the SM treats both codes as "VDI gone" (the established `isInvalidVDI`). */
export function isGone(err: unknown): boolean {
  return err instanceof XapiFailure && (err.code === 'HANDLE_INVALID' || err.code === 'UUID_INVALID');
}
