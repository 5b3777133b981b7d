import { createHmac, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';

/**
 * A loopback Discord for tests: the REST API (under /api/v10), the gateway (HELLO, IDENTIFY, READY,
 * GUILD_CREATE, heartbeats, dispatches) and a CDN serving attachments under signed URLs, each on its
 * own origin. It behaves as the real one does where the bot depends on it (platforms.md §7): the 3 s
 * interaction deadline, 15-minute tokens, thread ids equal to their starter message's id and 160004 on a
 * second thread, the 2000-character and empty-message checks, blank content without the Message Content
 * intent, signed attachment URLs that 404 without their query string, message nonces (at most 25
 * characters; with enforce_nonce, a second creation by the same author with the same nonce within
 * nonceWindowMs returns the first message and creates nothing), and scripted 429s and permission
 * errors. Every REST call is recorded.
 */

export const MESSAGE_CONTENT_INTENT = 1 << 15;
const PERMISSION_ADMINISTRATOR = 1n << 3n;
const PERMISSION_MANAGE_GUILD = 1n << 5n;
const PERMISSION_VIEW_CHANNEL = 1n << 10n;
const THREAD_PUBLIC = 11;
const THREAD_PRIVATE = 12;
const EVERYONE_PERMISSIONS = 0x0006_3584_0e40n.toString();

export interface RecordedCall {
  method: string;
  /** Path below /api/v10, decoded (`@original`, not `%40original`). */
  path: string;
  query: URLSearchParams;
  body: Record<string, unknown> | null;
  files: { name: string; data: Buffer; contentType: string }[];
  status: number;
  at: number;
}

export interface FakeUser {
  id: string;
  username: string;
  global_name: string | null;
  discriminator: string;
  avatar: null;
  bot?: boolean;
}

type Json = Record<string, unknown>;

interface Script {
  method: string;
  path: RegExp;
  times: number;
  /** Only requests this accepts are answered by the script (all when absent). */
  when?: (call: RecordedCall) => boolean;
  respond: (res: http.ServerResponse) => void;
}

interface Interaction {
  id: string;
  token: string;
  createdAt: number;
  acknowledged: boolean;
  expired: boolean;
  channelId: string;
  originalId: string | null;
  user: FakeUser;
  type: number;
}

let counter = 0;
/** Snowflakes in increasing order, with Discord's epoch. */
export function snowflake(): string {
  counter = (counter + 1) % 4096;
  return (((BigInt(Date.now()) - 1420070400000n) << 22n) | BigInt(counter)).toString();
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  if (status === 204) {
    res.writeHead(204).end();
    return;
  }
  const text = JSON.stringify(body);
  res
    .writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    .end(text);
}

function apiError(res: http.ServerResponse, status: number, code: number, message: string): void {
  json(res, status, { message, code });
}

export class FakeDiscord {
  readonly botUser: FakeUser;
  readonly applicationId: string;
  readonly guildId = snowflake();
  readonly calls: RecordedCall[] = [];
  readonly channels = new Map<string, Json>();
  /** Messages per channel (threads included), oldest first. */
  readonly messages = new Map<string, Json[]>();
  readonly users = new Map<string, FakeUser & { admin: boolean }>();
  /** Intents the last IDENTIFY asked for. */
  intents = 0;
  identifies = 0;
  heartbeats = 0;
  interactionWindowMs = 15 * 60_000;
  maxUploadBytes = 10 * 1024 * 1024;
  /** How long enforce_nonce remembers a nonce ("the past few minutes" in Discord's documentation). */
  nonceWindowMs = 5 * 60_000;

  private api!: http.Server;
  private cdn!: http.Server;
  private wss!: WebSocketServer;
  private readonly sockets = new Set<WebSocket>();
  private readonly ready = new Set<WebSocket>();
  private sequence = 0;
  private readonly scripts: Script[] = [];
  private readonly interactions = new Map<string, Interaction>();
  private readonly attachments = new Map<string, { data: Buffer; contentType: string; signature: string }>();
  private readonly cdnSecret = randomBytes(16);
  /** Messages created with a nonce, by `author id:nonce`, for enforce_nonce. */
  private readonly nonces = new Map<string, { message: Json; at: number }>();
  private readonly waiters = new Set<() => void>();
  readonly generalChannelId: string;

  constructor(readonly options: { heartbeatIntervalMs?: number } = {}) {
    this.applicationId = snowflake();
    this.botUser = {
      id: this.applicationId,
      username: 'gill',
      global_name: 'GILL',
      discriminator: '0',
      avatar: null,
      bot: true,
    };
    this.generalChannelId = this.addChannel('general').id as string;
  }

  get apiUrl(): string {
    return `http://127.0.0.1:${(this.api.address() as AddressInfo).port}/api`;
  }

  get cdnUrl(): string {
    return `http://127.0.0.1:${(this.cdn.address() as AddressInfo).port}`;
  }

  async start(): Promise<this> {
    this.api = http.createServer((req, res) => {
      this.handleApi(req, res).catch((error) => apiError(res, 500, 0, String(error)));
    });
    this.wss = new WebSocketServer({ noServer: true });
    this.api.on('upgrade', (req, socket, head) => {
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onSocket(ws, req));
    });
    this.cdn = http.createServer((req, res) => this.handleCdn(req, res));
    await Promise.all([
      new Promise<void>((resolve) => this.api.listen(0, '127.0.0.1', resolve)),
      new Promise<void>((resolve) => this.cdn.listen(0, '127.0.0.1', resolve)),
    ]);
    return this;
  }

  async close(): Promise<void> {
    for (const ws of this.sockets) ws.terminate();
    this.wss.close();
    this.api.closeAllConnections();
    this.cdn.closeAllConnections();
    await Promise.all([
      new Promise((resolve) => this.api.close(resolve)),
      new Promise((resolve) => this.cdn.close(resolve)),
    ]);
  }

  // ----- world ---------------------------------------------------------------------------------------

  /**
   * A text channel. A private one denies View Channel to @everyone (a permission overwrite for the role
   * whose id is the guild's), as Discord's "Private Channel" switch does.
   */
  addChannel(name: string, options: { private?: boolean } = {}): Json {
    const channel = {
      id: snowflake(),
      type: 0,
      guild_id: this.guildId,
      name,
      position: this.channels.size,
      permission_overwrites: options.private
        ? [{ id: this.guildId, type: 0, allow: '0', deny: PERMISSION_VIEW_CHANNEL.toString() }]
        : [],
      parent_id: null,
      nsfw: false,
      rate_limit_per_user: 0,
      last_message_id: null,
    };
    this.channels.set(channel.id, channel);
    this.messages.set(channel.id, []);
    // A channel added while the bot is connected is announced to it (before, GUILD_CREATE lists it).
    this.dispatch('CHANNEL_CREATE', channel);
    return channel;
  }

  /**
   * A person starts a thread in a channel (not from a message), public (type 11) or private (type 12: only
   * its members and moderators see it; the bot is taken to be a member); dispatched as THREAD_CREATE.
   */
  addThread(parentId: string, owner: FakeUser, name: string, options: { private?: boolean } = {}): Json {
    if (!this.channels.has(parentId)) throw new Error(`no channel ${parentId}`);
    const type = options.private ? THREAD_PRIVATE : THREAD_PUBLIC;
    const thread = this.createThread(snowflake(), parentId, owner.id, name, 1440, type);
    this.dispatch('THREAD_CREATE', { ...thread, newly_created: true });
    return thread;
  }

  /** A thread or channel is deleted with its messages: THREAD_DELETE or CHANNEL_DELETE, as Discord sends them. */
  deleteChannel(channelId: string): void {
    const channel = this.channels.get(channelId);
    if (!channel) throw new Error(`no channel ${channelId}`);
    this.channels.delete(channelId);
    this.messages.delete(channelId);
    if (channel.type === THREAD_PUBLIC || channel.type === THREAD_PRIVATE) {
      const { id, guild_id, parent_id, type } = channel;
      this.dispatch('THREAD_DELETE', { id, guild_id, parent_id, type });
    } else {
      this.dispatch('CHANNEL_DELETE', channel);
    }
  }

  /** The author edits a message, keeping only some attachments; dispatched as MESSAGE_UPDATE (the full message). */
  userEditsMessage(
    channelId: string,
    messageId: string,
    edit: { content?: string; keepAttachments?: string[] },
  ): Json {
    const message = this.messages.get(channelId)?.find((m) => m.id === messageId);
    if (!message) throw new Error(`no message ${messageId} in ${channelId}`);
    if (edit.content !== undefined) message.content = edit.content;
    if (edit.keepAttachments)
      message.attachments = (message.attachments as Json[]).filter((a) =>
        edit.keepAttachments!.includes(a.id as string),
      );
    message.edited_timestamp = new Date().toISOString();
    const author = message.author as FakeUser;
    this.dispatch('MESSAGE_UPDATE', { ...this.visible(message), member: this.member(author) });
    return message;
  }

  addUser(username: string, options: { admin?: boolean } = {}): FakeUser {
    const user = {
      id: snowflake(),
      username,
      global_name: username[0]!.toUpperCase() + username.slice(1),
      discriminator: '0',
      avatar: null,
      admin: options.admin ?? false,
    } as const;
    this.users.set(user.id, { ...user });
    const { admin: _, ...publicUser } = user;
    return publicUser;
  }

  private member(user: FakeUser): Json {
    const admin = this.users.get(user.id)?.admin ?? false;
    return {
      roles: [],
      joined_at: new Date(0).toISOString(),
      deaf: false,
      mute: false,
      flags: 0,
      permissions: (admin
        ? PERMISSION_ADMINISTRATOR | PERMISSION_MANAGE_GUILD
        : BigInt(EVERYONE_PERMISSIONS)
      ).toString(),
    };
  }

  /** Serves bytes on the CDN origin; the URL is signed like Discord's and 404s without its query. */
  addAttachment(data: Buffer, filename: string, contentType: string | null): Json {
    const id = snowflake();
    const path = `/attachments/${this.generalChannelId}/${id}/${encodeURIComponent(filename)}`;
    const expires = Math.floor(Date.now() / 1000 + 86400).toString(16);
    const signature = createHmac('sha256', this.cdnSecret).update(`${path}:${expires}`).digest('hex');
    this.attachments.set(path, { data, contentType: contentType ?? 'application/octet-stream', signature });
    const url = `${this.cdnUrl}${path}?ex=${expires}&is=${expires}&hm=${signature}&`;
    return {
      id,
      filename,
      size: data.length,
      url,
      proxy_url: url,
      ...(contentType ? { content_type: contentType } : {}),
    };
  }

  /** A user posts a message; dispatched as MESSAGE_CREATE (blanked as Discord does without the intent). */
  post(options: {
    channelId?: string;
    author: FakeUser;
    content: string;
    attachments?: Json[];
    mentionBot?: boolean;
  }): Json {
    const channelId = options.channelId ?? this.generalChannelId;
    const mentions = options.mentionBot ? [this.botUser] : [];
    const content = options.mentionBot ? `<@${this.botUser.id}> ${options.content}` : options.content;
    const message = this.storeMessage(
      channelId,
      options.author,
      content,
      options.attachments ?? [],
      mentions,
    );
    this.dispatch('MESSAGE_CREATE', { ...this.visible(message), member: this.member(options.author) });
    return message;
  }

  /** Sends the same MESSAGE_CREATE again, as a gateway replay after a resume does. */
  redeliver(message: Json): void {
    const author = message.author as FakeUser;
    this.dispatch('MESSAGE_CREATE', { ...this.visible(message), member: this.member(author) });
  }

  deleteMessage(channelId: string, messageId: string): void {
    const list = this.messages.get(channelId) ?? [];
    this.messages.set(
      channelId,
      list.filter((m) => m.id !== messageId),
    );
    this.dispatch('MESSAGE_DELETE', { id: messageId, channel_id: channelId, guild_id: this.guildId });
  }

  private storeMessage(
    channelId: string,
    author: FakeUser,
    content: string,
    attachments: Json[],
    mentions: FakeUser[],
    extra: Json = {},
  ): Json {
    const message: Json = {
      id: snowflake(),
      type: 0,
      channel_id: channelId,
      guild_id: this.guildId,
      author,
      content,
      timestamp: new Date().toISOString(),
      edited_timestamp: null,
      tts: false,
      mention_everyone: false,
      mentions,
      mention_roles: [],
      attachments,
      embeds: [],
      components: [],
      pinned: false,
      flags: 0,
      ...extra,
    };
    const list = this.messages.get(channelId);
    if (!list) throw new Error(`no channel ${channelId}`);
    list.push(message);
    return message;
  }

  /** What the bot may see of a message, given its intents. */
  private visible(message: Json): Json {
    if (this.intents & MESSAGE_CONTENT_INTENT) return message;
    const author = message.author as FakeUser;
    const mentioned = (message.mentions as FakeUser[]).some((u) => u.id === this.botUser.id);
    if (author.id === this.botUser.id || mentioned) return message;
    return { ...message, content: '', attachments: [], embeds: [], components: [] };
  }

  /** A slash command or button click; dispatched as INTERACTION_CREATE. Returns its id and token. */
  interact(options: {
    user: FakeUser;
    channelId?: string;
    command?: { name: string; options?: Json[] };
    customId?: string;
    messageId?: string;
  }): { id: string; token: string } {
    const channelId = options.channelId ?? this.generalChannelId;
    const channel = this.channels.get(channelId);
    const id = snowflake();
    const token = `itok.${randomBytes(12).toString('hex')}`;
    this.interactions.set(token, {
      id,
      token,
      createdAt: Date.now(),
      acknowledged: false,
      expired: false,
      channelId,
      originalId: null,
      user: options.user,
      type: options.command ? 2 : 3,
    });
    const base = {
      id,
      application_id: this.applicationId,
      guild_id: this.guildId,
      channel_id: channelId,
      channel,
      member: { ...this.member(options.user), user: options.user },
      token,
      version: 1,
      locale: 'en-US',
      guild_locale: 'en-US',
      app_permissions: EVERYONE_PERMISSIONS,
      entitlements: [],
      authorizing_integration_owners: { 0: this.guildId },
      context: 0,
      attachment_size_limit: this.maxUploadBytes,
    };
    if (options.command) {
      this.dispatch('INTERACTION_CREATE', {
        ...base,
        type: 2,
        data: {
          id: snowflake(),
          name: options.command.name,
          type: 1,
          options: options.command.options ?? [],
        },
      });
    } else {
      const message = (this.messages.get(channelId) ?? []).find((m) => m.id === options.messageId);
      this.dispatch('INTERACTION_CREATE', {
        ...base,
        type: 3,
        message,
        data: { custom_id: options.customId, component_type: 2 },
      });
    }
    return { id, token };
  }

  /** Makes the interaction's token invalid, as it is 15 minutes after the interaction. */
  expireInteraction(token: string): void {
    const interaction = this.interactions.get(token);
    if (interaction) interaction.expired = true;
  }

  /** The next `times` matching requests answer 429 with Retry-After (seconds). */
  rateLimitNext(method: string, path: RegExp, retryAfterSeconds: number, times = 1): void {
    this.scripts.push({
      method,
      path,
      times,
      respond: (res) => {
        const body = JSON.stringify({
          message: 'You are being rate limited.',
          retry_after: retryAfterSeconds,
          global: false,
        });
        res
          .writeHead(429, {
            'content-type': 'application/json',
            'retry-after': String(retryAfterSeconds),
            'x-ratelimit-scope': 'user',
            'x-ratelimit-bucket': 'fake-bucket',
            'x-ratelimit-limit': '5',
            'x-ratelimit-remaining': '0',
            'x-ratelimit-reset-after': String(retryAfterSeconds),
          })
          .end(body);
      },
    });
  }

  /**
   * The next `times` matching requests fail with a Discord error (e.g. 403 / 50013 Missing Permissions);
   * `when` narrows the match to some requests (e.g. only those carrying files).
   */
  failNext(
    method: string,
    path: RegExp,
    status: number,
    code: number,
    message: string,
    times = 1,
    when?: (call: RecordedCall) => boolean,
  ): void {
    this.scripts.push({ method, path, times, when, respond: (res) => apiError(res, status, code, message) });
  }

  // ----- observation -----------------------------------------------------------------------------------

  /** Resolves when predicate holds, checked after every REST call and gateway message. */
  async waitFor<T>(
    probe: () => T | undefined | null | false,
    timeoutMs = 10_000,
    what = 'condition',
  ): Promise<T> {
    const first = probe();
    if (first) return first;
    return new Promise<T>((resolve, reject) => {
      const check = () => {
        const value = probe();
        if (value) {
          cleanup();
          resolve(value);
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
    });
  }

  callsTo(method: string, path: RegExp): RecordedCall[] {
    return this.calls.filter((c) => c.method === method && path.test(c.path));
  }

  /** Messages the bot authored in a channel (interaction responses included). */
  botMessages(channelId: string): Json[] {
    return (this.messages.get(channelId) ?? []).filter((m) => (m.author as FakeUser).id === this.botUser.id);
  }

  /** The interaction's response message (its @original). */
  original(token: string): Json | undefined {
    const interaction = this.interactions.get(token);
    if (!interaction?.originalId) return undefined;
    return this.messages.get(interaction.channelId)?.find((m) => m.id === interaction.originalId);
  }

  private notify(): void {
    for (const waiter of [...this.waiters]) waiter();
  }

  // ----- gateway ---------------------------------------------------------------------------------------

  private send(ws: WebSocket, payload: Json): void {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(payload));
  }

  dispatch(t: string, d: Json): void {
    for (const ws of this.ready) this.send(ws, { op: 0, t, s: ++this.sequence, d });
  }

  private onSocket(ws: WebSocket, req: http.IncomingMessage): void {
    const query = new URL(req.url ?? '/', 'http://x').searchParams;
    if (query.get('v') !== '10' || query.get('encoding') !== 'json') {
      ws.close(4012, 'Invalid API version');
      return;
    }
    this.sockets.add(ws);
    ws.on('close', () => {
      this.sockets.delete(ws);
      this.ready.delete(ws);
    });
    this.send(ws, { op: 10, d: { heartbeat_interval: this.options.heartbeatIntervalMs ?? 1000 } });
    ws.on('message', (raw) => {
      const payload = JSON.parse(String(raw)) as { op: number; d: Json };
      if (payload.op === 1) {
        this.heartbeats++;
        this.send(ws, { op: 11 });
      } else if (payload.op === 2) {
        this.onIdentify(ws, payload.d);
      }
      this.notify();
    });
  }

  private onIdentify(ws: WebSocket, d: Json): void {
    this.identifies++;
    this.intents = Number(d.intents);
    this.ready.add(ws);
    const sessionId = randomBytes(8).toString('hex');
    this.send(ws, {
      op: 0,
      t: 'READY',
      s: ++this.sequence,
      d: {
        v: 10,
        user: this.botUser,
        guilds: [{ id: this.guildId, unavailable: true }],
        session_id: sessionId,
        resume_gateway_url: this.apiUrl.replace(/^http/, 'ws').replace(/\/api$/, ''),
        shard: [0, 1],
        application: { id: this.applicationId, flags: 0 },
      },
    });
    const isThread = (c: Json) => c.type === THREAD_PUBLIC || c.type === THREAD_PRIVATE;
    const threads = [...this.channels.values()].filter(isThread);
    this.send(ws, {
      op: 0,
      t: 'GUILD_CREATE',
      s: ++this.sequence,
      d: {
        id: this.guildId,
        name: 'Test guild',
        icon: null,
        owner_id: [...this.users.values()].find((u) => u.admin)?.id ?? this.botUser.id,
        unavailable: false,
        member_count: this.users.size + 1,
        large: false,
        features: [],
        roles: [
          {
            id: this.guildId,
            name: '@everyone',
            permissions: EVERYONE_PERMISSIONS,
            position: 0,
            color: 0,
            hoist: false,
            managed: false,
            mentionable: false,
          },
        ],
        emojis: [],
        stickers: [],
        channels: [...this.channels.values()].filter((c) => !isThread(c)),
        threads,
        members: [{ ...this.member(this.botUser), user: this.botUser }],
        presences: [],
        voice_states: [],
        stage_instances: [],
        guild_scheduled_events: [],
        premium_tier: 0,
        joined_at: new Date(0).toISOString(),
      },
    });
  }

  // ----- CDN ---------------------------------------------------------------------------------------------

  private handleCdn(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', this.cdnUrl);
    const entry = this.attachments.get(url.pathname);
    if (!entry || url.searchParams.get('hm') !== entry.signature) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('This content is no longer available.');
      return;
    }
    res
      .writeHead(200, { 'content-type': entry.contentType, 'content-length': entry.data.length })
      .end(entry.data);
  }

  // ----- REST --------------------------------------------------------------------------------------------

  private async readBody(
    req: http.IncomingMessage,
  ): Promise<{ body: Json | null; files: RecordedCall['files'] }> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks);
    const type = req.headers['content-type'] ?? '';
    if (!raw.length) return { body: null, files: [] };
    if (type.startsWith('multipart/form-data')) {
      const form = await new Response(raw, { headers: { 'content-type': type } }).formData();
      const files: RecordedCall['files'] = [];
      let body: Json | null = null;
      for (const [key, value] of form.entries()) {
        if (key === 'payload_json') body = JSON.parse(String(value)) as Json;
        else if (typeof value !== 'string') {
          files.push({
            name: value.name,
            data: Buffer.from(await value.arrayBuffer()),
            contentType: value.type,
          });
        }
      }
      return { body, files };
    }
    return { body: JSON.parse(raw.toString()) as Json, files: [] };
  }

  private async handleApi(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const method = req.method ?? 'GET';
    if (!url.pathname.startsWith('/api/v10/')) return apiError(res, 404, 0, '404: Not Found');
    const path = decodeURIComponent(url.pathname.slice('/api/v10'.length));
    const { body, files } = await this.readBody(req);
    const call: RecordedCall = {
      method,
      path,
      query: url.searchParams,
      body,
      files,
      status: 0,
      at: Date.now(),
    };
    this.calls.push(call);
    const status = (code: number) => {
      call.status = code;
      this.notify();
    };
    const original = res.writeHead.bind(res);
    res.writeHead = ((code: number, ...rest: unknown[]) => {
      const result = (original as (...a: unknown[]) => http.ServerResponse)(code, ...rest);
      status(code);
      return result;
    }) as typeof res.writeHead;

    if (req.headers.authorization !== undefined && !/^Bot \S+$/.test(req.headers.authorization)) {
      return apiError(res, 401, 0, '401: Unauthorized');
    }
    const script = this.scripts.find(
      (s) => s.method === method && s.path.test(path) && s.times > 0 && (s.when?.(call) ?? true),
    );
    if (script) {
      script.times--;
      return script.respond(res);
    }
    this.route(method, path, url.searchParams, body, files, res);
  }

  private route(
    method: string,
    path: string,
    query: URLSearchParams,
    body: Json | null,
    files: RecordedCall['files'],
    res: http.ServerResponse,
  ) {
    const data = body ?? {};
    const routes: [string | null, RegExp, (m: RegExpExecArray) => void][] = [
      [
        'GET',
        /^\/gateway\/bot$/,
        () =>
          json(res, 200, {
            url: this.apiUrl.replace(/^http/, 'ws').replace(/\/api$/, ''),
            shards: 1,
            session_start_limit: { total: 1000, remaining: 999, reset_after: 86_400_000, max_concurrency: 1 },
          }),
      ],
      [
        'PUT',
        /^\/applications\/(\d+)(?:\/guilds\/(\d+))?\/commands$/,
        (m) =>
          json(
            res,
            200,
            (body as unknown as Json[]).map((c) => ({
              ...c,
              id: snowflake(),
              application_id: m[1],
              version: snowflake(),
            })),
          ),
      ],
      [
        'POST',
        /^\/interactions\/(\d+)\/([^/]+)\/callback$/,
        (m) => this.interactionCallback(m[2]!, data, files, res),
      ],
      [
        null,
        /^\/webhooks\/(\d+)\/([^/]+)(?:\/messages\/([^/]+))?$/,
        (m) => this.webhook(method, m[2]!, m[3], data, files, res),
      ],
      [
        'POST',
        /^\/channels\/(\d+)\/messages\/(\d+)\/threads$/,
        (m) => this.startThread(m[1]!, m[2]!, data, res),
      ],
      [
        'POST',
        /^\/channels\/(\d+)\/typing$/,
        (m) =>
          this.channels.has(m[1]!) ? json(res, 204, null) : apiError(res, 404, 10003, 'Unknown Channel'),
      ],
      [
        null,
        /^\/channels\/(\d+)\/messages(?:\/(\d+))?$/,
        (m) => this.channelMessages(method, m[1]!, m[2], query, data, files, res),
      ],
      [
        'GET',
        /^\/channels\/(\d+)$/,
        (m) => {
          const channel = this.channels.get(m[1]!);
          if (channel) json(res, 200, channel);
          else apiError(res, 404, 10003, 'Unknown Channel');
        },
      ],
    ];
    for (const [wanted, pattern, handle] of routes) {
      const match = pattern.exec(path);
      if (match && (wanted === null || wanted === method)) {
        handle(match);
        return;
      }
    }
    apiError(res, 404, 0, `404: Not Found (${method} ${path})`);
  }

  /** Checks a message body as Discord does; returns an error sender, or null when valid. */
  private invalidMessage(
    body: Json,
    files: RecordedCall['files'],
    res: http.ServerResponse,
    creating: boolean,
  ): boolean {
    const content = typeof body.content === 'string' ? body.content : '';
    if (content.length > 2000) {
      apiError(
        res,
        400,
        50035,
        'Invalid Form Body: content[BASE_TYPE_MAX_LENGTH]: Must be 2000 or fewer in length.',
      );
      return true;
    }
    if (files.some((f) => f.data.length > this.maxUploadBytes)) {
      apiError(res, 413, 40005, 'Request entity too large');
      return true;
    }
    const nonce = body.nonce;
    if (
      nonce !== undefined &&
      !(typeof nonce === 'string' && nonce.length <= 25) &&
      !(typeof nonce === 'number' && Number.isInteger(nonce))
    ) {
      apiError(
        res,
        400,
        50035,
        'Invalid Form Body: nonce[BASE_TYPE_MAX_LENGTH]: Must be 25 or fewer in length.',
      );
      return true;
    }
    const hasEmbeds = Array.isArray(body.embeds) && body.embeds.length > 0;
    if (creating && !content && !files.length && !hasEmbeds) {
      apiError(res, 400, 50006, 'Cannot send an empty message');
      return true;
    }
    return false;
  }

  private attachmentsFrom(files: RecordedCall['files']): Json[] {
    return files.map((f) => ({
      id: snowflake(),
      filename: f.name,
      size: f.data.length,
      content_type: f.contentType,
      url: `${this.cdnUrl}/bot/${f.name}`,
    }));
  }

  private botMessage(channelId: string, body: Json, files: RecordedCall['files'], extra: Json = {}): Json {
    const message = this.storeMessage(
      channelId,
      this.botUser,
      String(body.content ?? ''),
      this.attachmentsFrom(files),
      [],
      {
        components: body.components ?? [],
        ...(body.message_reference ? { message_reference: body.message_reference } : {}),
        ...extra,
      },
    );
    this.dispatch('MESSAGE_CREATE', message);
    return message;
  }

  /** With enforce_nonce, the bot's message created with the same nonce in the window, if there is one. */
  private enforcedNonce(body: Json): Json | undefined {
    if (body.enforce_nonce !== true || body.nonce === undefined) return undefined;
    const earlier = this.nonces.get(`${this.botUser.id}:${String(body.nonce)}`);
    if (!earlier || Date.now() - earlier.at > this.nonceWindowMs) return undefined;
    return earlier.message;
  }

  private rememberNonce(message: Json, body: Json): void {
    if (body.nonce === undefined) return;
    this.nonces.set(`${this.botUser.id}:${String(body.nonce)}`, { message, at: Date.now() });
  }

  private editMessage(message: Json, body: Json, files: RecordedCall['files']): Json {
    if ('content' in body) message.content = body.content;
    if ('components' in body) message.components = body.components;
    if (files.length || 'attachments' in body) message.attachments = this.attachmentsFrom(files);
    // Editing ends the "thinking" state (LOADING); EPHEMERAL stays.
    message.flags = Number(message.flags) & ~128;
    message.edited_timestamp = new Date().toISOString();
    return message;
  }

  private channelMessages(
    method: string,
    channelId: string,
    messageId: string | undefined,
    query: URLSearchParams,
    body: Json,
    files: RecordedCall['files'],
    res: http.ServerResponse,
  ) {
    const list = this.messages.get(channelId);
    if (!list) return apiError(res, 404, 10003, 'Unknown Channel');
    if (method === 'GET' && !messageId) {
      const limit = Math.min(100, Number(query.get('limit') ?? 50));
      return json(
        res,
        200,
        list
          .slice(-limit)
          .reverse()
          .map((m) => this.visible(m)),
      );
    }
    const message = messageId ? list.find((m) => m.id === messageId) : undefined;
    if (messageId && !message) return apiError(res, 404, 10008, 'Unknown Message');
    if (method === 'GET') return json(res, 200, this.visible(message!));
    if (method === 'POST' && !messageId) {
      if (this.invalidMessage(body, files, res, true)) return;
      const earlier = this.enforcedNonce(body);
      if (earlier) return json(res, 200, earlier);
      const message = this.botMessage(
        channelId,
        body,
        files,
        body.nonce === undefined ? {} : { nonce: body.nonce },
      );
      this.rememberNonce(message, body);
      return json(res, 200, message);
    }
    if (method === 'PATCH' && message) {
      if ((message.author as FakeUser).id !== this.botUser.id) {
        return apiError(res, 403, 50005, 'Cannot edit a message authored by another user');
      }
      if (this.invalidMessage(body, files, res, false)) return;
      return json(res, 200, this.editMessage(message, body, files));
    }
    if (method === 'DELETE' && message) {
      list.splice(list.indexOf(message), 1);
      return json(res, 204, null);
    }
    apiError(res, 405, 0, '405: Method Not Allowed');
  }

  /** A thread channel (public unless given type 12), registered with an empty message list. */
  private createThread(
    id: string,
    parentId: string,
    ownerId: string,
    name: string,
    autoArchive: number,
    type = THREAD_PUBLIC,
  ) {
    const thread = {
      id,
      type,
      guild_id: this.guildId,
      parent_id: parentId,
      owner_id: ownerId,
      name,
      last_message_id: null,
      message_count: 0,
      member_count: 1,
      rate_limit_per_user: 0,
      flags: 0,
      thread_metadata: {
        archived: false,
        auto_archive_duration: autoArchive,
        archive_timestamp: new Date().toISOString(),
        locked: false,
      },
    };
    this.channels.set(id, thread);
    this.messages.set(id, []);
    return thread;
  }

  private startThread(channelId: string, messageId: string, body: Json, res: http.ServerResponse) {
    const parent = this.channels.get(channelId);
    const message = this.messages.get(channelId)?.find((m) => m.id === messageId);
    if (!parent || !message) return apiError(res, 404, 10008, 'Unknown Message');
    if (this.channels.has(messageId)) {
      return apiError(res, 400, 160004, 'A thread has already been created for this message');
    }
    const thread = this.createThread(
      messageId,
      channelId,
      this.botUser.id,
      String(body.name ?? 'thread'),
      Number(body.auto_archive_duration ?? 1440),
    );
    message.thread = thread;
    // The first message of a thread started from a message is an empty system message pointing at it.
    this.storeMessage(thread.id, this.botUser, '', [], [], {
      type: 21,
      message_reference: { channel_id: channelId, message_id: messageId, guild_id: this.guildId },
    });
    this.dispatch('THREAD_CREATE', { ...thread, newly_created: true });
    json(res, 201, thread);
  }

  private interactionCallback(
    token: string,
    body: Json,
    files: RecordedCall['files'],
    res: http.ServerResponse,
  ) {
    const interaction = this.interactions.get(token);
    if (!interaction) return apiError(res, 404, 10062, 'Unknown interaction');
    if (interaction.acknowledged)
      return apiError(res, 400, 40060, 'Interaction has already been acknowledged.');
    if (Date.now() - interaction.createdAt > 3000) return apiError(res, 404, 10062, 'Unknown interaction');
    interaction.acknowledged = true;
    const type = Number(body.type);
    const data = (body.data ?? {}) as Json;
    if (type === 5 || type === 4) {
      if (type === 4 && this.invalidMessage(data, files, res, true)) return;
      const message = this.botMessage(interaction.channelId, type === 5 ? { content: '' } : data, files, {
        flags: type === 5 ? 128 | Number(data.flags ?? 0) : Number(data.flags ?? 0),
        interaction_metadata: {
          id: interaction.id,
          type: interaction.type,
          user: interaction.user,
          authorizing_integration_owners: { 0: this.guildId },
        },
      });
      interaction.originalId = message.id as string;
    }
    json(res, 204, null);
  }

  private webhook(
    method: string,
    token: string,
    messageId: string | undefined,
    body: Json,
    files: RecordedCall['files'],
    res: http.ServerResponse,
  ) {
    const interaction = this.interactions.get(token);
    if (!interaction) return apiError(res, 404, 10015, 'Unknown Webhook');
    if (interaction.expired || Date.now() - interaction.createdAt > this.interactionWindowMs) {
      return apiError(res, 401, 50027, 'Invalid Webhook Token');
    }
    const list = this.messages.get(interaction.channelId)!;
    if (!messageId && method === 'POST') {
      if (this.invalidMessage(body, files, res, true)) return;
      return json(
        res,
        200,
        this.botMessage(interaction.channelId, body, files, { webhook_id: this.applicationId }),
      );
    }
    const id = messageId === '@original' ? interaction.originalId : messageId;
    const message = list.find((m) => m.id === id);
    if (!message) return apiError(res, 404, 10008, 'Unknown Message');
    if (method === 'GET') return json(res, 200, message);
    if (method === 'PATCH') {
      if (this.invalidMessage(body, files, res, false)) return;
      return json(res, 200, this.editMessage(message, body, files));
    }
    if (method === 'DELETE') {
      list.splice(list.indexOf(message), 1);
      return json(res, 204, null);
    }
    apiError(res, 405, 0, '405: Method Not Allowed');
  }
}
