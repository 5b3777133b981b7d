import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { describe, expect, it } from 'vitest';
import { IN_CI } from './support/services.ts';

/**
 * The PyTorch side of the tiny bundle below the GILL stage: Python unit tests of the data, tokenizer and
 * backbone modules, and parity of the Python reference tokenizer with @huggingface/tokenizers (the library
 * the engine loads tokenizer.json with). Needs Debian's python3 with torch; outside CI a missing torch skips
 * loudly.
 */

const PYTHON = '/usr/bin/python3';
const TRAINING = path.resolve('models/training');

function torchMissing(): string | null {
  const probe = spawnSync(PYTHON, ['-c', 'import torch, numpy, PIL'], { encoding: 'utf8' });
  if (probe.error) return probe.error.message;
  return probe.status === 0 ? null : probe.stderr.trim().split('\n').at(-1) || `exit ${probe.status}`;
}

const missing = torchMissing();
if (missing) {
  if (IN_CI) throw new Error(`PyTorch (${PYTHON}) is required when CI=true but unavailable: ${missing}`);
  console.warn(`\n*** SKIPPING training backbone tests: PyTorch unavailable at ${PYTHON} (${missing}) ***\n`);
}

// A tokenizer trained on the real corpus generators (shapes captions, dialogues, stories, emoji names), and
// the Python encodings of those texts plus edge cases the pre-tokenizer must split the same way in both.
const CASES_SCRIPT = `
import json, random, sys
sys.path.insert(0, ${JSON.stringify(TRAINING)})
from pathlib import Path
from gill_tiny import data
from gill_tiny.tokenizer import Tokenizer, train_bpe, IMG_TOKENS
rng = random.Random(5)
emoji = data.load_emoji(Path(${JSON.stringify(path.resolve('node_modules/emoji-datasource-google'))}), limit=300)
docs = data.lm_documents(rng, 400, "train", emoji.names)
tok = Tokenizer(train_bpe(docs + emoji.names, 900))
texts = docs[:150] + emoji.names[:100] + [
    "", " ", "  two  spaces\\n\\n", "Tab\\there\\r\\nCRLF", "don't stop, 42 cats!", "Ünïcödé ßtraße 日本語 👩‍👩‍👧",
    "a\\u00a0b\\u2028c\\ufeffd", "<s>hi</s><|image|>", "[IMG7][IMG0]x", "a red star" + "".join(IMG_TOKENS),
    "Q: now make it BLUE!!\\nA:", "piñata 🎉🎉", "x" * 300,
]
print(json.dumps({
    "lm": tok.to_hf_json(), "text": tok.to_hf_json(for_text_encoder=True), "textMaxLength": 32, "padId": tok.pad_id,
    "cases": [{"text": t, "ids": tok.encode(t, add_bos=True), "decoded": tok.decode(tok.encode(t)),
               "textIds": tok.encode_text_condition(t, 32)} for t in texts],
}))
`;

interface Cases {
  lm: Record<string, unknown>;
  text: Record<string, unknown>;
  textMaxLength: number;
  padId: number;
  cases: { text: string; ids: number[]; decoded: string; textIds: number[] }[];
}

describe.skipIf(missing !== null)('training backbones (PyTorch)', () => {
  it('passes the Python unit tests of data, tokenizer, LM, dual encoder, diffusion and checkpoints', () => {
    const res = spawnSync(PYTHON, ['-m', 'unittest', 'discover', '-s', path.join(TRAINING, 'tests')], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(res.status, `${res.stdout}\n${res.stderr}`).toBe(0);
    expect(res.stderr).toMatch(/Ran \d+ tests/);
  }, 130_000);

  it('encodes and decodes exactly like @huggingface/tokenizers', () => {
    const res = spawnSync(PYTHON, ['-c', CASES_SCRIPT], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    expect(res.status, res.stderr).toBe(0);
    const spec = JSON.parse(res.stdout) as Cases;
    const lm = new Tokenizer(spec.lm, {});
    const text = new Tokenizer(spec.text, {});
    expect(spec.cases.length).toBeGreaterThan(250);
    for (const c of spec.cases) {
      expect(lm.encode(c.text, { add_special_tokens: true }).ids, c.text).toEqual(c.ids);
      if (c.ids.length > 1)
        expect(lm.decode(c.ids.slice(1), { clean_up_tokenization_spaces: false }), c.text).toBe(c.decoded);
      // The engine's text-encoder input: no special tokens, right-truncated and padded with padId.
      const ids = text.encode(c.text, { add_special_tokens: false }).ids.slice(0, spec.textMaxLength);
      const padded = [...ids, ...Array(spec.textMaxLength - ids.length).fill(spec.padId)];
      expect(padded, c.text).toEqual(c.textIds);
    }
  }, 60_000);
});
