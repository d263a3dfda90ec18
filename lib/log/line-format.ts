// The SMlog line layout: `Mon DD HH:MM:SS <host> <ident>: [<pid>] <msg>`.
// The day is zero-padded, as strftime("%b %d ...") gives it (syslog would pad
// with a space); operators' grep patterns and `sm log` depend on this.
import os from 'node:os';

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

const pad2 = (n: number): string => String(n).padStart(2, '0');

/** Local time as `Mon DD HH:MM:SS`. */
export function formatTimestamp(date: Date): string {
  return (
    `${MONTHS[date.getMonth()]} ${pad2(date.getDate())} ` +
    `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`
  );
}

/** The short host name (up to the first dot), as syslog prints it. */
export function shortHostname(): string {
  return os.hostname().split('.')[0] || 'localhost';
}

export interface LinePrefix {
  ident: string;
  host: string;
  pid: number;
}

/**
 * Turns one message into the text of one write: each line of the message gets
 * the full prefix, so `grep` on any line shows where it came from. A single
 * trailing newline does not produce an empty extra line.
 */
export function formatLines(prefix: LinePrefix, message: string, date: Date): string {
  const head = `${formatTimestamp(date)} ${prefix.host} ${prefix.ident}: [${prefix.pid}] `;
  const lines = message.split(/\r?\n|\r/);
  if (lines.length > 1 && lines[lines.length - 1] === '') lines.pop();
  return lines.map((line) => head + line + '\n').join('');
}
