export * from './log-format.js';
export * from './bitmap.js';
export * from './log-file.js';
export * from './changed-blocks.js';
