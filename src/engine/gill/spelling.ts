import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { BundleError } from '../manifest.ts';

/**
 * Word repair for an LM with a closed vocabulary. A model of GILL's size has read misspellings and everyday
 * synonyms in pretraining; a small one that never saw "purlpe", "ALRGE" or "huge" reads them as unrelated pieces.
 * The bundle's lexicon lists the words its LM was trained on, with their counts, and synonyms of words it knows
 * well (huge → big, crimson → red). A word the LM never read becomes its synonym when the lexicon has one; else,
 * when it has four letters or more and is not English either, the most frequent lexicon word of four letters or
 * more one edit away (a letter dropped, doubled or added, two neighbours swapped, one letter replaced). The
 * writer's casing is kept. Anything else, English words without a synonym included, stays as typed.
 */
export class SpellingRepair {
  private readonly memo = new Map<string, string | null>();

  constructor(
    private readonly lexicon: ReadonlyMap<string, number>,
    private readonly english: ReadonlySet<string>,
    private readonly synonyms: ReadonlyMap<string, string> = new Map(),
  ) {}

  repair(text: string): string {
    return text.replace(/[A-Za-z]+/g, (word) => {
      const fixed = this.fix(word.toLowerCase());
      return fixed === null ? word : withCasing(fixed, word);
    });
  }

  private fix(word: string): string | null {
    if (this.lexicon.has(word)) return null;
    const synonym = this.synonyms.get(word);
    if (synonym !== undefined) return synonym;
    if (word.length < 4 || this.english.has(word)) return null;
    const cached = this.memo.get(word);
    if (cached !== undefined) return cached;
    let best: string | null = null;
    let bestCount = 0;
    for (const candidate of oneEditAway(word)) {
      // A typed word of four letters or more is not a typo of a shorter one ("lmao" is not "mao").
      const count = candidate.length >= 4 ? (this.lexicon.get(candidate) ?? 0) : 0;
      if (count > bestCount || (count > 0 && count === bestCount && candidate < best!)) {
        best = candidate;
        bestCount = count;
      }
    }
    if (this.memo.size > 10_000) this.memo.clear();
    this.memo.set(word, best);
    return best;
  }
}

const LETTERS = 'abcdefghijklmnopqrstuvwxyz';

/** Every string one edit from `word`: deletions, swaps of neighbours, replacements, insertions. */
function* oneEditAway(word: string): Generator<string> {
  for (let i = 0; i <= word.length; i++) {
    const head = word.slice(0, i);
    const tail = word.slice(i);
    if (tail) yield head + tail.slice(1);
    if (tail.length > 1) yield head + tail[1] + tail[0] + tail.slice(2);
    for (const c of LETTERS) {
      if (tail && c !== tail[0]) yield head + c + tail.slice(1);
      yield head + c + tail;
    }
  }
}

/** `fixed` cased like `typed`: all capitals, a leading capital, or lower case. */
function withCasing(fixed: string, typed: string): string {
  if (typed === typed.toUpperCase()) return fixed.toUpperCase();
  if (typed[0] === typed[0]!.toUpperCase()) return fixed[0]!.toUpperCase() + fixed.slice(1);
  return fixed;
}

let englishWords: Promise<ReadonlySet<string>> | null = null;

/** The English word list of `an-array-of-english-words` (275,000 words), read once per process. */
function englishWordList(): Promise<ReadonlySet<string>> {
  englishWords ??= (async () => {
    const file = createRequire(import.meta.url).resolve('an-array-of-english-words/index.json');
    return new Set(JSON.parse(await readFile(file, 'utf8')) as string[]);
  })();
  return englishWords;
}

/**
 * The bundle's lexicon file (`{"format": "gill-lexicon/1", "words": {"word": count, …}, "synonyms": {"word":
 * "lexicon word", …}}`, synonyms optional) as a SpellingRepair. `field` names the manifest field in errors.
 */
export async function loadSpellingRepair(file: string, field: string): Promise<SpellingRepair> {
  let json: { format?: unknown; words?: unknown; synonyms?: unknown };
  try {
    json = JSON.parse(await readFile(file, 'utf8'));
    if (json.format !== 'gill-lexicon/1') throw new Error(`format is ${JSON.stringify(json.format)}`);
  } catch (error) {
    throw new BundleError(
      `model bundle: ${field} ${file} is not a gill-lexicon/1 file (${(error as Error).message})`,
    );
  }
  const problem = (what: string) => new BundleError(`model bundle: ${field} ${file}: ${what}`);
  const { words, synonyms = {} } = json;
  if (typeof words !== 'object' || words === null) throw problem('no "words" object');
  const lexicon = new Map<string, number>();
  for (const [word, count] of Object.entries(words)) {
    if (!/^[a-z]+$/.test(word) || !Number.isInteger(count) || (count as number) < 1)
      throw problem(`"${word}" should be a lower-case word with a positive integer count`);
    lexicon.set(word, count as number);
  }
  if (typeof synonyms !== 'object' || synonyms === null) throw problem('"synonyms" should be an object');
  const synonymMap = new Map<string, string>();
  for (const [word, known] of Object.entries(synonyms)) {
    if (!/^[a-z]+$/.test(word) || lexicon.has(word) || typeof known !== 'string' || !lexicon.has(known))
      throw problem(
        `synonym "${word}" should be a lower-case word outside the lexicon naming a lexicon word`,
      );
    synonymMap.set(word, known);
  }
  return new SpellingRepair(lexicon, await englishWordList(), synonymMap);
}
