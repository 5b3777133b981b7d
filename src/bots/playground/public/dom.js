// @ts-check
// Building the page's elements. User and model text is only ever put into the page as text nodes, never
// as markup.

/**
 * The element with this id; the page (index.html) has every id the script asks for.
 * @param {string} id
 * @returns {HTMLElement}
 */
export const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** @typedef {Node | string | number | null | undefined | false} Child */

/**
 * Creates an element; attributes are set as properties or attributes, children strings become text.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Child | Child[])} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== 'string') /** @type {any} */ (el)[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** @param {number} bytes */
export function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(1).replace(/\.0$/, '')} MiB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KiB`;
  return `${bytes} bytes`;
}

/**
 * Only web links (and this server's own paths) become links; anything else is shown as text.
 * @param {string | null | undefined} raw
 */
export function safeUrl(raw) {
  if (!raw) return null;
  try {
    const url = new URL(raw, location.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

/** @param {number} p */
export const percent = (p) => `${Math.round(p * 100)}%`;

/**
 * A line of text with @mentions marked; `_whole line_` is shown in italics (the bot's notes).
 * @param {string} line
 */
export function textLine(line) {
  const italic = /^_(.+)_$/.exec(line);
  const content = italic ? /** @type {string} */ (italic[1]) : line;
  /** @type {Child[]} */
  const parts = [];
  let last = 0;
  for (const match of content.matchAll(/@gill\b/gi)) {
    const index = match.index ?? 0;
    parts.push(content.slice(last, index), h('span', { class: 'mention' }, match[0]));
    last = index + match[0].length;
  }
  parts.push(content.slice(last));
  return h(italic ? 'em' : 'span', { class: 'line' }, ...parts);
}

/**
 * @param {string | undefined} text
 * @param {string} [cls]
 */
export function textBlock(text, cls = 'text') {
  if (!text) return null;
  return h('div', { class: cls }, ...text.split('\n').map((line) => h('div', {}, textLine(line) || ' ')));
}

/**
 * @param {string} hash
 * @param {string} alt
 * @param {string} cls
 */
export function imageLink(hash, alt, cls) {
  const src = `/blobs/${hash}`;
  return h(
    'a',
    { href: src, target: '_blank', rel: 'noopener' },
    h('img', { src, alt, class: cls, loading: 'lazy' }),
  );
}
