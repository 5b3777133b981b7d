import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { BundleError, type GraphEntry, graphFiles, type Manifest, type ManifestV2 } from './manifest.ts';

/**
 * The files of a bundle: what they take on disk and in memory, and for a `gill-bundle/2` their check against
 * the manifest: every graph and external data file must have the listed size (always checked, it costs a
 * stat) and sha256 (read in full, streamed; minutes for a 13 GB LM, so GILL_SKIP_CHECKSUMS=1 skips it once a
 * copy is known good).
 */

export interface ListedFile {
  /** File name inside the bundle folder. */
  file: string;
  bytes: number;
  sha256: string;
  /** What the file is, for messages: the graph itself or "external data of <graph>". */
  role: string;
}

/** Every file `graphs` lists: each graph, then its external data file if it has one. */
export function listedFiles(graphs: Record<string, GraphEntry>): ListedFile[] {
  return Object.entries(graphs).flatMap(([graph, entry]) => [
    { file: graph, bytes: entry.bytes, sha256: entry.sha256, role: 'graph' },
    ...entry.externalData.map((data) => ({ ...data, role: `external data of ${graph}` })),
  ]);
}

export interface VerifyReport {
  files: number;
  bytes: number;
  /** Wall time of hashing, or null when checksums were skipped. */
  hashMs: number | null;
}

async function sha256Of(full: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(full, { highWaterMark: 4 << 20 }), hash);
  return hash.digest('hex');
}

export async function verifyBundleFiles(
  dir: string,
  manifest: ManifestV2,
  options: { checksums: boolean },
): Promise<VerifyReport> {
  const files = listedFiles(manifest.graphs);
  for (const f of files) {
    const full = path.join(dir, f.file);
    const info = await stat(full).catch(() => null);
    if (!info?.isFile())
      throw new BundleError(
        `model bundle: ${f.file} (${f.role}, listed in graphs) does not exist at ${full}`,
      );
    if (info.size !== f.bytes) {
      throw new BundleError(
        `model bundle: ${f.file} (${f.role}) is ${info.size} bytes, the manifest says ${f.bytes}: the file is truncated or not the one converted`,
      );
    }
  }
  const bytes = files.reduce((n, f) => n + f.bytes, 0);
  if (!options.checksums) return { files: files.length, bytes, hashMs: null };
  const started = performance.now();
  for (const f of files) {
    const actual = await sha256Of(path.join(dir, f.file));
    if (actual !== f.sha256) {
      throw new BundleError(
        `model bundle: ${f.file} (${f.role}) has sha256 ${actual}, the manifest says ${f.sha256}: the file is damaged or not the one converted (GILL_SKIP_CHECKSUMS=1 skips this check)`,
      );
    }
  }
  return { files: files.length, bytes, hashMs: performance.now() - started };
}

export interface BundleFootprint {
  /** Each graph file with its dtype and its bytes on disk, external data included. */
  graphs: { file: string; dtype: string; bytes: number }[];
  /** Bytes of the graphs and their external data: about what the weights take in memory. */
  weightBytes: number;
  /** Bytes of every file the manifest names (graphs, external data, tokenizers). */
  diskBytes: number;
}

/** What a bundle takes on disk and, roughly, in memory; v1 bundles' graphs are float32 (models/README.md). */
export async function bundleFootprint(dir: string, manifest: Manifest): Promise<BundleFootprint> {
  const size = async (rel: string) => (await stat(path.join(dir, rel)).catch(() => null))?.size ?? 0;
  const graphs = await Promise.all(
    Object.values(graphFiles(manifest)).map(async (file) => {
      const entry = manifest.format === 'gill-bundle/2' ? manifest.graphs[file] : undefined;
      const external = entry ? await Promise.all(entry.externalData.map((d) => size(d.file))) : [];
      const bytes = (await size(file)) + external.reduce((a, b) => a + b, 0);
      return { file, dtype: entry?.dtype ?? 'float32', bytes };
    }),
  );
  const weightBytes = graphs.reduce((n, g) => n + g.bytes, 0);
  const tokenizers = (await size(manifest.lm.tokenizer)) + (await size(manifest.diffusion.textTokenizer));
  return { graphs, weightBytes, diskBytes: weightBytes + tokenizers };
}
