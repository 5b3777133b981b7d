import { createHmac } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type WebSocket, WebSocketServer } from 'ws';

/**
 * A loopback stand-in for Slack: the Web API methods the app calls (reached through SLACK_API_URL), the
 * external upload URL of files.uploadV2, a file host that, like files.slack.com, answers a sign-in page
 * unless the bot token is presented, response_url endpoints, and the Socket Mode WebSocket that
 * apps.connections.open points to. Every call is recorded. The helpers at the bottom send signed Events
 * API, slash command and interactivity requests to the app under test.
 */

export interface RecordedCall {
  method: string;
  params: Record<string, unknown>;
  token: string | null;
  at: number;
}

export interface SlackFileObject {
  id: string;
  name: string;
  title: string;
  mimetype: string;
  filetype: string;
  size: number;
  url_private: string;
  url_private_download: string;
  permalink: string;
}

export interface FakeMessage {
  channel: string;
  ts: string;
  thread_ts?: string;
  user?: string;
  bot_id?: string;
  text: string;
  blocks?: unknown[];
  files?: SlackFileObject[];
  /** Set on a person's edited message. */
  edited?: { user: string; ts: string };
  /** 'tombstone' for a thread's root deleted while it has replies. */
  subtype?: string;
  /** Message metadata the app attached (chat.postMessage / chat.update `metadata`). */
  metadata?: { event_type: string; event_payload: Record<string, unknown> };
}

export interface CompletedUpload {
  id: string;
  name: string;
  title: string | undefined;
  bytes: Buffer;
  channel: string;
  threadTs: string | undefined;
  initialComment: string | undefined;
}

export interface FakeSlackOptions {
  botToken?: string;
  appToken?: string;
  teamId?: string;
  botUserId?: string;
  botId?: string;
}

interface StoredFile {
  object: SlackFileObject;
  bytes: Buffer;
  /** Content type served; a file marked denied always serves the HTML sign-in page. */
  servedType: string;
  denied: boolean;
}

interface PendingUpload {
  id: string;
  filename: string;
  length: number;
  bytes?: Buffer;
}

type Handler = (params: Record<string, unknown>) => Record<string, unknown>;

const SIGN_IN_PAGE =
  '<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to your workspace</body></html>';

export class FakeSlack {
  readonly botToken: string;
  readonly appToken: string;
  readonly teamId: string;
  readonly botUserId: string;
  readonly botId: string;
  readonly calls: RecordedCall[] = [];
  /** Every message in the fake workspace, the bot's and those added with userMessage(). */
  readonly messages: FakeMessage[] = [];
  readonly uploads: CompletedUpload[] = [];
  /** JSON bodies posted to response_url endpoints, by the id in their path. */
  readonly responses: { id: string; body: Record<string, unknown> }[] = [];
  readonly fileDownloads: { fileId: string; authorized: boolean }[] = [];
  /** Messages sent with chat.postEphemeral (visible to one user). */
  readonly ephemerals: { channel: string; user: string; text: string }[] = [];
  private readonly users = new Map<string, { name: string; is_admin: boolean; is_owner: boolean }>();
  private readonly files = new Map<string, StoredFile>();
  private readonly pendingUploads = new Map<string, PendingUpload>();
  private readonly rateLimits = new Map<string, { retryAfter: number; times: number }>();
  private readonly failures = new Map<string, { error: string; times: number }>();
  private readonly delays = new Map<string, { ms: number; times: number }>();
  /**
   * Most messages conversations.replies and conversations.history answer per call, whatever `limit` asks
   * (Slack may answer fewer than asked and a cursor for the rest).
   */
  pageSize = 1000;
  private readonly waiters = new Set<() => void>();
  private server!: Server;
  private readonly sockets = new Set<WebSocket>();
  /** Socket Mode acknowledgements received from the app, in order. */
  readonly socketAcks: { envelope_id: string; payload?: unknown }[] = [];
  private counter = 0;
  private clock = Math.floor(Date.now() / 1000);
  origin = '';

  constructor(options: FakeSlackOptions = {}) {
    this.botToken = options.botToken ?? 'xoxb-fake-bot-token';
    this.appToken = options.appToken ?? 'xapp-fake-app-token';
    this.teamId = options.teamId ?? 'T0FAKE';
    this.botUserId = options.botUserId ?? 'U0BOT';
    this.botId = options.botId ?? 'B0BOT';
  }

  static async start(options: FakeSlackOptions = {}): Promise<FakeSlack> {
    const fake = new FakeSlack(options);
    fake.server = createServer((req, res) => {
      fake.handle(req, res).catch((error) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(error));
      });
    });
    const wss = new WebSocketServer({ noServer: true });
    fake.server.on('upgrade', (req, socket, head) => {
      if (req.url !== '/socket') return socket.destroy();
      wss.handleUpgrade(req, socket, head, (ws) => fake.acceptSocket(ws));
    });
    await new Promise<void>((resolve) => fake.server.listen(0, '127.0.0.1', resolve));
    fake.origin = `http://127.0.0.1:${(fake.server.address() as AddressInfo).port}`;
    return fake;
  }

  /** The value for SLACK_API_URL. */
  get apiUrl(): string {
    return `${this.origin}/api/`;
  }

  async close(): Promise<void> {
    for (const ws of this.sockets) ws.terminate();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  addUser(id: string, role: { admin?: boolean; owner?: boolean; name?: string } = {}): void {
    this.users.set(id, {
      name: role.name ?? id.toLowerCase(),
      is_admin: role.admin ?? false,
      is_owner: role.owner ?? false,
    });
  }

  /** Hosts a file as Slack would after a user shares it, and returns the object events carry. */
  addFile(input: {
    name: string;
    mimetype: string;
    bytes: Buffer;
    servedType?: string;
    denied?: boolean;
    size?: number;
    title?: string;
  }): SlackFileObject {
    const id = `F${this.nextId()}`;
    const object: SlackFileObject = {
      id,
      name: input.name,
      title: input.title ?? input.name,
      mimetype: input.mimetype,
      filetype: input.name.split('.').pop() ?? 'binary',
      size: input.size ?? input.bytes.length,
      url_private: `${this.origin}/files-pri/${this.teamId}-${id}/${encodeURIComponent(input.name)}`,
      url_private_download: `${this.origin}/files-pri/${this.teamId}-${id}/download/${encodeURIComponent(input.name)}`,
      permalink: `${this.origin}/files/${this.botUserId}/${id}/${encodeURIComponent(input.name)}`,
    };
    this.files.set(id, {
      object,
      bytes: input.bytes,
      servedType: input.servedType ?? input.mimetype,
      denied: input.denied ?? false,
    });
    return object;
  }

  /** Adds a person's message to the workspace (so conversations.replies sees it) and returns it for an event. */
  userMessage(input: {
    channel: string;
    user: string;
    text: string;
    threadTs?: string;
    files?: SlackFileObject[];
  }): FakeMessage {
    const message: FakeMessage = {
      channel: input.channel,
      ts: this.nextTs(),
      user: input.user,
      text: input.text,
      ...(input.threadTs ? { thread_ts: input.threadTs } : {}),
      ...(input.files ? { files: input.files } : {}),
    };
    this.messages.push(message);
    this.notify();
    return message;
  }

  /**
   * A person edits their message: it changes here (conversations.replies sees the edit). Returns the
   * `message_changed` event Slack sends for it (under the message.* subscriptions). `keepFiles` removes
   * the message's other files, as deleting a file from a message in Slack's client does.
   */
  editMessage(
    message: FakeMessage,
    text: string,
    options: { keepFiles?: string[] } = {},
  ): Record<string, unknown> {
    const stored = this.stored(message);
    const before = { ...stored };
    const ts = this.nextTs();
    stored.text = text;
    if (options.keepFiles) {
      const kept = (stored.files ?? []).filter((f) => options.keepFiles!.includes(f.id));
      if (kept.length) stored.files = kept;
      else delete stored.files;
    }
    stored.edited = { user: stored.user ?? '', ts };
    this.notify();
    return {
      type: 'message',
      subtype: 'message_changed',
      hidden: true,
      channel: stored.channel,
      ts,
      message: { type: 'message', ...stored },
      previous_message: { type: 'message', ...before },
    };
  }

  /**
   * A person deletes their message. As in Slack, a message is removed (`message_deleted`), except a
   * thread's root with replies, which stays as a tombstone (`message_changed` to a `tombstone` message).
   * Returns the event.
   */
  deleteMessage(message: FakeMessage): Record<string, unknown> {
    const stored = this.stored(message);
    const before = { type: 'message', ...stored };
    const ts = this.nextTs();
    this.notify();
    if (
      this.messages.some((m) => m.channel === stored.channel && m.thread_ts === stored.ts && m !== stored)
    ) {
      Object.assign(stored, { subtype: 'tombstone', text: 'This message was deleted.', user: 'USLACKBOT' });
      delete stored.files;
      delete stored.edited;
      return {
        type: 'message',
        subtype: 'message_changed',
        hidden: true,
        channel: stored.channel,
        ts,
        message: { type: 'message', ...stored, thread_ts: stored.ts },
        previous_message: before,
      };
    }
    this.messages.splice(this.messages.indexOf(stored), 1);
    return {
      type: 'message',
      subtype: 'message_deleted',
      hidden: true,
      channel: stored.channel,
      ts,
      deleted_ts: stored.ts,
      previous_message: before,
    };
  }

  /** A file is deleted from the workspace; returns the `file_deleted` event Slack sends for it. */
  deleteFile(fileId: string): Record<string, unknown> {
    if (!this.files.delete(fileId)) throw new Error(`no file ${fileId}`);
    for (const m of this.messages) {
      if (!m.files?.some((f) => f.id === fileId)) continue;
      m.files = m.files.filter((f) => f.id !== fileId);
      if (!m.files.length) delete m.files;
    }
    this.notify();
    return { type: 'file_deleted', file_id: fileId, event_ts: this.nextTs() };
  }

  private stored(message: FakeMessage): FakeMessage {
    const stored = this.messages.find((m) => m.channel === message.channel && m.ts === message.ts);
    if (!stored) throw new Error(`no message ${message.channel}/${message.ts}`);
    return stored;
  }

  /** The next `times` calls of `method` answer HTTP 429 with Retry-After. */
  rateLimit(method: string, retryAfterSeconds: number, times = 1): void {
    this.rateLimits.set(method, { retryAfter: retryAfterSeconds, times });
  }

  /**
   * The next `times` calls of `method` are answered after `ms` (and take effect only then), as when Slack
   * or the network is slow.
   */
  slowNext(method: string, ms: number, times = 1): void {
    this.delays.set(method, { ms, times });
  }

  /** The next `times` calls of `method` answer `{ok:false, error}`. */
  failNext(method: string, error: string, times = 1): void {
    this.failures.set(method, { error, times });
  }

  callsOf(method: string): RecordedCall[] {
    return this.calls.filter((c) => c.method === method);
  }

  /** Messages the bot posted in a thread (or channel, without threadTs), edits applied. */
  botMessages(channel: string, threadTs?: string): FakeMessage[] {
    return this.messages.filter(
      (m) =>
        m.channel === channel &&
        m.bot_id === this.botId &&
        (threadTs === undefined || m.thread_ts === threadTs),
    );
  }

  /** Resolves when `check` returns a value other than undefined/false, re-checked after every recorded change. */
  async waitFor<T>(
    check: () => T | undefined | false | null,
    timeoutMs = 15_000,
    what = 'condition',
  ): Promise<T> {
    const first = check();
    if (first) return first;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(listener);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const listener = () => {
        const value = check();
        if (value) {
          clearTimeout(timer);
          this.waiters.delete(listener);
          resolve(value);
        }
      };
      this.waiters.add(listener);
    });
  }

  waitForCall(method: string, predicate: (call: RecordedCall) => boolean = () => true, timeoutMs = 15_000) {
    return this.waitFor(() => this.callsOf(method).find(predicate), timeoutMs, `a ${method} call`);
  }

  permalink(channel: string, ts: string): string {
    return `${this.origin}/archives/${channel}/p${ts.replace('.', '')}`;
  }

  /** Open Socket Mode connections. */
  get socketCount(): number {
    return this.sockets.size;
  }

  /** Sends an Events API envelope over Socket Mode; a retry repeats the event with retry_attempt > 0. */
  sendSocketEvent(
    payload: Record<string, unknown>,
    options: { envelopeId: string; retryAttempt?: number; retryReason?: string },
  ) {
    const envelope = {
      envelope_id: options.envelopeId,
      type: 'events_api',
      accepts_response_payload: false,
      retry_attempt: options.retryAttempt ?? 0,
      retry_reason: options.retryReason ?? '',
      payload,
    };
    for (const ws of this.sockets) ws.send(JSON.stringify(envelope));
  }

  private acceptSocket(ws: WebSocket): void {
    this.sockets.add(ws);
    ws.on('message', (data) => {
      this.socketAcks.push(JSON.parse(String(data)));
      this.notify();
    });
    ws.on('close', () => {
      this.sockets.delete(ws);
      this.notify();
    });
    ws.send(
      JSON.stringify({
        type: 'hello',
        num_connections: 1,
        connection_info: { app_id: 'A0FAKE' },
        debug_info: { host: 'fake' },
      }),
    );
    this.notify();
  }

  private notify(): void {
    for (const listener of [...this.waiters]) listener();
  }

  private nextId(): string {
    this.counter += 1;
    return String(this.counter).padStart(8, '0');
  }

  private nextTs(): string {
    this.counter += 1;
    this.clock = Math.max(this.clock, Math.floor(Date.now() / 1000));
    return `${this.clock}.${String(this.counter).padStart(6, '0')}`;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.origin);
    const body = await readBody(req);
    if (req.method === 'GET' && url.pathname.startsWith('/files-pri/')) return this.serveFile(req, res, url);
    if (req.method === 'POST' && url.pathname.startsWith('/upload/'))
      return this.receiveUpload(req, res, url, body);
    if (req.method === 'POST' && url.pathname.startsWith('/response/')) {
      this.responses.push({
        id: url.pathname.slice('/response/'.length),
        body: JSON.parse(body.toString('utf8')),
      });
      this.notify();
      return send(res, 200, { ok: true });
    }
    if (req.method === 'POST' && url.pathname.startsWith('/api/')) {
      const method = url.pathname.slice('/api/'.length);
      const params = parseParams(req.headers['content-type'] ?? '', body);
      const header = req.headers.authorization;
      const token = header?.startsWith('Bearer ')
        ? header.slice(7)
        : typeof params.token === 'string'
          ? params.token
          : null;
      this.calls.push({ method, params, token, at: Date.now() });
      const delay = this.delays.get(method);
      if (delay && delay.times > 0) {
        delay.times -= 1;
        await new Promise((resolve) => setTimeout(resolve, delay.ms));
        if (res.destroyed) return; // the client gave up waiting
      }
      const limited = this.rateLimits.get(method);
      if (limited && limited.times > 0) {
        limited.times -= 1;
        res.writeHead(429, { 'retry-after': String(limited.retryAfter), 'content-type': 'application/json' });
        res.end(JSON.stringify({ ok: false, error: 'ratelimited' }));
        this.notify();
        return;
      }
      const result = this.answer(method, params, token);
      send(res, 200, result);
      this.notify();
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  }

  private answer(
    method: string,
    params: Record<string, unknown>,
    token: string | null,
  ): Record<string, unknown> {
    if (method === 'apps.connections.open') {
      if (token !== this.appToken) return { ok: false, error: 'invalid_auth' };
      return { ok: true, url: `${this.origin.replace('http:', 'ws:')}/socket` };
    }
    if (token !== this.botToken) return { ok: false, error: token ? 'invalid_auth' : 'not_authed' };
    const failure = this.failures.get(method);
    if (failure && failure.times > 0) {
      failure.times -= 1;
      return { ok: false, error: failure.error };
    }
    const handler = this.handlers[method];
    if (!handler) return { ok: false, error: 'unknown_method' };
    try {
      return { ok: true, ...handler(params) };
    } catch (error) {
      return { ok: false, error: (error as Error).message };
    }
  }

  private readonly handlers: Record<string, Handler> = {
    'auth.test': () => ({
      url: `${this.origin}/`,
      team: 'Fake Workspace',
      user: 'gill',
      team_id: this.teamId,
      user_id: this.botUserId,
      bot_id: this.botId,
    }),
    'users.info': (p) => {
      const user = this.users.get(String(p.user));
      if (!user) throw new Error('user_not_found');
      return { user: { id: p.user, team_id: this.teamId, ...user } };
    },
    'chat.postMessage': (p) => {
      const text = String(p.text ?? '');
      if (!text && !p.blocks) throw new Error('no_text');
      if (text.length > 40_000) throw new Error('msg_too_long');
      const metadata = parseMetadata(p.metadata);
      const channel = String(p.channel);
      const message: FakeMessage = {
        channel,
        ts: this.nextTs(),
        bot_id: this.botId,
        user: this.botUserId,
        text,
        ...(p.thread_ts ? { thread_ts: String(p.thread_ts) } : {}),
        ...(p.blocks ? { blocks: asArray(p.blocks) } : {}),
        ...(metadata ? { metadata } : {}),
      };
      this.messages.push(message);
      return { channel, ts: message.ts, message: { ...message } };
    },
    'chat.update': (p) => {
      const message = this.messages.find((m) => m.channel === p.channel && m.ts === p.ts);
      if (!message) throw new Error('message_not_found');
      if (message.bot_id !== this.botId) throw new Error('cant_update_message');
      const metadata = parseMetadata(p.metadata);
      if (metadata) message.metadata = metadata;
      if (p.text !== undefined) message.text = String(p.text);
      if (p.blocks !== undefined) message.blocks = asArray(p.blocks);
      return { channel: message.channel, ts: message.ts, text: message.text };
    },
    'chat.delete': (p) => {
      const index = this.messages.findIndex((m) => m.channel === p.channel && m.ts === p.ts);
      if (index < 0) throw new Error('message_not_found');
      this.messages.splice(index, 1);
      return { channel: p.channel, ts: p.ts };
    },
    'chat.postEphemeral': (p) => {
      this.ephemerals.push({ channel: String(p.channel), user: String(p.user), text: String(p.text ?? '') });
      return { message_ts: this.nextTs() };
    },
    'chat.getPermalink': (p) => ({
      channel: p.channel,
      permalink: this.permalink(String(p.channel), String(p.message_ts)),
    }),
    'conversations.replies': (p) => {
      const channel = String(p.channel);
      const ts = String(p.ts);
      const limit = Number(p.limit ?? 1000);
      const thread = this.messages
        .filter((m) => m.channel === channel && (m.ts === ts || m.thread_ts === ts))
        .sort((a, b) => Number(a.ts) - Number(b.ts));
      if (thread.length === 0) throw new Error('thread_not_found');
      return this.page(thread, limit, p);
    },
    'conversations.history': (p) => {
      // Newest first; top-level messages only (thread replies stay in their thread); ts > oldest, < latest.
      const channel = String(p.channel);
      const limit = Math.min(999, Number(p.limit ?? 100));
      const oldest = p.oldest === undefined ? 0 : Number(p.oldest);
      const latest = p.latest === undefined ? Number.POSITIVE_INFINITY : Number(p.latest);
      const list = this.messages
        .filter(
          (m) =>
            m.channel === channel &&
            (!m.thread_ts || m.thread_ts === m.ts) &&
            Number(m.ts) > oldest &&
            Number(m.ts) < latest,
        )
        .sort((a, b) => Number(b.ts) - Number(a.ts));
      return this.page(list, limit, p);
    },
    'files.getUploadURLExternal': (p) => {
      const length = Number(p.length);
      if (!p.filename || !Number.isInteger(length) || length <= 0) throw new Error('invalid_arguments');
      const id = `F${this.nextId()}`;
      this.pendingUploads.set(id, { id, filename: String(p.filename), length });
      return { upload_url: `${this.origin}/upload/${id}`, file_id: id };
    },
    'files.completeUploadExternal': (p) => {
      const list = asArray(p.files) as { id: string; title?: string }[];
      const channel = p.channel_id ? String(p.channel_id) : undefined;
      const threadTs = p.thread_ts ? String(p.thread_ts) : undefined;
      const done: SlackFileObject[] = [];
      const shared: SlackFileObject[] = [];
      for (const item of list) {
        const pending = this.pendingUploads.get(item.id);
        if (!pending?.bytes) throw new Error('file_not_found');
        this.pendingUploads.delete(item.id);
        const object = this.addFile({
          name: pending.filename,
          ...(item.title ? { title: item.title } : {}),
          mimetype: mimeOf(pending.filename),
          bytes: pending.bytes,
        });
        if (channel) {
          this.uploads.push({
            id: object.id,
            name: pending.filename,
            title: item.title,
            bytes: pending.bytes,
            channel,
            threadTs,
            initialComment: p.initial_comment ? String(p.initial_comment) : undefined,
          });
        }
        shared.push(object);
        done.push(object);
      }
      if (channel) {
        // Sharing files posts a message from the bot that carries them.
        this.messages.push({
          channel,
          ts: this.nextTs(),
          bot_id: this.botId,
          user: this.botUserId,
          text: p.initial_comment ? String(p.initial_comment) : '',
          files: shared,
          ...(threadTs ? { thread_ts: threadTs } : {}),
        });
      }
      return { files: done.map((f) => ({ id: f.id, title: f.title, name: f.name })) };
    },
  };

  /** One page of `list` from the request's cursor (an offset here), at most `limit` and pageSize messages. */
  private page(list: FakeMessage[], limit: number, p: Record<string, unknown>): Record<string, unknown> {
    const from = p.cursor ? Number(p.cursor) : 0;
    const to = from + Math.min(limit, this.pageSize);
    const more = list.length > to;
    return {
      messages: list.slice(from, to).map(withMetadata(p.include_all_metadata)),
      has_more: more,
      response_metadata: { next_cursor: more ? String(to) : '' },
    };
  }

  private serveFile(req: IncomingMessage, res: ServerResponse, url: URL): void {
    const match = /^\/files-pri\/[^/]+-(F\d+)\//.exec(url.pathname);
    const file = match ? this.files.get(match[1]!) : undefined;
    const authorized = req.headers.authorization === `Bearer ${this.botToken}`;
    if (file) this.fileDownloads.push({ fileId: file.object.id, authorized });
    this.notify();
    if (!file) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('file not found');
      return;
    }
    // Slack answers 200 with its sign-in page, not 401, when the token is missing or lacks files:read.
    if (!authorized || file.denied) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(SIGN_IN_PAGE);
      return;
    }
    res.writeHead(200, { 'content-type': file.servedType, 'content-length': String(file.bytes.length) });
    res.end(file.bytes);
  }

  private async receiveUpload(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    body: Buffer,
  ): Promise<void> {
    const id = url.pathname.slice('/upload/'.length);
    const pending = this.pendingUploads.get(id);
    this.calls.push({
      method: 'upload',
      params: { fileId: id, bytes: body.length },
      token: null,
      at: Date.now(),
    });
    if (!pending) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('unknown upload');
      return;
    }
    const type = req.headers['content-type'] ?? '';
    let bytes = body;
    if (type.startsWith('multipart/form-data')) {
      // Bolt v5's WebClient posts the bytes as a multipart form with one file field.
      const form = await new Response(new Uint8Array(body), { headers: { 'content-type': type } }).formData();
      const part = [...form.values()].find((value): value is File => typeof value !== 'string');
      if (!part) {
        res.writeHead(400, { 'content-type': 'text/plain' });
        res.end('no file part');
        return;
      }
      bytes = Buffer.from(await part.arrayBuffer());
    }
    if (bytes.length !== pending.length) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`length mismatch: announced ${pending.length}, got ${bytes.length}`);
      return;
    }
    pending.bytes = bytes;
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`OK - ${bytes.length}`);
    this.notify();
  }
}

/**
 * The `metadata` argument of chat.postMessage / chat.update: JSON (an object, or a string in a form
 * post) with an event_type and an event_payload object, at most 4000 bytes, or Slack's errors.
 */
function parseMetadata(value: unknown): FakeMessage['metadata'] | undefined {
  if (value === undefined || value === '') return undefined;
  let parsed: unknown = value;
  if (typeof value === 'string') {
    try {
      parsed = JSON.parse(value);
    } catch {
      throw new Error('invalid_metadata_format');
    }
  }
  const metadata = parsed as { event_type?: unknown; event_payload?: unknown };
  if (
    typeof metadata !== 'object' ||
    metadata === null ||
    typeof metadata.event_type !== 'string' ||
    typeof metadata.event_payload !== 'object' ||
    metadata.event_payload === null ||
    Array.isArray(metadata.event_payload)
  )
    throw new Error('invalid_metadata_schema');
  if (Buffer.byteLength(JSON.stringify(metadata)) > 4000) throw new Error('metadata_too_large');
  return {
    event_type: metadata.event_type,
    event_payload: metadata.event_payload as Record<string, unknown>,
  };
}

/** Copies a message for conversations.* answers: its metadata only when include_all_metadata is set. */
function withMetadata(include: unknown): (m: FakeMessage) => FakeMessage {
  const all = include === true || include === 'true' || include === '1' || include === 1;
  return ({ metadata, ...m }) => (all && metadata ? { ...m, metadata } : { ...m });
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parseParams(contentType: string, body: Buffer): Record<string, unknown> {
  const text = body.toString('utf8');
  if (contentType.includes('application/json')) return JSON.parse(text || '{}');
  const params: Record<string, unknown> = {};
  for (const [key, value] of new URLSearchParams(text)) params[key] = value;
  return params;
}

function asArray(value: unknown): unknown[] {
  if (Array.isArray(value)) return value;
  if (typeof value === 'string') return JSON.parse(value);
  return [];
}

function mimeOf(filename: string): string {
  const ext = filename.split('.').pop()?.toLowerCase();
  return ext === 'png'
    ? 'image/png'
    : ext === 'jpg' || ext === 'jpeg'
      ? 'image/jpeg'
      : 'application/octet-stream';
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
  res.end(JSON.stringify(body));
}

// ---- Signed requests to the app under test ---------------------------------------------------------

export interface SignOptions {
  /** Unix seconds; defaults to now. A value over 5 minutes old makes the request stale. */
  timestamp?: number;
  /** Overrides the computed signature (a forgery). */
  signature?: string;
}

/** The v0 signature Slack sends: HMAC-SHA256 of `v0:{timestamp}:{raw body}` with the signing secret. */
export function signSlackRequest(
  secret: string,
  rawBody: string,
  options: SignOptions = {},
): Record<string, string> {
  const timestamp = options.timestamp ?? Math.floor(Date.now() / 1000);
  const digest = createHmac('sha256', secret).update(`v0:${timestamp}:${rawBody}`).digest('hex');
  return {
    'x-slack-request-timestamp': String(timestamp),
    'x-slack-signature': options.signature ?? `v0=${digest}`,
  };
}

export interface SlackRequestTarget {
  /** The app's events URL, e.g. http://127.0.0.1:PORT/slack/events. */
  url: string;
  signingSecret: string;
}

export interface DeliveryOptions extends SignOptions {
  retryNum?: number;
  retryReason?: string;
}

async function post(
  target: SlackRequestTarget,
  rawBody: string,
  contentType: string,
  options: DeliveryOptions,
) {
  const headers: Record<string, string> = {
    'content-type': contentType,
    ...signSlackRequest(target.signingSecret, rawBody, options),
  };
  if (options.retryNum !== undefined) {
    headers['x-slack-retry-num'] = String(options.retryNum);
    headers['x-slack-retry-reason'] = options.retryReason ?? 'http_timeout';
  }
  return fetch(target.url, { method: 'POST', headers, body: rawBody });
}

/** Wraps an event in the Events API envelope, with the event_id Slack repeats on retries. */
export function eventCallback(fake: FakeSlack, event: Record<string, unknown>, eventId: string) {
  return {
    token: 'legacy-verification-token',
    team_id: fake.teamId,
    api_app_id: 'A0FAKE',
    event: { event_ts: event.ts, ...event },
    type: 'event_callback',
    event_id: eventId,
    event_time: Math.floor(Date.now() / 1000),
    authorizations: [
      { team_id: fake.teamId, user_id: fake.botUserId, is_bot: true, is_enterprise_install: false },
    ],
  };
}

export function sendEvent(
  target: SlackRequestTarget,
  envelope: Record<string, unknown>,
  options: DeliveryOptions = {},
) {
  return post(target, JSON.stringify(envelope), 'application/json', options);
}

/** The app_mention event (and envelope) for a message; the matching `message` event is mentionMessageEvent. */
export function mentionEnvelope(fake: FakeSlack, message: FakeMessage, eventId: string) {
  return eventCallback(fake, { type: 'app_mention', ...messageFields(message) }, eventId);
}

export function messageEnvelope(fake: FakeSlack, message: FakeMessage, eventId: string) {
  return eventCallback(
    fake,
    {
      type: 'message',
      channel_type: channelType(message.channel),
      ...messageFields(message),
    },
    eventId,
  );
}

/**
 * A message event's channel_type, from the channel id's first letter as Slack assigned them: D a direct
 * message ('im'), G a private channel ('group'; private channels' ids may start with C too, but their
 * events say 'group'), M a group direct message ('mpim'), else a public channel.
 */
function channelType(channel: string): string {
  return { D: 'im', G: 'group', M: 'mpim' }[channel[0]!] ?? 'channel';
}

function messageFields(message: FakeMessage) {
  return {
    user: message.user,
    text: message.text,
    ts: message.ts,
    channel: message.channel,
    ...(message.thread_ts ? { thread_ts: message.thread_ts } : {}),
    ...(message.files ? { files: message.files } : {}),
  };
}

let triggerCounter = 0;

export function sendSlashCommand(
  fake: FakeSlack,
  target: SlackRequestTarget,
  input: { command: string; text: string; user: string; channel: string },
  options: DeliveryOptions = {},
) {
  triggerCounter += 1;
  const responseId = `cmd${triggerCounter}`;
  const form = new URLSearchParams({
    token: 'legacy-verification-token',
    team_id: fake.teamId,
    team_domain: 'fake',
    channel_id: input.channel,
    channel_name: 'general',
    user_id: input.user,
    user_name: input.user.toLowerCase(),
    command: input.command,
    text: input.text,
    api_app_id: 'A0FAKE',
    response_url: `${fake.origin}/response/${responseId}`,
    trigger_id: `${triggerCounter}.${Date.now()}.trigger`,
  });
  return post(target, form.toString(), 'application/x-www-form-urlencoded', options).then((response) => ({
    response,
    responseId,
  }));
}

/** A block_actions interactivity payload, as Slack posts it when someone presses a button. */
export function sendBlockAction(
  fake: FakeSlack,
  target: SlackRequestTarget,
  input: {
    user: string;
    channel: string;
    message: FakeMessage;
    actionId: string;
    label?: string;
    value?: string;
  },
  options: DeliveryOptions = {},
) {
  triggerCounter += 1;
  const responseId = `act${triggerCounter}`;
  const payload = {
    type: 'block_actions',
    team: { id: fake.teamId, domain: 'fake' },
    user: { id: input.user, team_id: fake.teamId },
    api_app_id: 'A0FAKE',
    token: 'legacy-verification-token',
    trigger_id: `${triggerCounter}.${Date.now()}.trigger`,
    container: {
      type: 'message',
      message_ts: input.message.ts,
      channel_id: input.channel,
      is_ephemeral: false,
    },
    channel: { id: input.channel, name: 'general' },
    message: { ...input.message, type: 'message' },
    response_url: `${fake.origin}/response/${responseId}`,
    actions: [
      {
        type: 'button',
        action_id: input.actionId,
        block_id: 'gill-actions',
        text: { type: 'plain_text', text: input.label ?? input.actionId },
        value: input.value ?? '',
        action_ts: `${Math.floor(Date.now() / 1000)}.000100`,
      },
    ],
  };
  const form = new URLSearchParams({ payload: JSON.stringify(payload) });
  return post(target, form.toString(), 'application/x-www-form-urlencoded', options).then((response) => ({
    response,
    responseId,
  }));
}
