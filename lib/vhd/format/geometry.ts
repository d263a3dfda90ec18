/** CHS geometry as the VHD spec (and blktap) computes it: integer division throughout. */
export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

const MAX_CHS_SECTORS = 65535 * 16 * 255;

export function geometryFor(sizeBytes: number): Geometry {
  let sectors = Math.min(Math.ceil(sizeBytes / 512), MAX_CHS_SECTORS);
  let spt: number;
  let heads: number;
  let cth: number;
  if (sectors >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(sectors / spt);
  } else {
    spt = 17;
    cth = Math.floor(sectors / 17);
    heads = Math.floor((cth + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(sectors / 31);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(sectors / 63);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

export function geometrySectors(g: Geometry): number {
  return g.cylinders * g.heads * g.sectorsPerTrack;
}
