import type { JobRecord, Store } from '../../store/types.ts';
import { BUTTON_LABELS, buttonId, buttonsFor } from '../core/buttons.ts';
import { jobNotes, type RenderStyle, renderReply } from '../core/render.ts';
import type { ReplyContent, ReplyImage } from './messages.ts';

/**
 * A finished job as the playground shows it: the model's text, the decision's probabilities, each image
 * marked generated or retrieved (with the gallery's name for it and a link to its source), the notes and
 * the buttons. The page lays these out itself, so nothing here is markup.
 */

/** The page has no message length limit of its own; failures still go through the shared wording. */
const PLAYGROUND_STYLE: RenderStyle = { maxChars: 100_000, link: (text, url) => `${text} (${url})` };

/** A header line saved with the job's reply target (who pressed which button). */
export function headerOf(job: JobRecord): string | undefined {
  const header = job.replyTarget.data.header;
  return typeof header === 'string' ? header : undefined;
}

export async function replyContent(job: JobRecord, store: Store): Promise<ReplyContent> {
  const header = headerOf(job);
  const buttons = buttonsFor(job).map((action) => ({
    id: buttonId(action, job.id),
    label: BUTTON_LABELS[action],
  }));
  const result = job.result;
  if (job.status !== 'completed' || !result) {
    const rendered = renderReply(job, PLAYGROUND_STYLE);
    return {
      header,
      text: rendered.chunks.join('\n'),
      failed: true,
      decision: null,
      images: [],
      notes: [],
      buttons,
    };
  }
  const images: ReplyImage[] = [];
  for (const image of result.images) {
    const shown: ReplyImage = {
      hash: image.hash,
      mime: image.mime,
      width: image.width,
      height: image.height,
      kind: image.kind,
      score: image.score,
    };
    if (image.kind === 'generated' && result.seed !== undefined) shown.seed = result.seed;
    if (image.source) {
      const record = await store.images.get(image.source.imageId);
      shown.title = record?.title ?? null;
      shown.sourceUrl = image.source.permalink;
    }
    images.push(shown);
  }
  const notes = [...jobNotes(job), ...result.notes];
  if (job.payload.kind === 'find' && images.length === 0 && !notes.length) {
    notes.push('No matching images in this community’s index.');
  }
  return {
    header,
    text: result.text.trim(),
    failed: false,
    decision: result.decision,
    images,
    notes,
    buttons,
  };
}
