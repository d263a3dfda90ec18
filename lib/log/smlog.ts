// SMlog: one winston logger per process, writing `... <ident>: [<pid>] <msg>`
// lines to $SM_ROOT/var/log/SMlog. Drivers log as `SM`, the collector as `SMGC`.
import path from 'node:path';
import { format as formatArgs } from 'node:util';
import winston from 'winston';
import { SyncAppendTransport } from './append-transport.js';
import { formatLines, shortHostname } from './line-format.js';
import { maskSecrets, maskText } from './mask.js';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

export interface SMLogOptions {
  /** `SM` for drivers, `SMGC` for the collector. */
  ident: string;
  /** Host root; default env SM_ROOT, then `/`. */
  root?: string;
  /** Least severe level written; default `debug` (SMlog keeps everything). */
  level?: LogLevel;
}

export interface SMLog {
  readonly ident: string;
  readonly file: string;
  error(message: string, ...args: unknown[]): void;
  warn(message: string, ...args: unknown[]): void;
  info(message: string, ...args: unknown[]): void;
  debug(message: string, ...args: unknown[]): void;
  /** Logs `<verb> <params>` with secrets masked (one line, JSON). */
  logVerb(verb: string, params: unknown): void;
  /** Logs a readable multi-line block: name, code, opterr, message, stack. */
  logError(err: unknown, context?: string): void;
}

const MAX_VERB_PARAMS_CHARS = 16 * 1024;

/** `$root/var/log/SMlog`, root defaulting to env SM_ROOT, then `/`. */
export function smlogPath(root: string = process.env.SM_ROOT || '/'): string {
  return path.join(root, 'var', 'log', 'SMlog');
}

export function createSMLog(options: SMLogOptions): SMLog {
  const file = smlogPath(options.root);
  const prefix = { ident: options.ident, host: shortHostname(), pid: process.pid };
  const logger = winston.createLogger({
    level: options.level ?? 'debug',
    levels: winston.config.npm.levels,
    // Errors inside winston itself must not end the process.
    exitOnError: false,
    transports: [
      new SyncAppendTransport({
        file,
        render: (message) => formatLines(prefix, maskText(message), new Date()),
      }),
    ],
  });
  const at = (level: LogLevel) => (message: string, ...args: unknown[]) => {
    logger.log(level, args.length ? formatArgs(message, ...args) : String(message));
  };
  return {
    ident: options.ident,
    file,
    error: at('error'),
    warn: at('warn'),
    info: at('info'),
    debug: at('debug'),
    logVerb(verb, params) {
      let text = stringifyForLog(maskSecrets(params));
      // A 16 MiB request must not become a 16 MiB log line.
      if (text.length > MAX_VERB_PARAMS_CHARS) {
        text = `${text.slice(0, MAX_VERB_PARAMS_CHARS)}... (${text.length - MAX_VERB_PARAMS_CHARS} more chars)`;
      }
      logger.info(`${verb} ${text}`);
    },
    logError(err, context) {
      logger.error(describeError(err, context));
    },
  };
}

/** One line of JSON; Buffers shown by size, bigints as digits. */
export function stringifyForLog(value: unknown): string {
  const text = JSON.stringify(value, function (this: Record<string, unknown>, key, v) {
    const original = this[key];
    if (Buffer.isBuffer(original)) return `<${original.length} bytes>`;
    if (typeof v === 'bigint') return v.toString();
    return v;
  });
  return text === undefined ? String(value) : text;
}

/** The multi-line error block logError writes. Duck-typed: lib/log knows no SMError. */
export function describeError(err: unknown, context?: string): string {
  const lines: string[] = [];
  const seen = new Set<unknown>();
  let current: unknown = err;
  let heading = context ? `***** ${context}: error` : '***** error';
  while (current !== undefined && !seen.has(current)) {
    seen.add(current);
    if (current instanceof Error || (typeof current === 'object' && current !== null)) {
      const e = current as { name?: unknown; code?: unknown; opterr?: unknown; message?: unknown; stack?: unknown; cause?: unknown };
      lines.push(`${heading}: ${String(e.name ?? 'Error')}`);
      if (e.code !== undefined) lines.push(`  code: ${String(e.code)}`);
      if (e.opterr !== undefined) lines.push(`  opterr: ${String(e.opterr)}`);
      if (e.message !== undefined) lines.push(`  message: ${String(e.message)}`);
      if (typeof e.stack === 'string') {
        lines.push('  stack:');
        // The stack's first line repeats name and message; keep the frames.
        for (const frame of e.stack.split('\n').slice(1)) lines.push(`    ${frame.trim()}`);
      }
      current = e.cause;
      heading = '  caused by';
    } else {
      lines.push(`${heading}: ${String(current)}`);
      break;
    }
  }
  return lines.join('\n');
}

// The process-wide logger: created on first use so SM_ROOT and the ident can
// be set first (tests set SM_ROOT; the GC calls initLog('SMGC') at start).
let processLog: SMLog | undefined;

/** Sets the process logger's ident (and options); call once, early. */
export function initLog(ident: string, options: Omit<SMLogOptions, 'ident'> = {}): SMLog {
  processLog = createSMLog({ ident, ...options });
  return processLog;
}

/** The process logger, created as `SM` if nobody called initLog. */
export function getLog(): SMLog {
  processLog ??= createSMLog({ ident: 'SM' });
  return processLog;
}

/** Facade so callers write `log.info(...)` without holding a logger. */
export const log: Omit<SMLog, 'ident' | 'file'> = {
  error: (message, ...args) => getLog().error(message, ...args),
  warn: (message, ...args) => getLog().warn(message, ...args),
  info: (message, ...args) => getLog().info(message, ...args),
  debug: (message, ...args) => getLog().debug(message, ...args),
  logVerb: (verb, params) => getLog().logVerb(verb, params),
  logError: (err, context) => getLog().logError(err, context),
};

export const logVerb = log.logVerb;
export const logError = log.logError;
