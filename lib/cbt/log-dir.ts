/**
 * Logs addressed by file, as an operator names them (`sm-vhd cbt-*`): the
 * logs of one chain sit in one folder as `<uuid>.cbtlog`, so a log's links
 * name the files of its neighbours.
 */
import { basename, dirname, join } from 'node:path';
import { changedBetween } from './changed-blocks.js';
import { readLog } from './log-file.js';
import { CbtLogError } from './log-format.js';

const LOG_NAME = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.cbtlog$/;

export function uuidOfLogFile(path: string): string {
  const m = LOG_NAME.exec(basename(path));
  if (!m) throw new CbtLogError(`${path}: not a log file name (<uuid>.cbtlog)`);
  return m[1];
}

/** The changed blocks between the logs at `fromPath` and `toPath` (same folder), following the links. */
export async function changedBetweenFiles(fromPath: string, toPath: string) {
  const dir = dirname(fromPath);
  if (dirname(toPath) !== dir) throw new CbtLogError(`${fromPath} and ${toPath} are not in one folder: the links name files beside each other`);
  return changedBetween((u) => readLog(join(dir, `${u}.cbtlog`)), uuidOfLogFile(fromPath), uuidOfLogFile(toPath));
}
