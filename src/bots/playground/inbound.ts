import { type CommunityRef, MAX_PROMPT_CHARS, UserInputError } from '../../jobs.ts';
import type { Logger } from '../../log.ts';
import type { SubmitOutcome } from '../core/bot-core.ts';
import { BUTTON_LABELS, parseButtonId } from '../core/buttons.ts';
import { parseGillText } from '../core/commands.ts';
import type { Bot } from '../core/start.ts';
import { parseFind, parseImagine } from '../core/text-commands.ts';
import { buildTurn, type Command, type InboundTurn, type ThreadMessage } from '../core/turn.ts';
import { PlaygroundRefusal, uploadRefusal } from './errors.ts';
import {
  isMessageId,
  type PlaygroundMessage,
  type PlaygroundMessages,
  type PostedImage,
} from './messages.ts';
import type { PlaygroundAdapter } from './outbound.ts';
import type { UploadedFile, UploadShelf } from './uploads.ts';

/**
 * Posts and button presses from the page become Turns for the core, as Discord and Slack events do:
 * `@gill` in a message (or any message in a thread the bot answers in) is a chat turn on the thread,
 * `/imagine`, `/find` and `/gill` are the commands, and the person at the keyboard is the admin. Bad
 * input is refused before anything is posted, with a message for the page.
 */

export const BOT_NAME = 'gill';
/** Longer messages are refused rather than cut: the model reads at most this much of a prompt anyway. */
export const MAX_MESSAGE_CHARS = MAX_PROMPT_CHARS;
/** Images per message: a chat turn looks at no more than this many. */
export const MAX_FILES = 4;
/** Thread messages read for a chat turn; the core trims them to the community's setting. */
const THREAD_MESSAGES = 100;

const MENTION = /(^|[^\w@])@gill\b/gi;
const COMMAND = /^\/([a-z]+)\b\s*([\s\S]*)$/i;
const USER_ID = /^[\w-]{1,64}$/;
const CLIENT_KEY = /^[\w-]{8,64}$/;

export interface PageUser {
  id: string;
  name: string;
}

export interface PostInput {
  text: string;
  threadId?: string;
  clientKey: string;
  user: PageUser;
  files: UploadedFile[];
}

export interface PostResult {
  message: PlaygroundMessage;
  /** The thread the answer (if any) goes to. */
  threadId: string;
  /** Whether the bot answers (a job was started or an answer posted), so the page can open the thread. */
  answering: boolean;
  /** Something only the sender sees: why the bot did not answer. */
  notice?: string;
}

export interface InboundDeps {
  bot: Bot;
  messages: PlaygroundMessages;
  adapter: PlaygroundAdapter;
  uploads: UploadShelf;
  logger: Logger;
  community: CommunityRef;
  communityId: string;
  channelId: string;
}

export function checkUser(user: { id?: unknown; name?: unknown }): PageUser {
  const id = typeof user.id === 'string' ? user.id : '';
  if (!USER_ID.test(id))
    throw new PlaygroundRefusal(
      'The request has no valid userId (1 to 64 letters, digits, _ or -); if you are on the page, reload it.',
    );
  const name = typeof user.name === 'string' ? user.name.replace(/\s+/g, ' ').trim().slice(0, 40) : '';
  return { id, name: name || 'you' };
}

export function checkClientKey(key: unknown): string {
  if (typeof key !== 'string' || !CLIENT_KEY.test(key))
    throw new PlaygroundRefusal(
      'The request has no valid clientKey (8 to 64 letters, digits, _ or -, one per message); if you are on the page, reload it.',
    );
  return key;
}

/** What the text asks for: a command, a chat turn (mentions), or nothing (a plain post). */
function commandOf(text: string, channelId: string): Command | 'mention' | null {
  const command = COMMAND.exec(text.trim());
  if (command) {
    const [, name, rest = ''] = command;
    switch (name!.toLowerCase()) {
      case 'imagine':
        return parseImagine(rest);
      case 'find':
        return parseFind(rest);
      case 'gill':
        return parseGillText(rest, channelId);
      default:
        throw new UserInputError(
          `There is no command /${name}. Try /imagine <prompt>, /find <what> or /gill help, or mention @${BOT_NAME}.`,
        );
    }
  }
  MENTION.lastIndex = 0;
  return MENTION.test(text) ? 'mention' : null;
}

function withoutMention(text: string): string {
  return text
    .replace(MENTION, '$1')
    .replace(/[ \t]+/g, ' ')
    .trim();
}

/** The one place a playground Turn is made: in its thread; the person at this machine runs the playground. */
export function playgroundTurn(
  deps: Pick<InboundDeps, 'community' | 'channelId'>,
  user: PageUser,
  threadId: string,
  command: Command,
  messages: ThreadMessage[],
  idempotencyKey: string,
  data: Record<string, unknown>,
): InboundTurn {
  return buildTurn(
    'playground',
    {
      community: deps.community,
      // Only the person at this machine, or beyond loopback a holder of GILL_PLAYGROUND_TOKEN (server.ts),
      // reaches the playground: they run it, so they may change its settings.
      user: { id: user.id, displayName: user.name, isAdmin: true },
      channelId: deps.channelId,
      threadId,
      scope: { channelId: deps.channelId, threadId: null },
      command,
      messages,
      idempotencyKey,
    },
    { userId: user.id, ...data },
  );
}

/** A person's message as the core reads it; null for the bot's (its turns come from its finished jobs). */
function threadMessage(uploads: UploadShelf, message: PlaygroundMessage): ThreadMessage | null {
  if (message.role !== 'user') return null;
  return {
    id: message.id,
    role: 'user',
    authorId: message.authorId,
    authorName: message.authorName,
    text: withoutMention(message.body),
    attachments: message.attachments.map((image) => uploads.attachment(image)),
  };
}

/** Checks a post's size before anything is stored; throws the refusal the page shows. */
function checkPost(text: string, files: UploadedFile[]): void {
  if (!text.trim() && files.length === 0) {
    throw new PlaygroundRefusal('The message is empty: write something or attach an image.');
  }
  if (text.length > MAX_MESSAGE_CHARS) {
    throw new PlaygroundRefusal(
      `The message is ${text.length.toLocaleString('en-US')} characters long; the limit is ${MAX_MESSAGE_CHARS.toLocaleString('en-US')}.`,
      413,
    );
  }
  if (files.length > MAX_FILES) {
    throw new PlaygroundRefusal(
      `${files.length} images were attached; a message takes at most ${MAX_FILES}.`,
      413,
    );
  }
}

export class PlaygroundInbound {
  constructor(private readonly deps: InboundDeps) {}

  private async conversation(rootId: string, upTo: PlaygroundMessage): Promise<ThreadMessage[]> {
    const thread = await this.deps.messages.thread(rootId, THREAD_MESSAGES);
    return thread
      .filter((m) => Number(m.id) <= Number(upTo.id))
      .flatMap((m) => {
        const item = threadMessage(this.deps.uploads, m);
        return item ? [item] : [];
      });
  }

  /** Shows an immediate answer in the thread; returns the notice for the sender when refused. */
  private async answer(outcome: SubmitOutcome, turn: InboundTurn, answerKey: string) {
    if (outcome.status === 'refused') return `⚠️ ${outcome.message}`;
    if (outcome.status !== 'answered') return undefined; // accepted jobs were announced by bot.submit
    const { message } = await this.deps.messages.post({
      communityId: this.deps.communityId,
      channelId: turn.channelId,
      threadId: turn.threadId!,
      role: 'assistant',
      authorId: BOT_NAME,
      authorName: BOT_NAME,
      body: outcome.text,
      clientKey: `answer:${answerKey}`,
    });
    this.deps.adapter.publish(message);
    return undefined;
  }

  private async ingest(files: UploadedFile[]): Promise<PostedImage[]> {
    const images: PostedImage[] = [];
    for (const file of files) {
      try {
        images.push(await this.deps.uploads.ingest(file));
      } catch (error) {
        throw uploadRefusal(error);
      }
    }
    return images;
  }

  /** The thread a post answers in: null for a post in the channel; refused when it no longer exists. */
  private async rootOf(threadId: string | undefined): Promise<PlaygroundMessage | null> {
    if (threadId === undefined) return null;
    const root = await this.deps.messages.get(threadId);
    if (!root || root.threadId !== null || root.channelId !== this.deps.channelId) {
      throw new PlaygroundRefusal('That thread no longer exists.', 404);
    }
    return root;
  }

  /** Offers a post's images to the index; the notice for the sender names those not taken. */
  private async index(
    message: PlaygroundMessage,
    attachments: PostedImage[],
    threadId: string,
    user: PageUser,
  ) {
    const { bot, community, channelId, uploads } = this.deps;
    if (!attachments.length || !(await bot.core.isIndexedChannel(community, channelId))) return undefined;
    const outcome = await bot.core.indexImages({
      community,
      channelId,
      messageId: message.id,
      authorId: user.id,
      permalink: `/?thread=${threadId}#m${message.id}`,
      // The playground is one channel everyone on the page sees.
      visibility: 'public',
      attachments: attachments.map((image) => uploads.attachment(image)),
    });
    return outcome?.refused.length
      ? `Not added to the image index: ${outcome.refused.join('; ')}`
      : undefined;
  }

  async post(input: PostInput): Promise<PostResult> {
    const { bot, messages, adapter, logger } = this.deps;
    const text = input.text.replace(/\r\n/g, '\n');
    checkPost(text, input.files);
    const root = await this.rootOf(input.threadId);
    let command: Command | 'mention' | null;
    try {
      command = commandOf(text, this.deps.channelId);
    } catch (error) {
      if (error instanceof UserInputError) throw new PlaygroundRefusal(error.message);
      throw error;
    }
    const attachments = await this.ingest(input.files);

    const { message, created } = await messages.post({
      communityId: this.deps.communityId,
      channelId: this.deps.channelId,
      threadId: root?.id ?? null,
      role: 'user',
      authorId: input.user.id,
      authorName: input.user.name,
      body: text.trim(),
      attachments,
      clientKey: input.clientKey,
    });
    if (created) adapter.publish(message);
    const threadId = message.threadId ?? message.id;
    const notice = await this.index(message, attachments, threadId, input.user);

    const chat = command === 'mention' || (command === null && root && (await messages.botInThread(root.id)));
    if (!command && !chat) return { message, threadId, answering: false, ...(notice ? { notice } : {}) };
    const turn = playgroundTurn(
      this.deps,
      input.user,
      threadId,
      command === 'mention' || command === null ? { kind: 'chat' } : command,
      chat ? await this.conversation(threadId, message) : [],
      `playground:message:${message.id}`,
      { messageId: message.id },
    );
    const refused = await this.answer(await bot.submit(turn), turn, message.id);
    if (refused) logger.child({ messageId: message.id, threadId }).info({ notice: refused }, 'not answered');
    const notices = [notice, refused].filter(Boolean).join('\n');
    return { message, threadId, answering: !refused, ...(notices ? { notice: notices } : {}) };
  }

  async press(input: { customId: unknown; clickKey: string; user: PageUser }): Promise<{ notice?: string }> {
    const { bot, messages } = this.deps;
    const parsed = typeof input.customId === 'string' ? parseButtonId(input.customId) : null;
    if (!parsed) throw new PlaygroundRefusal('That is not one of the bot’s buttons.');
    const { action, jobId } = parsed;
    const original = await messages.byJob(jobId);
    if (!original?.threadId || !isMessageId(original.threadId)) {
      throw new PlaygroundRefusal('That reply is no longer known, so its buttons no longer work.', 404);
    }
    if (action === 'cancel') {
      const outcome = await bot.cancel({
        community: this.deps.community,
        jobId,
        user: { id: input.user.id, displayName: input.user.name },
        // Everyone at the playground may change its settings, but a request is cancelled only by its asker.
        isAdmin: () => false,
      });
      return outcome.status === 'cancelled' ? {} : { notice: `⚠️ ${outcome.message}` };
    }
    const turn = playgroundTurn(
      this.deps,
      input.user,
      original.threadId,
      { kind: 'button', action, jobId },
      [],
      `playground:button:${input.clickKey}`,
      { header: `${input.user.name} pressed “${BUTTON_LABELS[action]}”` },
    );
    const refused = await this.answer(await bot.submit(turn), turn, `button:${input.clickKey}`);
    return refused ? { notice: refused } : {};
  }
}
