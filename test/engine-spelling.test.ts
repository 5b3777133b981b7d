import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dialoguePieces } from '../src/engine/gill/prompt.ts';
import { loadSpellingRepair, SpellingRepair } from '../src/engine/gill/spelling.ts';
import { BundleError } from '../src/engine/manifest.ts';

const lexicon = new Map([
  ['purple', 40],
  ['large', 30],
  ['change', 5],
  ['could', 20],
  ['cloud', 2],
  ['circle', 9],
  ['this', 50],
]);
const english = new Set([
  'purple',
  'large',
  'change',
  'could',
  'cloud',
  'circle',
  'this',
  'huge',
  'mote',
  'more',
]);
const spelling = new SpellingRepair(
  lexicon,
  english,
  new Map([
    ['huge', 'large'],
    ['wee', 'large'],
  ]),
);

describe('typo repair against the bundle lexicon', () => {
  // [what a person typed, what the model reads]
  const cases: Record<string, [string, string][]> = {
    'repairs a word one edit from a lexicon word: swapped, dropped, doubled, added or replaced letters': [
      ['a purlpe circle', 'a purple circle'],
      ['a lage circel', 'a large circle'],
      ['thhis', 'this'],
      ['vhange it', 'change it'],
    ],
    'reads a word the LM never saw as its synonym from the lexicon, short ones and English ones included': [
      ['a HUGE circle', 'a LARGE circle'],
      ['Huge', 'Large'],
      ['wee', 'large'],
    ],
    'keeps the casing the person typed': [
      ['A ALRGE PURLPE CIRCLE', 'A LARGE PURPLE CIRCLE'],
      ['Vhange it', 'Change it'],
    ],
    // Both are one edit from "could" (20) and from "cloud" (2).
    'picks the most frequent lexicon word when several are one edit away': [
      ['coud', 'could'],
      ['clould', 'could'],
    ],
    'leaves English words without a synonym, short words, and words with no lexicon word one edit away as typed':
      [
        ['a mote of dust', 'a mote of dust'],
        ['redd lol', 'redd lol'],
        ['xylophonist zzzz', 'xylophonist zzzz'],
        ['purple, :) 42!', 'purple, :) 42!'],
      ],
  };
  for (const [name, pairs] of Object.entries(cases)) {
    it(name, () => {
      expect(pairs.map(([typed]) => spelling.repair(typed))).toEqual(pairs.map(([, read]) => read));
    });
  }

  it('repairs what people wrote, not the model’s own replies', () => {
    const pieces = dialoguePieces(
      [
        { role: 'user', content: { type: 'text', text: 'draw a purlpe circle' } },
        { role: 'assistant', content: { type: 'text', text: 'here is a purlpe circle.' } },
      ],
      'Q: {text}\nA:',
      (text) => spelling.repair(text),
    );
    expect(pieces).toEqual([
      { type: 'text', text: 'Q: draw a purple circle\nA: here is a purlpe circle.\n' },
    ]);
  });
});

describe('the lexicon file', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gill-lexicon-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const write = async (name: string, content: string) => {
    const file = path.join(dir, name);
    await writeFile(file, content);
    return file;
  };

  it('loads the committed bundle’s lexicon and repairs with it', async () => {
    const repair = await loadSpellingRepair('models/gill-tiny/lexicon.json', 'lm.lexicon');
    expect(repair.repair('Could you draw a LAGRE purlpe sttar?')).toBe('Could you draw a LARGE purple star?');
    expect(repair.repair('a gigantic crimson circle, then a teeny one')).toBe(
      'a big red circle, then a small one',
    );
  });

  it('refuses a file that is not a gill-lexicon/1, naming the field and the problem', async () => {
    const cases: [string, RegExp][] = [
      ['{"words": {}}', /lm\.lexicon .* is not a gill-lexicon\/1 file \(format is undefined\)/],
      ['not json', /lm\.lexicon .* is not a gill-lexicon\/1 file/],
      ['{"format": "gill-lexicon/1"}', /: no "words" object/],
      ['{"format": "gill-lexicon/1", "words": {"Big": 3}}', /"Big" should be a lower-case word/],
      [
        '{"format": "gill-lexicon/1", "words": {"big": 0.5}}',
        /"big" should be a lower-case word with a positive integer count/,
      ],
      [
        '{"format": "gill-lexicon/1", "words": {"big": 5}, "synonyms": {"huge": "giant"}}',
        /synonym "huge" should be .* naming a lexicon word/,
      ],
      [
        '{"format": "gill-lexicon/1", "words": {"big": 5}, "synonyms": {"big": "big"}}',
        /synonym "big" should be a lower-case word outside the lexicon/,
      ],
      [
        '{"format": "gill-lexicon/1", "words": {"big": 5}, "synonyms": "big"}',
        /"synonyms" should be an object/,
      ],
    ];
    for (const [i, [content, message]] of cases.entries()) {
      const file = await write(`bad-${i}.json`, content);
      const error = await loadSpellingRepair(file, 'lm.lexicon').catch((e: unknown) => e);
      expect(error).toBeInstanceOf(BundleError);
      expect((error as Error).message).toMatch(message);
    }
  });
});
