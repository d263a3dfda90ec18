// Kept here for lib/sr's own imports; the function lives in lib/util, where lib/vhd (below lib/sr) can use it too.
export { installRoot } from '../util/install-root.js';
