import { REST, Routes } from 'discord.js';
import type { Config } from '../../config.ts';
import { UserInputError } from '../../jobs.ts';
import { discordCommands } from './commands.ts';
import { restOptions } from './rest.ts';

/**
 * `gill discord register`: puts the slash commands in place once per deploy. Starting the bot never
 * registers them, because command creates are limited (200 per day per guild, error 30034). A bulk
 * overwrite leaves unchanged commands as they are.
 */
export async function runRegister(
  config: Config,
  opts: { guild?: string } = {},
  out: NodeJS.WritableStream = process.stdout,
): Promise<void> {
  if (!config.DISCORD_TOKEN || !config.DISCORD_APPLICATION_ID) {
    throw new UserInputError('DISCORD_TOKEN and DISCORD_APPLICATION_ID must be set to register commands');
  }
  if (opts.guild !== undefined && !/^\d{15,21}$/.test(opts.guild)) {
    throw new UserInputError(`--guild must be a Discord server id (15 to 21 digits), got "${opts.guild}"`);
  }
  const rest = new REST(restOptions(config)).setToken(config.DISCORD_TOKEN);
  const route = opts.guild
    ? Routes.applicationGuildCommands(config.DISCORD_APPLICATION_ID, opts.guild)
    : Routes.applicationCommands(config.DISCORD_APPLICATION_ID);
  const registered = (await rest.put(route, { body: discordCommands() })) as { name: string }[];
  out.write(
    `Registered ${registered.map((c) => `/${c.name}`).join(', ')} ${opts.guild ? `in server ${opts.guild}` : 'globally (may take up to an hour to appear)'}\n`,
  );
}
