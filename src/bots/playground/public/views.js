// @ts-check
// A message as the page shows it: the person's text and images, or the bot's progress line (with Cancel)
// that becomes its reply (text, the retrieve-or-generate decision, images, notes, buttons).

import { h, imageLink, percent, safeUrl, textBlock } from './dom.js';

/** @typedef {import('./api.js').Message} Message */
/** @typedef {import('./api.js').Reply} Reply */

/**
 * What the views need from the rest of the page.
 * @typedef {{
 *   progressOf(jobId: string): import('./api.js').ProgressEvent | undefined,
 *   press(button: HTMLButtonElement, customId: string): void,
 *   openThread(id: string): void,
 * }} ViewContext
 */

/** @param {import('./api.js').Decision} decision */
function decisionView(decision) {
  const generate = decision.choice === 'generate';
  const fill = h('span', { class: 'fill' });
  fill.style.width = percent(decision.pGenerate);
  return h(
    'div',
    { class: `decision ${decision.choice}`, dataset: { choice: decision.choice } },
    h('span', { class: 'decision-label' }, generate ? 'Decided to generate' : 'Decided to retrieve'),
    h('span', { class: 'bar', title: 'generate ← → retrieve' }, fill),
    h(
      'span',
      { class: 'decision-probs' },
      `generate ${percent(decision.pGenerate)} · retrieve ${percent(decision.pRetrieve)}`,
    ),
  );
}

/**
 * @param {import('./api.js').ResultImage} image
 * @param {number} index
 */
function resultImage(image, index) {
  const generated = image.kind === 'generated';
  /** @type {import('./dom.js').Child[]} */
  const caption = [h('span', { class: `kind ${image.kind}` }, generated ? 'Generated' : 'Retrieved')];
  if (generated) {
    if (image.seed !== undefined) caption.push(` seed ${image.seed}`);
  } else {
    if (image.title) caption.push(' ', h('span', { class: 'title' }, `“${image.title}”`));
    caption.push(` · similarity ${image.score.toFixed(2)}`);
    const source = safeUrl(image.sourceUrl);
    if (source) {
      caption.push(
        ' · ',
        h('a', { href: source, target: '_blank', rel: 'noopener noreferrer', class: 'source' }, 'source ↗'),
      );
    }
  }
  const alt = generated
    ? `Generated image ${index + 1}`
    : `Retrieved image ${index + 1}${image.title ? `: ${image.title}` : ''}`;
  return h(
    'figure',
    { class: `result ${image.kind}`, dataset: { kind: image.kind } },
    imageLink(image.hash, alt, 'result-image'),
    h('figcaption', {}, ...caption),
  );
}

/**
 * A button that sends its persistent id (gill:<action>:<jobId>, as on Discord and Slack) to the server,
 * which checks who presses it.
 * @param {ViewContext} ctx
 * @param {string} customId
 * @param {string} label
 * @param {string} [cls]
 */
function pressButton(ctx, customId, label, cls) {
  return h(
    'button',
    {
      type: 'button',
      class: cls,
      dataset: { customId },
      onclick: (/** @type {MouseEvent} */ e) =>
        ctx.press(/** @type {HTMLButtonElement} */ (e.currentTarget), customId),
    },
    label,
  );
}

/**
 * @param {Message} message
 * @param {ViewContext} ctx
 */
export function progressView(message, ctx) {
  const jobId = /** @type {string} */ (message.jobId);
  const event = ctx.progressOf(jobId);
  const box = h('div', { class: 'progress', dataset: { stage: event?.stage ?? 'queued' } });
  box.append(
    h('span', { class: 'spinner', 'aria-hidden': 'true' }),
    h('span', { class: 'progress-text' }, event?.text ?? message.body),
  );
  if (event?.steps) box.append(h('progress', { max: event.steps, value: event.step }));
  if (event?.preview)
    box.append(h('img', { class: 'preview', src: event.preview, alt: 'The image as it forms' }));
  box.append(pressButton(ctx, `gill:cancel:${jobId}`, 'Cancel', 'cancel'));
  return box;
}

/**
 * @param {Reply} reply
 * @param {ViewContext} ctx
 */
function replyView(reply, ctx) {
  const parts = [];
  if (reply.header) parts.push(h('div', { class: 'header' }, reply.header));
  parts.push(
    textBlock(reply.text, reply.failed ? 'text failed' : reply.cancelled ? 'text cancelled' : 'text'),
  );
  if (reply.decision) parts.push(decisionView(reply.decision));
  if (reply.images.length) parts.push(h('div', { class: 'results' }, reply.images.map(resultImage)));
  if (reply.notes.length)
    parts.push(
      h(
        'ul',
        { class: 'notes' },
        reply.notes.map((note) => h('li', {}, note)),
      ),
    );
  if (reply.buttons.length) {
    parts.push(
      h(
        'div',
        { class: 'buttons' },
        reply.buttons.map((button) => pressButton(ctx, button.id, button.label)),
      ),
    );
  }
  return parts;
}

/**
 * @param {Message} message
 * @param {'channel' | 'thread'} where
 * @param {ViewContext} ctx
 */
export function messageView(message, where, ctx) {
  const bot = message.role === 'assistant';
  const time = new Date(message.createdAt);
  const body = [];
  if (bot && message.jobId && !message.reply) body.push(progressView(message, ctx));
  else if (bot && message.reply) body.push(...replyView(message.reply, ctx));
  else body.push(textBlock(message.body));
  if (message.attachments?.length) {
    body.push(
      h(
        'div',
        { class: 'attachments' },
        message.attachments.map((a) => imageLink(a.hash, a.name, 'attachment')),
      ),
    );
  }
  if (where === 'channel') {
    const count = message.replyCount ?? 0;
    body.push(
      h(
        'button',
        { type: 'button', class: 'replies', onclick: () => ctx.openThread(message.id) },
        count ? `${count} repl${count === 1 ? 'y' : 'ies'}` : 'Reply in thread',
      ),
    );
  }
  return h(
    'article',
    {
      class: `msg ${bot ? 'bot' : 'user'}${message.reply?.failed ? ' failed' : ''}${message.reply?.cancelled ? ' cancelled' : ''}${message.jobId && !message.reply ? ' pending' : ''}`,
      id: `${where === 'channel' ? 'c' : 't'}${message.id}`,
      dataset: { id: message.id, jobId: message.jobId ?? '', role: message.role },
    },
    h(
      'div',
      { class: 'avatar', 'aria-hidden': 'true' },
      bot ? 'G' : (message.authorName[0] ?? '?').toUpperCase(),
    ),
    h(
      'div',
      { class: 'content' },
      h(
        'div',
        { class: 'meta' },
        h('span', { class: 'author' }, message.authorName),
        bot ? h('span', { class: 'bot-badge' }, 'BOT') : null,
        h(
          'time',
          { datetime: time.toISOString() },
          time.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }),
        ),
      ),
      ...body,
    ),
  );
}
