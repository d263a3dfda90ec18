/** Where the server reports connections and protocol errors (the caller sends them to SMlog). */
export interface NbdLogger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export const silentLogger: NbdLogger = {
  info() {},
  warn() {},
  error() {},
};
