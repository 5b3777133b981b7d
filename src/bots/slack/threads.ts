import type { webApi } from '@slack/bolt';

type WebClient = webApi.WebClient;

/**
 * Slack threads as the bot has seen them, built from events rather than by re-reading each thread:
 * conversations.replies is limited to 1 request a minute for some apps (platforms.md §3), so it is called
 * at most once per thread per process, for threads that began before the process saw them.
 */

export interface SlackFile {
  id: string;
  name?: string;
  title?: string;
  mimetype?: string;
  size?: number;
  url_private?: string;
  url_private_download?: string;
}

export interface SlackMessage {
  ts: string;
  /** Absent on the thread's root. */
  threadTs?: string;
  userId: string;
  /** True for the bot's own messages. */
  fromBot: boolean;
  text: string;
  files: SlackFile[];
  /** When the message was last edited (Slack's `edited.ts`); absent if never. */
  editedTs?: string;
}

interface Thread {
  messages: SlackMessage[];
  /** Whether the root and everything since were seen (from events or one conversations.replies call). */
  complete: boolean;
  botInThread: boolean;
}

export interface ThreadCacheOptions {
  maxThreads?: number;
  maxMessagesPerThread?: number;
}

export class ThreadCache {
  private readonly threads = new Map<string, Thread>();
  private readonly maxThreads: number;
  private readonly maxMessages: number;
  private botUserId = '';

  constructor(
    private readonly client: WebClient,
    options: ThreadCacheOptions = {},
  ) {
    this.maxThreads = options.maxThreads ?? 2000;
    this.maxMessages = options.maxMessagesPerThread ?? 200;
  }

  setBotUserId(id: string): void {
    this.botUserId = id;
  }

  /** Records a message from an event or one the bot posted. A message without threadTs starts a thread. */
  record(channel: string, message: SlackMessage): void {
    const rootTs = message.threadTs ?? message.ts;
    let thread = this.touch(channel, rootTs);
    if (!thread) {
      thread = {
        messages: [],
        complete: message.threadTs === undefined || message.threadTs === message.ts,
        botInThread: false,
      };
      this.put(channel, rootTs, thread);
    }
    if (message.fromBot) thread.botInThread = true;
    if (thread.messages.some((m) => m.ts === message.ts)) return;
    thread.messages.push(message);
    thread.messages.sort((a, b) => Number(a.ts) - Number(b.ts));
    if (thread.messages.length > this.maxMessages)
      thread.messages.splice(0, thread.messages.length - this.maxMessages);
  }

  /**
   * Applies an edit to a message already seen: its new text, and its files when the edit lists them.
   * An edit older than the one already applied (a late retry) changes nothing. Messages of threads not
   * seen yet are left alone: reading the thread later gives their current text.
   */
  edit(channel: string, message: SlackMessage): boolean {
    const thread = this.threads.get(key(channel, message.threadTs ?? message.ts));
    const cached = thread?.messages.find((m) => m.ts === message.ts);
    if (!cached) return false;
    if (cached.editedTs && !(message.editedTs && Number(message.editedTs) > Number(cached.editedTs)))
      return false;
    cached.text = message.text;
    if (message.files.length) cached.files = message.files;
    if (message.editedTs) cached.editedTs = message.editedTs;
    return true;
  }

  /** Removes a deleted message, so it is not used as context again. */
  forget(channel: string, ts: string, threadTs?: string): void {
    const thread = this.threads.get(key(channel, threadTs ?? ts));
    if (!thread) return;
    thread.messages = thread.messages.filter((m) => m.ts !== ts);
  }

  /** Marks a thread the bot was mentioned in, so follow-ups in it are answered without a mention. */
  join(channel: string, rootTs: string): void {
    const thread = this.touch(channel, rootTs);
    if (thread) thread.botInThread = true;
  }

  /** Whether the bot takes part in the thread; reads the thread once when it began before this process saw it. */
  async botInThread(channel: string, rootTs: string): Promise<boolean> {
    const thread = await this.load(channel, rootTs);
    return thread.botInThread;
  }

  /** The thread's messages, oldest first (the newest `limit`). */
  async messages(channel: string, rootTs: string, limit: number): Promise<SlackMessage[]> {
    const thread = await this.load(channel, rootTs);
    return thread.messages.slice(-limit);
  }

  private async load(channel: string, rootTs: string): Promise<Thread> {
    const known = this.touch(channel, rootTs);
    if (known?.complete) return known;
    const seen = known?.messages ?? [];
    const thread: Thread = { messages: [], complete: true, botInThread: known?.botInThread ?? false };
    const answer = await this.client.conversations.replies({ channel, ts: rootTs, limit: this.maxMessages });
    for (const raw of answer.messages ?? []) {
      // A deleted root that had replies stays in the thread as a tombstone: it is not conversation.
      if ((raw as { subtype?: string }).subtype === 'tombstone') continue;
      const message = fromApi(raw as Record<string, unknown>, this.botUserId);
      if (message.fromBot) thread.botInThread = true;
      thread.messages.push(message);
    }
    // Events that arrived while the request was in flight are kept.
    for (const message of seen)
      if (!thread.messages.some((m) => m.ts === message.ts)) thread.messages.push(message);
    thread.messages.sort((a, b) => Number(a.ts) - Number(b.ts));
    if (thread.messages.length > this.maxMessages)
      thread.messages.splice(0, thread.messages.length - this.maxMessages);
    this.put(channel, rootTs, thread);
    return thread;
  }

  private touch(channel: string, rootTs: string): Thread | undefined {
    const k = key(channel, rootTs);
    const thread = this.threads.get(k);
    if (thread) {
      // Map keeps insertion order: re-inserting makes it the most recently used.
      this.threads.delete(k);
      this.threads.set(k, thread);
    }
    return thread;
  }

  private put(channel: string, rootTs: string, thread: Thread): void {
    this.threads.delete(key(channel, rootTs));
    this.threads.set(key(channel, rootTs), thread);
    if (this.threads.size > this.maxThreads) this.threads.delete(this.threads.keys().next().value as string);
  }
}

function key(channel: string, rootTs: string): string {
  return `${channel}/${rootTs}`;
}

/** A message as events and conversations.replies describe it. */
export function fromApi(raw: Record<string, unknown>, botUserId: string): SlackMessage {
  const userId = String(raw.user ?? raw.bot_id ?? '');
  const threadTs = typeof raw.thread_ts === 'string' && raw.thread_ts !== raw.ts ? raw.thread_ts : undefined;
  const editedTs = (raw.edited as { ts?: unknown } | undefined)?.ts;
  return {
    ts: String(raw.ts),
    ...(threadTs ? { threadTs } : {}),
    userId,
    fromBot: userId === botUserId || (raw.bot_id !== undefined && raw.user === botUserId),
    text: typeof raw.text === 'string' ? raw.text : '',
    files: Array.isArray(raw.files) ? (raw.files as SlackFile[]) : [],
    ...(typeof editedTs === 'string' ? { editedTs } : {}),
  };
}
