/**
 * An SR opened over its storage backend: metadata access, the VHD trees, and
 * validated lookups. The verbs, the GC and the operator CLI all work through it.
 */
import { imageInfo, readImageRemains, readImageSummary, VhdError, type ImageInfo, type ImageSummary } from '../vhd/index.js';
import { SMError } from '../errors/sm-error.js';
import { mapLimit } from '../util/map-limit.js';
import type { StorageBackend } from './backend.js';
import { isUuid, requireUuid } from './ids.js';
import type { SrRecord, VdiRecord } from './metadata.js';
import { SrRecords } from './records.js';

/** One image as the tree sees it. */
export interface ImageNode {
  uuid: string;
  virtualSize: number;
  physicalSize: number;
  hidden: boolean;
  /** uuid of the parent image (by its file name), undefined for a base. */
  parent?: string;
  children: string[];
  /**
   * Present but unreadable at the moment (EIO, a torn footer, truncation, a
   * parent reference that resolves to nothing): why. Sizes are then 0, and
   * `parent` is what its intact header names, if anything does.
   */
  unreadable?: string;
  /** Unreadable, and nothing says who its parent is: it may be any image's child. */
  parentUnknown?: boolean;
}

export class Repository {
  constructor(readonly backend: StorageBackend) {}

  get uuid(): string {
    return this.backend.srUuid;
  }

  /** The SR's metadata records (records.ts): one per VDI, read and written one by one. */
  get records(): SrRecords {
    return (this.recordsOnce ??= new SrRecords(this.backend.recordMedium));
  }

  private recordsOnce: SrRecords | undefined;

  /** The SR record, or MetadataError (181). */
  async srRecord(): Promise<SrRecord> {
    let sr: SrRecord | undefined;
    try {
      sr = await this.records.readSr();
    } catch (err) {
      throw new SMError('MetadataError', `SR metadata unreadable: ${(err as Error).message}`);
    }
    if (!sr) throw new SMError('MetadataError', `no SR metadata for ${this.uuid}`);
    return sr;
  }

  /** One VDI's record (undefined: none); a damaged one is MetadataError (181) for this VDI only. */
  vdiRecord(uuid: string): Promise<VdiRecord | undefined> {
    return this.records.getVdi(uuid);
  }

  imagePath(uuid: string): string {
    return this.backend.imagePath(uuid);
  }

  /** A VDI uuid from a request: well-formed and present, or VDIMissing (144). */
  async requireVdi(value: unknown): Promise<string> {
    const uuid = requireUuid(value, 'vdi_uuid', 'VDIUnavailable');
    if (!(await this.backend.hasImage(uuid))) throw new SMError('VDIMissing', uuid);
    return uuid;
  }

  /** As requireVdi, also accepting a VDI whose data was destroyed (cbt_metadata: only its changed-block log is left). */
  async requireVdiOrLog(value: unknown): Promise<string> {
    const uuid = requireUuid(value, 'vdi_uuid', 'VDIUnavailable');
    if (await this.backend.hasImage(uuid)) return uuid;
    if (await this.backend.cbtLogs?.has(uuid)) return uuid;
    throw new SMError('VDIMissing', uuid);
  }

  async info(uuid: string): Promise<ImageInfo> {
    return this.backend.withImagesActive([uuid], () => imageInfo(this.imagePath(uuid)));
  }

  /**
   * Reads every image and links parents to children. An image that is there but
   * cannot be read now stays in the tree, marked unreadable, in the place its
   * intact header gives it (see unreadable.ts for what that protects); `broken`
   * lists those. An image gone between listing and reading is simply absent.
   */
  async tree(): Promise<{ nodes: Map<string, ImageNode>; broken: Map<string, string> }> {
    const nodes = new Map<string, ImageNode>();
    const uuids = await this.backend.listImages();
    // Every image is read (LVM: all inactive LVs activated in one command, and the unheld ones deactivated in one after).
    const infos = await this.backend.withImagesActive(uuids, () =>
      mapLimit(uuids, 64, (u) =>
        readImageSummary(this.imagePath(u)).then(
          (i) => ({ u, i }),
          (err: Error) => ({ u, err }),
        ),
      ),
    );
    const byFooterUuid = new Map<string, string>();
    for (const r of infos) if ('i' in r) byFooterUuid.set(r.i.uuid, r.u);
    const unreadable = infos.filter((r): r is { u: string; err: Error } => 'err' in r);
    for (const r of infos) {
      if (!('i' in r)) continue;
      const node: ImageNode = { uuid: r.u, virtualSize: r.i.virtualSize, physicalSize: r.i.physicalSize, hidden: r.i.hidden, children: [] };
      if (r.i.parentName !== undefined) {
        node.parent = uuidOfImageName(r.i.parentName) ?? (r.i.parentUuid && byFooterUuid.get(r.i.parentUuid));
        if (node.parent === undefined) {
          node.unreadable = `parent "${r.i.parentName}" does not name an image of this SR`;
          node.parentUnknown = true;
        }
      }
      nodes.set(r.u, node);
    }
    await this.backend.withImagesActive(
      unreadable.map((r) => r.u),
      () =>
        mapLimit(unreadable, 16, async ({ u, err }) => {
          if (err instanceof VhdError && err.kind === 'not-found' && !(await this.backend.hasImage(u))) return; // gone meanwhile
          const remains = await readImageRemains(this.imagePath(u));
          const parent = remains?.parentName === undefined ? undefined : uuidOfImageName(remains.parentName);
          nodes.set(u, {
            uuid: u,
            virtualSize: 0,
            physicalSize: 0,
            hidden: remains?.hidden ?? false,
            children: [],
            unreadable: err.message,
            ...(parent ? { parent } : {}),
            ...(remains && (!remains.differencing || parent) ? {} : { parentUnknown: true }),
          });
        }),
    );
    for (const n of nodes.values()) if (n.parent) nodes.get(n.parent)?.children.push(n.uuid);
    for (const n of nodes.values()) n.children.sort();
    const broken = new Map([...nodes.values()].filter((n) => n.unreadable !== undefined).map((n) => [n.uuid, n.unreadable!]));
    return { nodes, broken };
  }

  /** The images from `uuid` down to its base, reading only that chain (LVM: activating each as it is reached). */
  async chainOf(uuid: string): Promise<string[]> {
    const chain: string[] = [];
    return this.backend.withImagesActive([], async () => {
      for (let u: string | undefined = uuid; u && chain.length <= 1024; ) {
        chain.push(u);
        const image: string = u;
        const s: ImageSummary = await this.backend.withImagesActive([image], () => readImageSummary(this.imagePath(image)));
        u = s.parentName === undefined ? undefined : uuidOfImageName(s.parentName);
      }
      return chain;
    });
  }

  /** Number of images from `uuid` down to its base, reading only that chain. */
  async chainDepthOf(uuid: string): Promise<number> {
    return (await this.chainOf(uuid)).length;
  }

  /** Number of images from `uuid` down to its base. */
  chainDepth(nodes: Map<string, ImageNode>, uuid: string): number {
    let depth = 0;
    for (let n = nodes.get(uuid); n && depth <= nodes.size; n = n.parent ? nodes.get(n.parent) : undefined) depth++;
    return depth;
  }
}

/** `<uuid>.vhd` or `VHD-<uuid>` -> uuid. */
export function uuidOfImageName(name: string): string | undefined {
  const m = /^(?:VHD-)?([0-9a-f-]{36})(?:\.vhd)?$/i.exec(name);
  return m && isUuid(m[1]) ? m[1].toLowerCase() : undefined;
}
