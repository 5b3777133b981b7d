// @ts-check
// The message box of the channel and of the thread: text, images attached with +, pasted or dropped, and
// the post to the server.

import { api, errorText, HEADER, randomId } from './api.js';
import { formatBytes, h } from './dom.js';

/**
 * @typedef {{ showError(text: string): void, showNotice(text: string): void, focus(): void }} Composer
 * @typedef {{
 *   placeholder: string,
 *   threadId(): string | null,
 *   limits(): import('./api.js').Limits,
 *   user(): import('./api.js').User,
 *   sent(result: import('./api.js').PostResult, thread: string | null, composer: Composer): Promise<void>,
 * }} ComposerOptions
 */

/**
 * @param {HTMLElement} slot
 * @param {ComposerOptions} options
 * @returns {Composer}
 */
export function createComposer(slot, options) {
  const { placeholder } = options;
  /** @type {File[]} */
  const files = [];
  const chips = h('div', { class: 'chips' });
  const error = h('div', { class: 'error', role: 'alert', hidden: true });
  const notice = h('div', { class: 'notice', role: 'status', hidden: true });
  const input = /** @type {HTMLInputElement} */ (
    h('input', { type: 'file', accept: 'image/*', multiple: true, hidden: true, class: 'file-input' })
  );
  const textarea = /** @type {HTMLTextAreaElement} */ (
    h('textarea', { rows: 2, placeholder, 'aria-label': placeholder })
  );
  const send = /** @type {HTMLButtonElement} */ (h('button', { type: 'submit', class: 'send' }, 'Send'));
  const attach = h(
    'button',
    { type: 'button', class: 'attach', title: 'Attach images', 'aria-label': 'Attach images' },
    '+',
  );
  const form = /** @type {HTMLFormElement} */ (
    h(
      'form',
      { class: 'composer' },
      notice,
      chips,
      h('div', { class: 'row' }, attach, input, textarea, send),
      error,
    )
  );
  slot.replaceChildren(form);

  /** @param {string} text */
  function showError(text) {
    error.textContent = text;
    error.hidden = !text;
  }
  /** @param {string} text */
  function showNotice(text) {
    notice.replaceChildren(h('span', { class: 'only-you' }, 'Only you can see this · '), text);
    notice.hidden = !text;
  }

  function renderChips() {
    chips.replaceChildren(
      ...files.map((file, i) => {
        let thumb = h('span', { class: 'chip-file', 'aria-hidden': 'true' }, '📄');
        if (file.type.startsWith('image/')) {
          const url = URL.createObjectURL(file);
          const release = () => URL.revokeObjectURL(url);
          thumb = h('img', { src: url, alt: '', onload: release, onerror: release });
        }
        return h(
          'span',
          { class: 'chip' },
          thumb,
          h('span', { class: 'chip-name' }, `${file.name} (${formatBytes(file.size)})`),
          h(
            'button',
            {
              type: 'button',
              'aria-label': `Remove ${file.name}`,
              onclick: () => {
                files.splice(i, 1);
                renderChips();
              },
            },
            '×',
          ),
        );
      }),
    );
  }

  /** @param {File[]} list */
  function add(list) {
    showError('');
    const limits = options.limits();
    for (const file of list) {
      if (files.length >= limits.maxFiles) {
        showError(`A message takes at most ${limits.maxFiles} images.`);
        break;
      }
      if (file.size > limits.maxBytes) {
        showError(
          `"${file.name}" is ${formatBytes(file.size)}; images up to ${formatBytes(limits.maxBytes)} are read.`,
        );
        continue;
      }
      files.push(file);
    }
    renderChips();
  }

  attach.addEventListener('click', () => input.click());
  input.addEventListener('change', () => {
    add([...(input.files ?? [])]);
    input.value = '';
  });
  textarea.addEventListener('paste', (event) => {
    const pasted = [...(event.clipboardData?.files ?? [])];
    if (pasted.length) {
      add(pasted);
      if (!event.clipboardData?.getData('text')) event.preventDefault();
    }
  });
  textarea.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  const pane = /** @type {HTMLElement} */ (slot.closest('.pane'));
  pane.addEventListener('dragover', (event) => {
    if (![...(event.dataTransfer?.types ?? [])].includes('Files')) return;
    event.preventDefault();
    pane.classList.add('dropping');
  });
  pane.addEventListener('dragleave', (event) => {
    if (!pane.contains(/** @type {Node | null} */ (event.relatedTarget))) pane.classList.remove('dropping');
  });
  pane.addEventListener('drop', (event) => {
    pane.classList.remove('dropping');
    if (!event.dataTransfer?.files.length) return;
    event.preventDefault();
    add([...event.dataTransfer.files]);
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    showError('');
    showNotice('');
    const user = options.user();
    const data = new FormData();
    data.set('text', textarea.value);
    data.set('clientKey', randomId());
    data.set('userId', user.id);
    data.set('userName', user.name);
    const thread = options.threadId();
    if (thread) data.set('threadId', thread);
    for (const file of files) data.append('files', file, file.name);
    send.disabled = true;
    try {
      const result = await api('/api/messages', { method: 'POST', headers: HEADER, body: data });
      textarea.value = '';
      files.length = 0;
      renderChips();
      await options.sent(result, thread, composer);
    } catch (error) {
      showError(errorText(error));
    } finally {
      send.disabled = false;
    }
  });

  /** @type {Composer} */
  const composer = { showError, showNotice, focus: () => textarea.focus() };
  return composer;
}
