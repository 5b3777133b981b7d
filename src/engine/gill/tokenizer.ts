import { Tokenizer } from '@huggingface/tokenizers';
import { BundleError, type Manifest } from '../manifest.ts';

/**
 * The LM's tokenizer (the bundle's tokenizer.json) with GILL's conventions: BOS is added by the engine,
 * and only before the first text segment of a prompt (docs/gill-method.md §5.9); the [IMG0..r-1] strings are
 * added tokens that must each map to exactly the id the manifest names.
 */
export class GillTokenizer {
  readonly imgIds: readonly number[];
  private readonly imgSet: Set<number>;
  private readonly tokenizer: Tokenizer;

  constructor(
    tokenizerJson: Record<string, unknown>,
    private readonly lm: Manifest['lm'],
  ) {
    try {
      this.tokenizer = new Tokenizer(tokenizerJson, {});
    } catch (error) {
      throw new BundleError(`model bundle: lm.tokenizer cannot be used: ${(error as Error).message}`);
    }
    this.imgIds = lm.imgTokenIds;
    this.imgSet = new Set(lm.imgTokenIds);
    const problems = lm.imgTokenIds.flatMap((id, i) => {
      const got = this.tokenizer.encode(imgTokenString(i), { add_special_tokens: false }).ids;
      return got.length === 1 && got[0] === id
        ? []
        : [`${imgTokenString(i)} encodes to [${got.join(',')}], the manifest says ${id}`];
    });
    if (problems.length) {
      throw new BundleError(`model bundle: lm.tokenizer and lm.imgTokenIds disagree: ${problems.join('; ')}`);
    }
  }

  get addsBos(): boolean {
    return this.lm.addBos;
  }

  get bosId(): number {
    return this.lm.bosId;
  }

  /**
   * Token ids of one text segment. `bos` prepends BOS (the first text segment of a prompt, when the
   * bundle's addBos is set). Text typed by people cannot smuggle in [IMG] tokens: their literal strings
   * are split so they tokenize as ordinary text.
   */
  encodeText(text: string, options: { bos: boolean; fromUser?: boolean }): number[] {
    const safe = options.fromUser === false ? text : plainText(text);
    const ids = safe.length ? this.tokenizer.encode(safe, { add_special_tokens: false }).ids : [];
    return options.bos && this.lm.addBos ? [this.lm.bosId, ...ids] : ids;
  }

  /** The [IMG0..r-1] ids, as appended after a caption. */
  imgBlock(): number[] {
    return [...this.imgIds];
  }

  isImgToken(id: number): boolean {
    return this.imgSet.has(id);
  }

  /** Text of generated ids without special tokens or [IMG] tokens. */
  decode(ids: readonly number[]): string {
    const plain = ids.filter((id) => !this.imgSet.has(id));
    // The library refuses an empty list; a reply can be only an [IMG] block.
    return plain.length ? this.tokenizer.decode(plain, { skip_special_tokens: true }) : '';
  }
}

/** Text typed by people, with literal [IMGn] strings split so they cannot become [IMG] tokens. */
export function plainText(text: string): string {
  return text.replace(/\[IMG(?=\d+\])/g, '[ IMG');
}

export function imgTokenString(i: number): string {
  return `[IMG${i}]`;
}
