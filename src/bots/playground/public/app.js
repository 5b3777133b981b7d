// The playground page: a channel with threads, talking to the server beside it (JSON + Server-Sent Events).
// Plain DOM code, no framework and nothing loaded from elsewhere. User and model text is only ever put into
// the page as text nodes, never as markup.

const HEADER = { 'x-gill-playground': '1' };
const $ = (id) => document.getElementById(id);

const state = {
  user: loadUser(),
  limits: { maxBytes: 10 * 1024 * 1024, maxPixels: 4096 * 4096, maxFiles: 4, maxChars: 4000 },
  botName: 'gill',
  /** Every message seen, by id. */
  messages: new Map(),
  /** Ids of the channel's own messages, oldest first. */
  roots: [],
  openThread: null,
  /** Latest progress event by job id. */
  progress: new Map(),
};

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function loadUser() {
  try {
    const saved = JSON.parse(localStorage.getItem('gill.user') ?? 'null');
    if (saved && /^[\w-]{1,64}$/.test(saved.id)) return saved;
  } catch {
    // A damaged entry is replaced below.
  }
  const user = { id: randomId(), name: 'you' };
  localStorage.setItem('gill.user', JSON.stringify(user));
  return user;
}

/** Creates an element; attributes are set as properties or attributes, children strings become text. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

async function api(path, init = {}) {
  const response = await fetch(path, init);
  let body = {};
  try {
    body = await response.json();
  } catch {
    // Not JSON: the status says enough.
  }
  if (!response.ok) throw new Error(body.error || `The server answered ${response.status}.`);
  return body;
}

function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(1).replace(/\.0$/, '')} MiB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KiB`;
  return `${bytes} bytes`;
}

/** Only web links (and this server's own paths) become links; anything else is shown as text. */
function safeUrl(raw) {
  if (!raw) return null;
  try {
    const url = new URL(raw, location.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

const percent = (p) => `${Math.round(p * 100)}%`;

// ---- rendering ------------------------------------------------------------------------------------

/** A line of text with @mentions marked; `_whole line_` is shown in italics (the bot's notes). */
function textLine(line) {
  const italic = /^_(.+)_$/.exec(line);
  const content = italic ? italic[1] : line;
  const parts = [];
  let last = 0;
  for (const match of content.matchAll(/@gill\b/gi)) {
    parts.push(content.slice(last, match.index), h('span', { class: 'mention' }, match[0]));
    last = match.index + match[0].length;
  }
  parts.push(content.slice(last));
  return h(italic ? 'em' : 'span', { class: 'line' }, ...parts);
}

function textBlock(text, cls = 'text') {
  if (!text) return null;
  return h('div', { class: cls }, ...text.split('\n').map((line) => h('div', {}, textLine(line) || ' ')));
}

function imageLink(hash, alt, cls) {
  const src = `/blobs/${hash}`;
  return h(
    'a',
    { href: src, target: '_blank', rel: 'noopener' },
    h('img', { src, alt, class: cls, loading: 'lazy' }),
  );
}

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

function resultImage(image, index) {
  const generated = image.kind === 'generated';
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

function progressView(message) {
  const event = state.progress.get(message.jobId);
  const box = h('div', { class: 'progress', dataset: { stage: event?.stage ?? 'queued' } });
  box.append(
    h('span', { class: 'spinner', 'aria-hidden': 'true' }),
    h('span', { class: 'progress-text' }, event?.text ?? message.body),
  );
  if (event?.steps) box.append(h('progress', { max: event.steps, value: event.step }));
  if (event?.preview)
    box.append(h('img', { class: 'preview', src: event.preview, alt: 'The image as it forms' }));
  // The same persistent id as on Discord and Slack (gill:<action>:<jobId>); the server checks who presses it.
  const cancelId = `gill:cancel:${message.jobId}`;
  box.append(
    h(
      'button',
      {
        type: 'button',
        class: 'cancel',
        dataset: { customId: cancelId },
        onclick: (e) => press(e.currentTarget, cancelId),
      },
      'Cancel',
    ),
  );
  return box;
}

function replyView(message) {
  const reply = message.reply;
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
        reply.buttons.map((button) =>
          h(
            'button',
            {
              type: 'button',
              dataset: { customId: button.id },
              onclick: (e) => press(e.currentTarget, button.id),
            },
            button.label,
          ),
        ),
      ),
    );
  }
  return parts;
}

function messageView(message, where) {
  const bot = message.role === 'assistant';
  const time = new Date(message.createdAt);
  const body = [];
  if (bot && message.jobId && !message.reply) body.push(progressView(message));
  else if (bot && message.reply) body.push(...replyView(message));
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
        { type: 'button', class: 'replies', onclick: () => openThread(message.id) },
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

/** Re-renders a list, keeping the reader at the bottom when they were there. */
function renderList(container, ids, where) {
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 80;
  container.replaceChildren(...ids.map((id) => messageView(state.messages.get(id), where)));
  if (atBottom) container.scrollTop = container.scrollHeight;
}

function renderChannel() {
  renderList($('channel-messages'), state.roots, 'channel');
}

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

/** Takes in a new or changed message from the server. */
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

function showProgress(event) {
  state.progress.set(event.jobId, event);
  for (const el of document.querySelectorAll(
    `article.msg.pending[data-job-id="${CSS.escape(event.jobId)}"]`,
  )) {
    const message = state.messages.get(el.dataset.id);
    if (message) el.querySelector('.progress')?.replaceWith(progressView(message));
  }
}

// ---- threads ---------------------------------------------------------------------------------------

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
    for (const message of messages)
      state.messages.set(message.id, { ...state.messages.get(message.id), ...message });
    if (state.openThread === id) renderThread();
    threadComposer.focus();
  } catch (error) {
    threadComposer.showError(error.message);
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

async function press(button, customId) {
  button.disabled = true;
  const article = button.closest('article');
  const threadId = state.messages.get(article?.dataset.id)?.threadId;
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
    threadComposer.showError(error.message);
  } finally {
    setTimeout(() => {
      button.disabled = false;
    }, 1000);
  }
}

// ---- composing -------------------------------------------------------------------------------------

function createComposer(slot, { placeholder, threadId }) {
  const files = [];
  const chips = h('div', { class: 'chips' });
  const error = h('div', { class: 'error', role: 'alert', hidden: true });
  const notice = h('div', { class: 'notice', role: 'status', hidden: true });
  const input = h('input', {
    type: 'file',
    accept: 'image/*',
    multiple: true,
    hidden: true,
    class: 'file-input',
  });
  const textarea = h('textarea', { rows: 2, placeholder, 'aria-label': placeholder });
  const send = h('button', { type: 'submit', class: 'send' }, 'Send');
  const attach = h(
    'button',
    { type: 'button', class: 'attach', title: 'Attach images', 'aria-label': 'Attach images' },
    '+',
  );
  const form = h(
    'form',
    { class: 'composer' },
    notice,
    chips,
    h('div', { class: 'row' }, attach, input, textarea, send),
    error,
  );
  slot.replaceChildren(form);

  function showError(text) {
    error.textContent = text;
    error.hidden = !text;
  }
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

  function add(list) {
    showError('');
    for (const file of list) {
      if (files.length >= state.limits.maxFiles) {
        showError(`A message takes at most ${state.limits.maxFiles} images.`);
        break;
      }
      if (file.size > state.limits.maxBytes) {
        showError(
          `"${file.name}" is ${formatBytes(file.size)}; images up to ${formatBytes(state.limits.maxBytes)} are read.`,
        );
        continue;
      }
      files.push(file);
    }
    renderChips();
  }

  attach.addEventListener('click', () => input.click());
  input.addEventListener('change', () => {
    add([...input.files]);
    input.value = '';
  });
  textarea.addEventListener('paste', (event) => {
    const pasted = [...(event.clipboardData?.files ?? [])];
    if (pasted.length) {
      add(pasted);
      if (!event.clipboardData.getData('text')) event.preventDefault();
    }
  });
  textarea.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  const pane = slot.closest('.pane');
  pane.addEventListener('dragover', (event) => {
    if (![...event.dataTransfer.types].includes('Files')) return;
    event.preventDefault();
    pane.classList.add('dropping');
  });
  pane.addEventListener('dragleave', (event) => {
    if (!pane.contains(event.relatedTarget)) pane.classList.remove('dropping');
  });
  pane.addEventListener('drop', (event) => {
    pane.classList.remove('dropping');
    if (!event.dataTransfer.files.length) return;
    event.preventDefault();
    add([...event.dataTransfer.files]);
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    showError('');
    showNotice('');
    const data = new FormData();
    data.set('text', textarea.value);
    data.set('clientKey', randomId());
    data.set('userId', state.user.id);
    data.set('userName', state.user.name);
    const thread = threadId();
    if (thread) data.set('threadId', thread);
    for (const file of files) data.append('files', file, file.name);
    send.disabled = true;
    try {
      const result = await api('/api/messages', { method: 'POST', headers: HEADER, body: data });
      textarea.value = '';
      files.length = 0;
      renderChips();
      upsert(result.message);
      if (!thread && (result.answering || result.notice)) await openThread(result.threadId);
      if (result.notice) (thread ? composer : threadComposer).showNotice(result.notice);
    } catch (error) {
      showError(error.message);
    } finally {
      send.disabled = false;
    }
  });

  const composer = { showError, showNotice, focus: () => textarea.focus() };
  return composer;
}

const channelComposer = createComposer($('channel-composer'), {
  placeholder: 'Message #playground: @gill to ask, /imagine, /find, /gill help',
  threadId: () => null,
});
const threadComposer = createComposer($('thread-composer'), {
  placeholder: 'Reply in the thread…',
  threadId: () => state.openThread,
});

// ---- start -----------------------------------------------------------------------------------------

async function loadChannel() {
  const { messages } = await api('/api/channel');
  state.roots = [];
  for (const message of messages) {
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
    loadChannel().catch((error) => channelComposer.showError(error.message));
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
  const name = $('user-name');
  name.value = state.user.name;
  name.addEventListener('change', () => {
    state.user.name = name.value.trim().slice(0, 40) || 'you';
    localStorage.setItem('gill.user', JSON.stringify(state.user));
  });
  $('close-thread').addEventListener('click', closeThread);
  try {
    const info = await api('/api/state');
    state.limits = info.limits;
    state.botName = info.botName;
  } catch (error) {
    channelComposer.showError(error.message);
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
