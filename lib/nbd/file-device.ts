/**
 * A raw image file as a BlockDevice: positional reads and writes, FLUSH as
 * fdatasync. Zeroing is left to the server (it writes zero buffers). Useful in
 * tests and as a plain peer to compare other devices with.
 */
import { constants, open, type FileHandle } from 'node:fs/promises';
import type { BlockDevice } from './block-device.js';
import { hideOperations } from './passthrough-device.js';

export interface FileDeviceOptions {
  readOnly?: boolean;
}

export class FileDevice implements BlockDevice {
  /** fdatasync flushes the file whichever descriptor wrote, so every connection shares one durable state. */
  readonly multiConn = true;

  private constructor(
    readonly path: string,
    readonly size: number,
    private readonly fh: FileHandle,
  ) {}

  /** Opens an existing file; its current length is the device size. */
  static async open(path: string, options: FileDeviceOptions = {}): Promise<FileDevice> {
    const fh = await open(path, options.readOnly ? constants.O_RDONLY : constants.O_RDWR);
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new Error(`${path}: not a regular file`);
      const device = new FileDevice(path, st.size, fh);
      if (options.readOnly) hideOperations(device, ['write', 'flush']);
      return device;
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) {
        // Shrunk underneath us: what is gone reads as zeroes rather than stale buffer bytes.
        buf.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  async write(data: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
