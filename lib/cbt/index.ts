export * from './log-format.js';
export * from './bitmap.js';
export * from './log-file.js';
export * from './changed-blocks.js';
export * from './incremental-copy.js';
export * from './log-dir.js';
