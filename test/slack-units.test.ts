import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { parseFind, parseImagine } from '../src/bots/core/text-commands.ts';
import { partBlocks } from '../src/bots/slack/blocks.ts';
import { SLACK_EVENTS_PATH } from '../src/bots/slack/index.ts';
import { escapeText, mentionsUser, plainText, slackLink, toAttachment } from '../src/bots/slack/text.ts';

/** The Slack adapter's pure parts: markup in and out, command text, message blocks, the app manifest. */

describe('Slack text', () => {
  it('turns message markup into plain text for the model', () => {
    expect(
      plainText(
        '<@U0BOT> ask <@U123|ann> about <#C9|art> &amp; <https://x.test/a?b=1|this page> or <https://y.test> <!here>',
        'U0BOT',
      ),
    ).toBe('ask @ann about #art & this page (https://x.test/a?b=1) or https://y.test @here');
    expect(plainText('1 &lt; 2 &gt; 0', 'U0BOT')).toBe('1 < 2 > 0');
  });

  it('escapes what the bot writes, so model output cannot ping or link', () => {
    expect(escapeText('<!channel> <@U1> a & b')).toBe('&lt;!channel&gt; &lt;@U1&gt; a &amp; b');
    expect(slackLink('a | <b>', 'https://x.test/p?q=1|2')).toBe('<https://x.test/p?q=1%7C2|a ¦ &lt;b&gt;>');
  });

  it('recognises mentions of a user', () => {
    expect(mentionsUser('hi <@U0BOT> there', 'U0BOT')).toBe(true);
    expect(mentionsUser('hi <@U0BOTX>', 'U0BOT')).toBe(false);
  });

  it('describes a shared file as an attachment with its download URL', () => {
    expect(
      toAttachment({
        id: 'F1',
        name: 'a.png',
        mimetype: 'image/png',
        size: 10,
        url_private: 'u1',
        url_private_download: 'u2',
      }),
    ).toEqual({ id: 'slack:F1', url: 'u2', name: 'a.png', size: 10, contentType: 'image/png' });
  });
});

describe('/imagine and /find text', () => {
  it('reads the prompt and its options', () => {
    expect(parseImagine('a red star --seed 42 --steps=20')).toEqual({
      kind: 'imagine',
      prompt: 'a red star',
      seed: 42,
      steps: 20,
    });
    expect(parseImagine('dashes -- stay in the prompt')).toEqual({
      kind: 'imagine',
      prompt: 'dashes -- stay in the prompt',
    });
    expect(parseFind('green circles --k 6')).toEqual({ kind: 'find', query: 'green circles', k: 6 });
  });

  it('explains bad options and missing text', () => {
    expect(() => parseImagine('--seed 1')).toThrow(/Say what to draw/);
    expect(() => parseImagine('cat --steps 0')).toThrow(
      /--steps must be a whole number from 1 to 150, got "0"/,
    );
    expect(() => parseImagine('cat --seed')).toThrow(/--seed must be a whole number/);
    expect(() => parseImagine('cat --size 3')).toThrow(/Unknown option --size/);
    expect(() => parseFind('cats --k 21')).toThrow(/--k must be a whole number from 1 to 20/);
  });
});

describe('message blocks', () => {
  it('keeps each section within 3000 characters, and buttons carry the persistent ids', () => {
    const text = Array.from({ length: 80 }, (_, i) => `line ${i} ${'x'.repeat(40)}`).join('\n');
    const blocks = partBlocks(text, 'who asked', ['regenerate', 'more'], 'job-1');
    expect(blocks[0]).toEqual({ type: 'context', elements: [{ type: 'mrkdwn', text: 'who asked' }] });
    const sections = blocks.filter((b) => b.type === 'section') as { text: { text: string } }[];
    expect(sections.length).toBeGreaterThan(1);
    for (const s of sections) expect(s.text.text.length).toBeLessThanOrEqual(3000);
    expect(sections.map((s) => s.text.text).join('\n')).toBe(text);
    const actions = blocks.at(-1) as { type: string; elements: { action_id: string }[] };
    expect(actions.elements.map((e) => e.action_id)).toEqual(['gill:regenerate:job-1', 'gill:more:job-1']);
  });
});

describe('Slack app manifest', () => {
  it('declares the scopes, events, commands and interactivity the adapter uses', async () => {
    const manifest = JSON.parse(
      await readFile(new URL('../src/bots/slack/slack-app-manifest.json', import.meta.url), 'utf8'),
    );
    expect(manifest.oauth_config.scopes.bot).toEqual(
      expect.arrayContaining([
        'app_mentions:read',
        'channels:history',
        'groups:history',
        'chat:write',
        'commands',
        'files:read',
        'files:write',
        'users:read',
      ]),
    );
    expect(manifest.settings.event_subscriptions.bot_events).toEqual(
      expect.arrayContaining(['app_mention', 'message.channels', 'message.groups']),
    );
    expect(manifest.features.slash_commands.map((c: { command: string }) => c.command).sort()).toEqual([
      '/find',
      '/gill',
      '/imagine',
    ]);
    expect(manifest.settings.interactivity.is_enabled).toBe(true);
    const urls = [
      manifest.settings.event_subscriptions.request_url,
      manifest.settings.interactivity.request_url,
      ...manifest.features.slash_commands.map((c: { url: string }) => c.url),
    ];
    for (const url of urls) expect(new URL(url).pathname).toBe(SLACK_EVENTS_PATH);
  });
});
