// @ts-check
// The playground page: a channel with threads, talking to the server beside it (JSON + Server-Sent Events).
// Plain DOM code in ES modules, no framework and nothing loaded from elsewhere: dom.js builds elements,
// api.js talks to the server, views.js draws messages, composer.js is the message box; this file holds
// the page's state and wires them together.

import { api, errorText, HEADER, loadUser, randomId, saveUser } from './api.js';
import { createComposer } from './composer.js';
import { $ } from './dom.js';
import { messageView, progressView } from './views.js';

/** @typedef {import('./api.js').Message} Message */

const state = {
  user: loadUser(),
  /** @type {import('./api.js').Limits} */
  limits: { maxBytes: 10 * 1024 * 1024, maxPixels: 4096 * 4096, maxFiles: 4, maxChars: 4000 },
  botName: 'gill',
  /** Every message seen, by id. @type {Map<string, Message>} */
  messages: new Map(),
  /** Ids of the channel's own messages, oldest first. @type {string[]} */
  roots: [],
  /** @type {string | null} */
  openThread: null,
  /** Latest progress event by job id. @type {Map<string, import('./api.js').ProgressEvent>} */
  progress: new Map(),
};

/** @type {import('./views.js').ViewContext} */
const view = {
  progressOf: (jobId) => state.progress.get(jobId),
  press: (button, customId) => void press(button, customId),
  openThread: (id) => void openThread(id),
};

// ---- rendering ------------------------------------------------------------------------------------

/**
 * Re-renders a list, keeping the reader at the bottom when they were there.
 * @param {HTMLElement} container
 * @param {string[]} ids
 * @param {'channel' | 'thread'} where
 */
function renderList(container, ids, where) {
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 80;
  container.replaceChildren(
    ...ids.map((id) => messageView(/** @type {Message} */ (state.messages.get(id)), where, view)),
  );
  if (atBottom) container.scrollTop = container.scrollHeight;
}

function renderChannel() {
  renderList($('channel-messages'), state.roots, 'channel');
}

/** @param {string} rootId */
function threadIds(rootId) {
  return [...state.messages.values()]
    .filter((m) => m.id === rootId || m.threadId === rootId)
    .sort((a, b) => Number(a.id) - Number(b.id))
    .map((m) => m.id);
}

function renderThread() {
  if (!state.openThread) return;
  renderList($('thread-messages'), threadIds(state.openThread), 'thread');
}

/**
 * Takes in a new or changed message from the server.
 * @param {Message} message
 */
function upsert(message) {
  const known = state.messages.has(message.id);
  const previous = state.messages.get(message.id);
  state.messages.set(message.id, {
    ...previous,
    ...message,
    replyCount: message.replyCount ?? previous?.replyCount ?? 0,
  });
  if (message.reply && message.jobId) state.progress.delete(message.jobId);
  if (message.threadId === null) {
    if (!known) state.roots.push(message.id);
    renderChannel();
  } else {
    const root = state.messages.get(message.threadId);
    if (root && !known) {
      root.replyCount = (root.replyCount ?? 0) + 1;
      renderChannel();
    }
  }
  if (state.openThread && (message.id === state.openThread || message.threadId === state.openThread))
    renderThread();
}

/** @param {import('./api.js').ProgressEvent} event */
function showProgress(event) {
  state.progress.set(event.jobId, event);
  for (const el of document.querySelectorAll(
    `article.msg.pending[data-job-id="${CSS.escape(event.jobId)}"]`,
  )) {
    const message = state.messages.get(/** @type {HTMLElement} */ (el).dataset.id ?? '');
    if (message) el.querySelector('.progress')?.replaceWith(progressView(message, view));
  }
}

// ---- threads ---------------------------------------------------------------------------------------

/** @param {string} id */
async function openThread(id) {
  state.openThread = id;
  $('thread-pane').hidden = false;
  document.body.classList.add('with-thread');
  const url = new URL(location.href);
  url.searchParams.set('thread', id);
  history.replaceState(null, '', url);
  renderThread();
  try {
    const { messages } = await api(`/api/threads/${encodeURIComponent(id)}`);
    for (const message of /** @type {Message[]} */ (messages))
      state.messages.set(message.id, { ...state.messages.get(message.id), ...message });
    if (state.openThread === id) renderThread();
    threadComposer.focus();
  } catch (error) {
    threadComposer.showError(errorText(error));
  }
}

function closeThread() {
  state.openThread = null;
  $('thread-pane').hidden = true;
  document.body.classList.remove('with-thread');
  const url = new URL(location.href);
  url.searchParams.delete('thread');
  history.replaceState(null, '', url);
}

/**
 * @param {HTMLButtonElement} button
 * @param {string} customId
 */
async function press(button, customId) {
  button.disabled = true;
  const article = /** @type {HTMLElement | null} */ (button.closest('article'));
  const threadId = state.messages.get(article?.dataset.id ?? '')?.threadId;
  try {
    const result = await api('/api/buttons', {
      method: 'POST',
      headers: { ...HEADER, 'content-type': 'application/json' },
      body: JSON.stringify({
        customId,
        clickKey: randomId(),
        userId: state.user.id,
        userName: state.user.name,
      }),
    });
    if (threadId && state.openThread !== threadId) await openThread(threadId);
    if (result.notice) threadComposer.showNotice(result.notice);
  } catch (error) {
    threadComposer.showError(errorText(error));
  } finally {
    setTimeout(() => {
      button.disabled = false;
    }, 1000);
  }
}

// ---- composing -------------------------------------------------------------------------------------

/**
 * A post went through: show it, and open the thread the bot answers in (its notice goes there too).
 * @type {import('./composer.js').ComposerOptions['sent']}
 */
async function sent(result, thread, composer) {
  upsert(result.message);
  if (!thread && (result.answering || result.notice)) await openThread(result.threadId);
  if (result.notice) (thread ? composer : threadComposer).showNotice(result.notice);
}

const channelComposer = createComposer($('channel-composer'), {
  placeholder: 'Message #playground: @gill to ask, /imagine, /find, /gill help',
  threadId: () => null,
  limits: () => state.limits,
  user: () => state.user,
  sent,
});
const threadComposer = createComposer($('thread-composer'), {
  placeholder: 'Reply in the thread…',
  threadId: () => state.openThread,
  limits: () => state.limits,
  user: () => state.user,
  sent,
});

// ---- start -----------------------------------------------------------------------------------------

async function loadChannel() {
  const { messages } = await api('/api/channel');
  state.roots = [];
  for (const message of /** @type {Message[]} */ (messages)) {
    state.messages.set(message.id, { ...state.messages.get(message.id), ...message });
    state.roots.push(message.id);
  }
  renderChannel();
  const channel = $('channel-messages');
  channel.scrollTop = channel.scrollHeight;
}

function connect() {
  const status = $('connection');
  const events = new EventSource('/api/events');
  events.addEventListener('open', () => {
    status.textContent = 'live';
    status.dataset.state = 'live';
    // Whatever happened while disconnected is read again.
    loadChannel().catch((error) => channelComposer.showError(errorText(error)));
    if (state.openThread) openThread(state.openThread);
  });
  events.addEventListener('error', () => {
    status.textContent = 'reconnecting…';
    status.dataset.state = 'down';
  });
  events.addEventListener('message', (event) => upsert(JSON.parse(event.data).message));
  events.addEventListener('progress', (event) => showProgress(JSON.parse(event.data)));
}

async function start() {
  const name = /** @type {HTMLInputElement} */ ($('user-name'));
  name.value = state.user.name;
  name.addEventListener('change', () => {
    state.user.name = name.value.trim().slice(0, 40) || 'you';
    saveUser(state.user);
  });
  $('close-thread').addEventListener('click', closeThread);
  try {
    const info = await api('/api/state');
    state.limits = info.limits;
    state.botName = info.botName;
  } catch (error) {
    channelComposer.showError(errorText(error));
  }
  const wanted = new URL(location.href).searchParams.get('thread');
  if (wanted && /^\d+$/.test(wanted)) state.openThread = wanted;
  if (state.openThread) {
    $('thread-pane').hidden = false;
    document.body.classList.add('with-thread');
  }
  connect();
}

start();
