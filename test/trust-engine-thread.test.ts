import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { type Embedded, startEmbedded } from '../src/roles/start.ts';
import { FakeDiscord } from './fakes/discord.ts';
import { FakeSlack, sendSlashCommand } from './fakes/slack.ts';
import { runsStarted } from './support/blocking-engine.ts';

/**
 * Embedded `gill start` with Slack and Discord (the real Bolt app and discord.js client against the
 * loopback fakes) and an engine whose every run blocks its thread for 5 s, as a heavy model does: the
 * engine runs in a thread of its own, so while it blocks, a Slack command is still acknowledged and a
 * Discord interaction still deferred within the platforms' 3 s.
 */

const SECRET = 'engine-thread-secret';
/** Slack's and Discord's deadline for acknowledging a command or interaction. */
const PLATFORM_DEADLINE_MS = 3000;

let dataDir: string;
let slackFake: FakeSlack;
let discordFake: FakeDiscord;
let embedded: Embedded;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Resolves once a new engine run has begun (its thread is now blocked for 5 s). */
async function engineBusy(): Promise<void> {
  const before = runsStarted(dataDir);
  const deadline = Date.now() + 60_000;
  while (runsStarted(dataDir) === before) {
    if (Date.now() > deadline) throw new Error('no engine run began');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

beforeAll(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'gill-engine-thread-'));
  slackFake = await FakeSlack.start();
  slackFake.addUser('UPLAIN');
  discordFake = await new FakeDiscord().start();
  const config = loadConfig({
    GILL_DATA_DIR: dataDir,
    GILL_PORT: String(await freePort()),
    SLACK_BOT_TOKEN: slackFake.botToken,
    SLACK_SIGNING_SECRET: SECRET,
    SLACK_API_URL: slackFake.apiUrl,
    SLACK_PORT: String(await freePort()),
    DISCORD_TOKEN: 'engine-thread-bot-token',
    DISCORD_APPLICATION_ID: discordFake.applicationId,
    DISCORD_API_URL: discordFake.apiUrl,
    DISCORD_CDN_URL: discordFake.cdnUrl,
  });
  embedded = await startEmbedded(config, createLogger('silent'), {
    engine: {
      module: new URL('./support/blocking-engine.ts', import.meta.url).href,
      exportName: 'openBlockingEngine',
    },
  });
}, 120_000);

afterAll(async () => {
  await embedded?.stop();
  await slackFake?.close();
  await discordFake?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
}, 60_000);

describe('embedded gill start with an engine that blocks its thread for 5 s', () => {
  it('acknowledges a Slack command within 3 s while the engine runs', { timeout: 120_000 }, async () => {
    const url = embedded.adapters.find((a) => a.name === 'slack')!.url!;
    // The seed gallery's index jobs keep the engine busy from the start.
    await engineBusy();
    const sent = Date.now();
    const { response } = await sendSlashCommand(
      slackFake,
      { url, signingSecret: SECRET },
      { command: '/imagine', text: 'a lighthouse', user: 'UPLAIN', channel: 'CBUSY' },
    );
    const acked = Date.now();
    expect(response.status).toBe(200);
    expect(acked - sent).toBeLessThan(PLATFORM_DEADLINE_MS);
  });

  it('defers a Discord interaction within 3 s while the engine runs', { timeout: 120_000 }, async () => {
    const user = discordFake.addUser('asker');
    await engineBusy();
    const sent = Date.now();
    const { id, token } = discordFake.interact({
      user,
      command: { name: 'imagine', options: [{ name: 'prompt', type: 3, value: 'a lighthouse' }] },
    });
    const callback = await discordFake.waitFor(
      () => discordFake.callsTo('POST', new RegExp(`^/interactions/${id}/${token}/callback$`))[0],
      30_000,
      'the deferral',
    );
    expect(callback.status).toBe(204);
    expect(callback.at - sent).toBeLessThan(PLATFORM_DEADLINE_MS);
  });
});
