// Fetches emoji art in other styles than the Google art the stand-ins were trained on, into a folder outside the
// repository's tracked files (default models/training/runs/art, git-ignored):
//
//   node models/training/fetch_emoji_art.mjs [DIR]
//
//   DIR/openmoji/64/<HEXCODE>.png   OpenMoji 17.0.0 colour art (CC BY-SA 4.0), rasterised from its SVGs to 64 px;
//                                   a training style for the retrieval refinement (train.py --art-dir DIR)
//   DIR/twitter/emoji.json + img/twitter/64/*.png
//                                   emoji-datasource-twitter 16.0.0 (twemoji, CC BY 4.0): EVALUATION ONLY, the
//                                   held-out art style of the cross-style retrieval row in EVAL.md; the training
//                                   code refuses any path to it (gill_tiny/data.py, assert_not_held_out_style)
//
// The packages come from the npm registry with `npm pack` (never added to package.json); the SVGs are rasterised
// with sharp (already a dependency). Re-running skips what is already there.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dir = resolve(process.argv[2] ?? join(ROOT, 'models/training/runs/art'));
const PACKAGES = { openmoji: 'openmoji@17.0.0', twitter: 'emoji-datasource-twitter@16.0.0' };

mkdirSync(dir, { recursive: true });
for (const [name, spec] of Object.entries(PACKAGES)) {
  const target = join(dir, name);
  if (existsSync(join(target, 'package.json'))) continue;
  const tgz = execFileSync('npm', ['pack', spec, '--silent'], { cwd: dir, encoding: 'utf8' }).trim().split('\n').pop();
  mkdirSync(target, { recursive: true });
  execFileSync('tar', ['xzf', join(dir, tgz), '-C', target, '--strip-components=1']);
  console.log(`${spec} -> ${target}`);
}

const svgDir = join(dir, 'openmoji', 'color', 'svg');
const pngDir = join(dir, 'openmoji', '64');
mkdirSync(pngDir, { recursive: true });
const todo = readdirSync(svgDir).filter((f) => f.endsWith('.svg') && !existsSync(join(pngDir, f.replace(/\.svg$/, '.png'))));
for (let i = 0; i < todo.length; i += 16) {
  await Promise.all(
    todo.slice(i, i + 16).map((f) =>
      sharp(join(svgDir, f), { density: 72 })
        .resize(64, 64)
        .png()
        .toFile(join(pngDir, f.replace(/\.svg$/, '.png'))),
    ),
  );
}
console.log(`openmoji: ${readdirSync(pngDir).length} PNGs in ${pngDir}`);
