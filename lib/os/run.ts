/**
 * Running system tools: always an argv array (never a shell), C locale output,
 * a time limit, and errors whose text never carries a secret.
 */
import { spawn } from 'node:child_process';

export interface RunOptions {
  /** Added to (and overriding) the inherited environment. */
  env?: Record<string, string>;
  /** Kill the tool (SIGTERM, then SIGKILL 2 s later) after this long. */
  timeoutMs?: number;
  /** Written to the tool's stdin, which is then closed. */
  input?: string | Buffer;
  /** Values to mask wherever they appear (argv, stderr, stdout) in errors and logs. */
  secrets?: readonly string[];
  /** Exit codes returned as results instead of thrown (0 always is). */
  allowCodes?: readonly number[];
  cwd?: string;
}

export interface ToolResult {
  stdout: string;
  stderr: string;
  code: number;
}

export const MASK = '******';

/** A tool that could not start, timed out, was killed or exited non-zero. */
export class ToolError extends Error {
  override readonly name = 'ToolError';
  /** argv with secrets masked. */
  readonly args: readonly string[];
  readonly stderr: string;
  readonly stdout: string;

  constructor(
    readonly cmd: string,
    args: readonly string[],
    /** Exit code; null when the tool did not start or was killed by a signal. */
    readonly code: number | null,
    stderr: string,
    stdout: string,
    readonly signal: NodeJS.Signals | null = null,
    readonly timedOut = false,
    /** Why it did not start (e.g. ENOENT), when it did not. */
    readonly spawnError?: string,
    secrets: readonly string[] = [],
  ) {
    const maskedArgs = maskArgv(args, secrets);
    const maskedErr = maskText(stderr, secrets);
    let what: string;
    if (spawnError) what = `could not run (${spawnError})`;
    else if (timedOut) what = 'timed out';
    else if (signal) what = `killed by ${signal}`;
    else what = `exited with code ${code}`;
    const detail = lastLines(maskedErr, 3);
    super(`${formatCommand(cmd, maskedArgs)}: ${what}${detail ? `: ${detail}` : ''}`);
    this.args = maskedArgs;
    this.stderr = maskedErr;
    this.stdout = maskText(stdout, secrets);
  }
}

/** Called for every command run, with the argv already masked (for SMlog). */
export type CommandLogger = (event: { command: string; code: number | null; ms: number }) => void;
let commandLogger: CommandLogger | undefined;
export function setCommandLogger(logger: CommandLogger | undefined): void {
  commandLogger = logger;
}

// root's tools live in sbin; a toolstack may start us with a short PATH
const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/local/bin', '/usr/bin', '/bin'];

/** The folders a tool is looked up in: PATH, then root's sbin folders. */
export function toolSearchPath(path = process.env.PATH): string[] {
  const dirs = (path ?? '').split(':').filter(Boolean);
  for (const d of SBIN_DIRS) if (!dirs.includes(d)) dirs.push(d);
  return dirs;
}

function toolEnv(extra?: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', LANG: 'C', ...extra };
  env.PATH = toolSearchPath(env.PATH).join(':');
  return env;
}

export function runTool(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<ToolResult> {
  const secrets = opts.secrets ?? [];
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...args], {
      env: toolEnv(opts.env),
      cwd: opts.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let spawnError: string | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGTERM');
            killTimer = setTimeout(() => child.kill('SIGKILL'), 2000);
          }, opts.timeoutMs);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {}); // a tool that exits without reading its input
    child.on('error', (e: NodeJS.ErrnoException) => {
      spawnError = e.code ?? e.message;
    });
    child.on('close', (exitCode, signal) => {
      const code = spawnError === undefined ? exitCode : null;
      if (timer) clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      try {
        commandLogger?.({ command: formatCommand(cmd, maskArgv(args, secrets)), code, ms: Date.now() - started });
      } catch {
        // a failing logger must not turn a tool's result into an error
      }
      if (spawnError !== undefined || timedOut || code === null || (code !== 0 && !opts.allowCodes?.includes(code))) {
        reject(new ToolError(cmd, args, code, stderr, stdout, signal, timedOut, spawnError, secrets));
      } else {
        resolve({ stdout, stderr, code });
      }
    });
    if (opts.input !== undefined) child.stdin.end(opts.input);
    else child.stdin.end();
  });
}

// Flags whose next argument is a secret (tgtadm --password, --chap-secret ...).
const SECRET_FLAG = /^--?[\w.-]*(password|passwd|secret)[\w.-]*$/i;
// Setting names whose value is a secret (iscsiadm -n node.session.auth.password -v X).
const SECRET_KEY = /(password|passwd|secret)/i;
// key=value pairs inside one argument (mount -o user=a,password=b).
const SECRET_PAIR = /(\b[\w.]*(?:password|passwd|secret)[\w.]*=)([^,\s]*)/gi;

/** argv with every secret replaced by MASK (see SECRET_* above and explicit `secrets`). */
export function maskArgv(args: readonly string[], secrets: readonly string[] = []): string[] {
  return args.map((arg, i) => {
    const prev = args[i - 1];
    const prev2 = args[i - 2];
    if (prev !== undefined && SECRET_FLAG.test(prev)) return MASK;
    // -n <secret key> -v <value>
    if (prev !== undefined && prev2 !== undefined && /^-/.test(prev) && !prev2.startsWith('-') && SECRET_KEY.test(prev2)) {
      return MASK;
    }
    // --value=<v> after a secret key
    if (prev !== undefined && SECRET_KEY.test(prev) && /^--?\w+=/.test(arg)) return arg.replace(/=.*/s, `=${MASK}`);
    return maskText(arg, secrets);
  });
}

/** Free text with explicit secrets and `...password=value` pairs masked. */
export function maskText(text: string, secrets: readonly string[] = []): string {
  let out = text;
  for (const s of secrets) if (s) out = out.split(s).join(MASK);
  return out.replace(SECRET_PAIR, `$1${MASK}`);
}

/** A readable one-line form of a command (for messages only; never executed). */
export function formatCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w./:=@,+%-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

function lastLines(text: string, n: number): string {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .slice(-n)
    .join(' | ');
}
