import sharp from 'sharp';

/**
 * Reads the attributes of a single-object image of the tiny bundle's shapes world (colour, shape, size,
 * position) from its pixels, without a model, so that the thread evaluation scores images the same way
 * on every run and never with the system under test. The world's constants mirror
 * models/training/gill_tiny/data.py (COLOURS, SIZES, POSITIONS, _polygon, _sprite); colour is read as
 * stages.colour_of reads it there (the palette colour nearest the mean of the clearly non-white pixels),
 * shape and size by the best-overlapping rendered outline, position by where that outline sits.
 */

export const COLOURS: Record<string, readonly [number, number, number]> = {
  red: [220, 35, 35],
  orange: [245, 140, 20],
  yellow: [240, 215, 30],
  green: [40, 165, 60],
  blue: [40, 85, 225],
  purple: [135, 55, 190],
  pink: [245, 125, 200],
  black: [30, 30, 30],
};
export const SHAPES = ['circle', 'square', 'triangle', 'star', 'diamond', 'cross'] as const;
/** Radius in pixels. */
export const SIZES: Record<string, number> = { small: 8, big: 14 };
/** Centre (x, y) of each position. */
export const POSITIONS: Record<string, readonly [number, number]> = {
  left: [17, 32],
  right: [47, 32],
  top: [32, 17],
  bottom: [32, 47],
  middle: [32, 32],
};
export const ATTRIBUTES = ['colour', 'shape', 'size', 'position'] as const;
export type Attribute = (typeof ATTRIBUTES)[number];
export type Attributes = Record<Attribute, string | null>;

const IMAGE_SIZE = 64;
/** A pixel is foreground when some channel is this far below white (stages.colour_of). */
const FOREGROUND_DROP = 60;
/** Subsamples per pixel side when rasterising an outline (data._sprite draws at 8x and box-downsamples). */
const SUPERSAMPLE = 8;

type Point = [number, number];

/** The outline of a shape of radius r centred at (cx, cy), as data._polygon draws it (null: a circle). */
function polygon(shape: string, cx: number, cy: number, r: number): Point[] | null {
  switch (shape) {
    case 'square': {
      const s = r * 0.85;
      return [
        [cx - s, cy - s],
        [cx + s, cy - s],
        [cx + s, cy + s],
        [cx - s, cy + s],
      ];
    }
    case 'triangle':
      return [
        [cx, cy - r],
        [cx + r * 0.95, cy + r * 0.8],
        [cx - r * 0.95, cy + r * 0.8],
      ];
    case 'diamond':
      return [
        [cx, cy - r],
        [cx + r * 0.75, cy],
        [cx, cy + r],
        [cx - r * 0.75, cy],
      ];
    case 'star':
      return Array.from({ length: 10 }, (_, i) => {
        const a = -Math.PI / 2 + (i * Math.PI) / 5;
        const rr = i % 2 === 0 ? r : r * 0.45;
        return [cx + rr * Math.cos(a), cy + rr * Math.sin(a)] as Point;
      });
    case 'cross': {
      const w = r * 0.35;
      return [
        [cx - w, cy - r],
        [cx + w, cy - r],
        [cx + w, cy - w],
        [cx + r, cy - w],
        [cx + r, cy + w],
        [cx + w, cy + w],
        [cx + w, cy + r],
        [cx - w, cy + r],
        [cx - w, cy + w],
        [cx - r, cy + w],
        [cx - r, cy - w],
        [cx - w, cy - w],
      ];
    }
    case 'circle':
      return null;
    default:
      throw new Error(`unknown shape ${shape}`);
  }
}

function inside(points: Point[], x: number, y: number): boolean {
  let hit = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const [xi, yi] = points[i]!;
    const [xj, yj] = points[j]!;
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

interface Template {
  shape: string;
  size: string;
  /** Cells of the (2r+1)² box the shape covers, as [dx, dy] from the box's centre cell. */
  cells: Point[];
  /** How much of each cell it covers, 0..1 (the anti-aliased sprite). */
  coverage: number[];
  /** Mean of the cells: where the foreground's centroid lies relative to the shape's centre. */
  centroid: Point;
}

/** The anti-aliased sprite of each shape and size (data._sprite). */
const TEMPLATES: Template[] = SHAPES.flatMap((shape) =>
  Object.entries(SIZES).map(([size, r]) => {
    const box = 2 * r + 1;
    const c = r + 0.5;
    const outline = polygon(shape, c, c, r);
    const cells: Point[] = [];
    const coverage: number[] = [];
    for (let py = 0; py < box; py++) {
      for (let px = 0; px < box; px++) {
        let covered = 0;
        for (let sy = 0; sy < SUPERSAMPLE; sy++) {
          for (let sx = 0; sx < SUPERSAMPLE; sx++) {
            const x = px + (sx + 0.5) / SUPERSAMPLE;
            const y = py + (sy + 0.5) / SUPERSAMPLE;
            const hit = outline ? inside(outline, x, y) : (x - c) ** 2 + (y - c) ** 2 <= r * r;
            if (hit) covered++;
          }
        }
        if (covered === 0) continue;
        cells.push([px - r, py - r]);
        coverage.push(covered / SUPERSAMPLE ** 2);
      }
    }
    const mass = coverage.reduce((s, c) => s + c, 0);
    const centroid: Point = [
      cells.reduce((s, [x], i) => s + x * coverage[i]!, 0) / mass,
      cells.reduce((s, [, y], i) => s + y * coverage[i]!, 0) / mass,
    ];
    return { shape, size, cells, coverage, centroid };
  }),
);

function nearest<T extends readonly number[]>(table: Record<string, T>, value: T): string {
  let best = '';
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const [name, point] of Object.entries(table)) {
    const distance = point.reduce((s, p, i) => s + (p - value[i]!) ** 2, 0);
    if (distance < bestDistance) {
      bestDistance = distance;
      best = name;
    }
  }
  return best;
}

/**
 * The attributes of the object in a PNG (any size; resized to 64×64); all null for a blank image. Shape,
 * size and position come from the sprite and placement whose coverage best matches the image's (soft
 * intersection over union), where a pixel's coverage is how far it lies from white towards the colour.
 */
export async function classifyImage(png: Uint8Array): Promise<Attributes> {
  const { data } = await sharp(png)
    .flatten({ background: '#ffffff' })
    .resize(IMAGE_SIZE, IMAGE_SIZE, { fit: 'fill' })
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  const pixels = IMAGE_SIZE * IMAGE_SIZE;
  const sum = [0, 0, 0];
  let count = 0;
  for (let i = 0; i < pixels; i++) {
    const rgb = [data[3 * i]!, data[3 * i + 1]!, data[3 * i + 2]!];
    if (255 - Math.min(...rgb) <= FOREGROUND_DROP) continue;
    for (let c = 0; c < 3; c++) sum[c]! += rgb[c]!;
    count++;
  }
  if (count < 8) return { colour: null, shape: null, size: null, position: null };
  const colour = nearest(COLOURS, sum.map((s) => s / count) as unknown as readonly [number, number, number]);

  // Coverage: the pixel's offset from white projected on the colour's offset from white, in 0..1.
  const ink = COLOURS[colour]!.map((c) => 255 - c);
  const inkNorm = ink.reduce((s, v) => s + v * v, 0);
  const cover = new Float32Array(pixels);
  let mass = 0;
  let mx = 0;
  let my = 0;
  for (let i = 0; i < pixels; i++) {
    let dot = 0;
    for (let c = 0; c < 3; c++) dot += (255 - data[3 * i + c]!) * ink[c]!;
    const v = Math.min(1, Math.max(0, dot / inkNorm));
    cover[i] = v;
    mass += v;
    mx += v * (i % IMAGE_SIZE);
    my += v * Math.floor(i / IMAGE_SIZE);
  }
  const cx = mx / mass;
  const cy = my / mass;

  let best = { score: -1, template: TEMPLATES[0]!, x: 0, y: 0 };
  for (const template of TEMPLATES) {
    const baseX = Math.round(cx - template.centroid[0]);
    const baseY = Math.round(cy - template.centroid[1]);
    for (let dy = -2; dy <= 2; dy++) {
      for (let dx = -2; dx <= 2; dx++) {
        const x = baseX + dx;
        const y = baseY + dy;
        let intersection = 0;
        let union = mass;
        for (const [k, [tx, ty]] of template.cells.entries()) {
          const px = x + tx;
          const py = y + ty;
          const t = template.coverage[k]!;
          const f = px >= 0 && py >= 0 && px < IMAGE_SIZE && py < IMAGE_SIZE ? cover[py * IMAGE_SIZE + px]! : 0;
          intersection += Math.min(t, f);
          union += Math.max(t, f) - f;
        }
        const score = intersection / union;
        if (score > best.score) best = { score, template, x, y };
      }
    }
  }
  return {
    colour,
    shape: best.template.shape,
    size: best.template.size,
    position: nearest(POSITIONS, [best.x, best.y] as const),
  };
}
