export { installRoot } from '../util/install-root.js';
