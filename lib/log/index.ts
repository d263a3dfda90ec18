export { createSMLog, initLog, getLog, log, logVerb, logError, smlogPath, describeError, stringifyForLog } from './smlog.js';
export type { SMLog, SMLogOptions, LogLevel } from './smlog.js';
export { maskSecrets, maskText, isSecretKey, MASK } from './mask.js';
export { formatLines, formatTimestamp, shortHostname } from './line-format.js';
