import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobPayload, ReplyTarget } from '../src/jobs.ts';
import { UserInputError } from '../src/jobs.ts';
import {
  connect,
  connectWithRetry,
  openDatabase,
  type StoreConfig,
  StoreConnectionError,
} from '../src/store/connect.ts';
import { DeliveryClaimError } from '../src/store/jobs.ts';
import { runMigrate } from '../src/store/migrate-command.ts';
import { loadMigrations, migrate } from '../src/store/migrations.ts';
import { pgliteClient, type SqlClient } from '../src/store/sql-client.ts';
import { createStore } from '../src/store/store.ts';
import { DEFAULT_COMMUNITY_CONFIG, type Store, type ViewerScope } from '../src/store/types.ts';
import {
  communityIndexName,
  ensureCommunityIndex,
  nearest,
  SEARCH_SESSION_SETTINGS,
} from '../src/store/vector-search.ts';
import { createTempDatabase, probePostgres, serviceAvailable } from './support/services.ts';

const postgresUp = await serviceAvailable('Postgres with pgvector (TEST_DATABASE_URL)', probePostgres);

/** Deterministic pseudo-random numbers, so a failure reproduces. */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomUnit(random: () => number, dim: number): Float32Array {
  const v = new Float32Array(dim);
  let norm = 0;
  for (let i = 0; i < dim; i++) {
    v[i] = random() * 2 - 1;
    norm += v[i]! * v[i]!;
  }
  for (let i = 0; i < dim; i++) v[i]! /= Math.sqrt(norm);
  return v;
}

const dot = (a: Float32Array, b: Float32Array) => a.reduce((sum, x, i) => sum + x * b[i]!, 0);

function collectingLogger() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      lines.push(JSON.parse(chunk.toString()));
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), lines };
}

const DIM = 32;
const source = { channelId: null, messageId: null, authorId: null, permalink: null, title: null };
const replyTarget: ReplyTarget = { platform: 'discord', channelId: 'c1', data: { interactionToken: 'x' } };
const payload = (prompt: string): JobPayload => ({
  kind: 'imagine',
  community: { platform: 'discord', externalId: 'g1' },
  prompt,
});

interface Backend {
  config: StoreConfig;
  cleanup(): Promise<void>;
}

function contractSuite(name: string, setup: () => Promise<Backend>, embedded: boolean) {
  describe(`store contract on ${name}`, () => {
    let backend: Backend;
    let store: Store;
    /** A second connection, for checks below the Store interface (indexes, migrations table). */
    let sql: SqlClient;

    beforeAll(async () => {
      backend = await setup();
      store = await connect(backend.config);
      if (store.kind === 'postgres') sql = await openDatabase(backend.config);
    });

    afterAll(async () => {
      await sql?.close();
      await store?.close();
      await backend?.cleanup();
    });

    /** PGlite allows one open instance per directory: the store is closed while fn runs. */
    async function withStoreClosed<T>(fn: () => Promise<T>): Promise<T> {
      if (store.kind === 'postgres') return fn();
      await store.close();
      try {
        return await fn();
      } finally {
        store = await connect(backend.config);
      }
    }

    /** Runs fn on a raw SQL connection, for checks below the Store interface. */
    function withSql<T>(fn: (client: SqlClient) => Promise<T>): Promise<T> {
      if (store.kind === 'postgres') return fn(sql);
      return withStoreClosed(async () => {
        const client = await openDatabase(backend.config);
        try {
          return await fn(client);
        } finally {
          await client.close();
        }
      });
    }

    it('applies migrations once: a second run applies nothing and data survives reopening', async () => {
      const community = await store.communities.ensure({ platform: 'cli', externalId: 'survivor' });
      await withSql(async (client) => {
        expect(await migrate(client)).toEqual([]);
        const rows = await client.query<{ version: string }>(
          'SELECT version FROM schema_migrations ORDER BY 1',
        );
        expect(rows.map((r) => r.version)).toEqual((await loadMigrations()).map((m) => m.version));
      });
      expect((await store.communities.ensure({ platform: 'cli', externalId: 'survivor' })).id).toBe(
        community.id,
      );
    });

    it.runIf(embedded)(
      'refuses a second open of its directory, and takes over a lock left by a dead process',
      async () => {
        await expect(connect(backend.config)).rejects.toThrow(
          /cannot open embedded PGlite at .*pglite: it is in use by this process/,
        );
        await withStoreClosed(() => writeFile(path.join(backend.config.dataDir, 'pglite.lock'), '999999999'));
        expect(
          await store.images.count((await store.communities.ensure({ platform: 'cli', externalId: 'x' })).id),
        ).toBe(0);
      },
    );

    it('refuses a migration edited after it was applied', async () => {
      const [first, ...rest] = await loadMigrations();
      const edited = [{ ...first!, sql: `${first!.sql}\n-- edited`, checksum: 'different' }, ...rest];
      await withSql(async (client) => {
        await expect(migrate(client, edited)).rejects.toThrow(/001_initial was edited after it was applied/);
      });
    });

    it('gill migrate prints that the schema is up to date', async () => {
      let printed = '';
      const out = new Writable({
        write(chunk, _enc, done) {
          printed += chunk.toString();
          done();
        },
      });
      await withStoreClosed(async () => {
        await runMigrate({ ...backend.config } as Parameters<typeof runMigrate>[0], out);
      });
      expect(printed).toMatch(/schema up to date \(\d+ migration/);
    });

    it('ensures communities once per platform and id, and rejects bad refs', async () => {
      const a = await store.communities.ensure({ platform: 'discord', externalId: '123' });
      const again = await store.communities.ensure({ platform: 'discord', externalId: '123' });
      const slack = await store.communities.ensure({ platform: 'slack', externalId: '123' });
      expect(again).toEqual(a);
      expect(slack.id).not.toBe(a.id);
      const parallel = await Promise.all(
        Array.from({ length: 8 }, () =>
          store.communities.ensure({ platform: 'slack', externalId: 'T-race' }),
        ),
      );
      expect(new Set(parallel.map((c) => c.id)).size).toBe(1);
      await expect(
        store.communities.ensure({ platform: 'irc' as 'cli', externalId: 'x' }),
      ).rejects.toBeInstanceOf(UserInputError);
      await expect(store.communities.ensure({ platform: 'cli', externalId: '' })).rejects.toBeInstanceOf(
        UserInputError,
      );
    });

    it('keeps community config: defaults, merged patches, and clear errors for bad settings', async () => {
      const { id } = await store.communities.ensure({ platform: 'discord', externalId: 'config-guild' });
      expect(await store.communities.getConfig(id)).toEqual(DEFAULT_COMMUNITY_CONFIG);
      await store.communities.updateConfig(id, { retrieveBias: 1.5, indexedChannels: ['a', 'b', 'a'] });
      const updated = await store.communities.updateConfig(id, { generationEnabled: false });
      expect(updated).toEqual({
        ...DEFAULT_COMMUNITY_CONFIG,
        retrieveBias: 1.5,
        indexedChannels: ['a', 'b'],
        generationEnabled: false,
      });
      expect(await store.communities.getConfig(id)).toEqual(updated);
      await expect(store.communities.updateConfig(id, { retrieveBias: 99 })).rejects.toThrow(
        /retrieveBias: must be from -10 to 10/,
      );
      await expect(store.communities.updateConfig(id, { contextMessages: 2.5 })).rejects.toThrow(
        /contextMessages: must be a whole number/,
      );
      await expect(
        store.communities.updateConfig(id, { colour: 'red' } as unknown as { retrieveBias: number }),
      ).rejects.toThrow(/Unknown setting "colour"/);
      await expect(store.communities.getConfig('999999999')).rejects.toThrow(/no community 999999999/);
      await expect(store.communities.updateConfig('999999999', { retrieveBias: 1 })).rejects.toThrow(
        /no community/,
      );
    });

    it('stores blobs by sha256, idempotently', async () => {
      const bytes = new Uint8Array([137, 80, 78, 71, 0, 1, 2, 255]);
      const hash = await store.blobs.put(bytes, 'image/png');
      expect(hash).toBe(createHash('sha256').update(bytes).digest('hex'));
      expect(await store.blobs.put(bytes, 'image/png')).toBe(hash);
      const got = await store.blobs.get(hash);
      expect(got?.mime).toBe('image/png');
      expect(Array.from(got!.bytes)).toEqual(Array.from(bytes));
      expect(await store.blobs.get('0'.repeat(64))).toBeNull();
      expect(await store.blobs.get('not-a-hash')).toBeNull();
      await expect(store.blobs.put(bytes, 'png')).rejects.toThrow(/media type/);
    });

    it('hard-deletes soft-deleted images after the retention period, and their blobs when unshared', async () => {
      const { id: community } = await store.communities.ensure({
        platform: 'discord',
        externalId: 'retention',
      });
      const shared = await store.blobs.put(new Uint8Array([7, 7, 7, 1]), 'image/png');
      const alone = await store.blobs.put(new Uint8Array([7, 7, 7, 2]), 'image/png');
      const meta = { mime: 'image/png', width: 1, height: 1, authorId: 'u', permalink: null, title: null };
      const gone = await store.images.add(community, shared, { ...meta, channelId: 'c', messageId: 'r1' });
      const kept = await store.images.add(community, shared, { ...meta, channelId: 'c', messageId: 'r2' });
      const lone = await store.images.add(community, alone, { ...meta, channelId: 'c', messageId: 'r3' });
      expect(await store.images.deleteByMessage(community, 'c', 'r1')).toBe(1);
      expect(await store.images.deleteByMessage(community, 'c', 'r3')).toBe(1);
      expect((await store.images.get(gone.id))?.live).toBe(false);
      // Inside the retention period nothing is removed.
      await store.images.purgeDeleted(86_400_000);
      expect(await store.images.get(gone.id)).not.toBeNull();
      expect(await store.blobs.get(alone)).not.toBeNull();
      const removed = await store.images.purgeDeleted(0);
      expect(removed.images).toBeGreaterThanOrEqual(2);
      expect(removed.blobs).toBeGreaterThanOrEqual(1);
      expect(await store.images.get(gone.id)).toBeNull();
      expect(await store.images.get(lone.id)).toBeNull();
      expect(await store.blobs.get(alone)).toBeNull();
      // The bytes another live image uses stay.
      expect((await store.images.get(kept.id))?.live).toBe(true);
      expect(await store.blobs.get(shared)).not.toBeNull();
      await expect(store.images.purgeDeleted(-1)).rejects.toThrow(/retentionMs/);
    });

    it('adds images idempotently per message, and needs the blob first', async () => {
      const { id: community } = await store.communities.ensure({
        platform: 'discord',
        externalId: 'img-guild',
      });
      const hash = await store.blobs.put(new Uint8Array([1, 2, 3]), 'image/webp');
      const meta = { mime: 'image/webp', width: 64, height: 48, ...source };
      const first = await store.images.add(community, hash, { ...meta, channelId: 'ch', messageId: 'm1' });
      const again = await store.images.add(community, hash, { ...meta, channelId: 'ch', messageId: 'm1' });
      const otherMessage = await store.images.add(community, hash, {
        ...meta,
        channelId: 'ch',
        messageId: 'm2',
      });
      const local = await store.images.add(community, hash, meta);
      const localAgain = await store.images.add(community, hash, meta);
      expect(again).toEqual(first);
      expect(otherMessage.id).not.toBe(first.id);
      expect(localAgain.id).toBe(local.id);
      expect(first).toMatchObject({
        communityId: community,
        hash,
        width: 64,
        height: 48,
        hasEmbedding: false,
      });
      expect(await store.images.get(first.id)).toEqual(first);
      expect(await store.images.get('nope')).toBeNull();
      await expect(store.images.add(community, 'f'.repeat(64), meta)).rejects.toThrow(
        /store the image bytes first/,
      );
      await expect(store.images.add(community, hash, { ...meta, width: 0 })).rejects.toThrow(/width/);
    });

    describe('search', () => {
      let small: string;
      let big: string;
      const smallVectors = new Map<string, Float32Array>();
      const random = rng(42);

      beforeAll(async () => {
        small = (await store.communities.ensure({ platform: 'discord', externalId: 'small' })).id;
        big = (await store.communities.ensure({ platform: 'discord', externalId: 'big' })).id;
        const hash = await store.blobs.put(new Uint8Array([9, 9, 9]), 'image/png');
        // The small community holds 40 of 4040 rows (1%), added through the interface.
        for (let i = 0; i < 40; i++) {
          const image = await store.images.add(small, hash, {
            mime: 'image/png',
            width: 8,
            height: 8,
            ...source,
            channelId: 'gallery',
            messageId: `s${i}`,
            authorId: i < 5 ? 'spammer' : `u${i}`,
          });
          const v = randomUnit(random, DIM);
          smallVectors.set(image.id, v);
          await store.images.setEmbedding(image.id, v);
        }
        // The others in bulk; vectors near the small community's, so they crowd its neighbourhood in the graph.
        const anchors = [...smallVectors.values()];
        const vectors = Array.from({ length: 4000 }, (_, i) => {
          const noise = randomUnit(random, DIM);
          const base = anchors[i % anchors.length]!;
          return `[${Array.from(base, (x, d) => x + 0.3 * noise[d]!).join(',')}]`;
        });
        await withSql((client) =>
          client.query(
            `INSERT INTO images (community_id, hash, mime, width, height, message_id, embedding)
             SELECT $1, $2, 'image/png', 8, 8, 'b' || n, l2_normalize(v::vector)
             FROM unnest($3::text[]) WITH ORDINALITY AS t(v, n)`,
            [big, hash, vectors],
          ),
        );
      });

      it('has an HNSW index for the embedding dimension', async () => {
        const found = await withSql((client) =>
          client.query<{ def: string }>(
            "SELECT indexdef AS def FROM pg_indexes WHERE indexname = 'images_embedding_ip_32'",
          ),
        );
        expect(found[0]?.def).toMatch(/USING hnsw .*vector_ip_ops/);
      });

      it.runIf(!embedded)('builds a large community its own index once, and searches walk it', async () => {
        expect(await ensureCommunityIndex(sql, DIM, big)).toBe(true);
        expect(await ensureCommunityIndex(sql, DIM, big)).toBe(false);
        const [index] = await sql.query<{ def: string; valid: boolean }>(
          `SELECT pg_get_indexdef(i.indexrelid) AS def, i.indisvalid AS valid FROM pg_index i
           WHERE i.indexrelid = to_regclass($1)`,
          [communityIndexName(DIM, big)],
        );
        expect(index).toMatchObject({ valid: true, def: expect.stringMatching(/hnsw .*community_id = /) });
        const plans: string[] = [];
        const rows = await nearest<{ id: string; score: number; communityId: string }>(
          sql,
          'id::text AS id, community_id::text AS "communityId"',
          {
            communityId: big,
            embedding: randomUnit(random, DIM),
            k: 10,
            plan: 'hnsw',
            onPlan: (p) => plans.push(p),
          },
        );
        expect(plans).toEqual(['hnsw']);
        expect(rows).toHaveLength(10);
        expect(rows.every((r) => r.communityId === big)).toBe(true);
        // The plan the store's planner gives a community with its own index answers the same way.
        const own = await nearest<{ id: string; score: number; communityId: string }>(
          sql,
          'id::text AS id, community_id::text AS "communityId"',
          {
            communityId: big,
            embedding: randomUnit(random, DIM),
            k: 10,
            plan: 'community',
            onPlan: (p) => plans.push(p),
          },
        );
        expect(plans).toEqual(['hnsw', 'community']);
        expect(own).toHaveLength(10);
        expect(own.every((r) => r.communityId === big)).toBe(true);
        const [plan] = await sql.query<{ plan: string }>(
          `EXPLAIN (FORMAT JSON) SELECT id FROM images WHERE vector_dims(embedding) = ${DIM} AND deleted_at IS NULL
           AND community_id = ${big} ORDER BY embedding::vector(${DIM}) <#> $1::text::vector(${DIM}) LIMIT 10`,
          [`[${randomUnit(random, DIM).join(',')}]`],
        );
        expect(JSON.stringify(plan)).toContain(communityIndexName(DIM, big));
      });

      it('searches in one statement at the connection settings, and a search at another ef_search leaves them as they were', async () => {
        await withSql(async (client) => {
          const show = async () =>
            (
              await client.query<{ ef: string; scan: string }>(
                "SELECT current_setting('hnsw.ef_search') AS ef, current_setting('hnsw.iterative_scan') AS scan",
              )
            )[0];
          expect(client.sessionSettings).toEqual(SEARCH_SESSION_SETTINGS);
          expect(await show()).toEqual({
            ef: SEARCH_SESSION_SETTINGS['hnsw.ef_search'],
            scan: 'relaxed_order',
          });
          const query = randomUnit(random, DIM);
          let transactions = 0;
          const counting: SqlClient = {
            ...client,
            transaction: (fn) => {
              transactions++;
              return client.transaction(fn);
            },
          };
          const search = (efSearch?: number) =>
            nearest<{ id: string; score: number; communityId: string }>(
              counting,
              'id::text AS id, community_id::text AS "communityId"',
              { communityId: big, embedding: query, k: 10, plan: 'hnsw', forced: true, efSearch },
            );
          const atSession = await search();
          expect(transactions).toBe(0);
          const atOwn = await search(400);
          expect(transactions).toBe(1);
          expect(atSession).toHaveLength(10);
          expect(atSession.every((r) => r.communityId === big)).toBe(true);
          // Both walks find (nearly) the exact top 10 of 4,000 rows: the same search either way.
          const shared = atOwn.filter((r) => atSession.some((s) => s.id === r.id));
          expect(shared.length).toBeGreaterThanOrEqual(9);
          expect(await show()).toEqual({
            ef: SEARCH_SESSION_SETTINGS['hnsw.ef_search'],
            scan: 'relaxed_order',
          });
        });
      });

      it('returns k results from one community that is 1% of the rows, best first, with cosine scores', async () => {
        for (const [id, v] of [...smallVectors].slice(0, 10)) {
          const results = await store.images.search(small, v, 10);
          expect(results).toHaveLength(10);
          expect(results.every((r) => r.communityId === small)).toBe(true);
          expect(results[0]!.id).toBe(id);
          expect(results[0]!.score).toBeCloseTo(1, 5);
          const exact = [...smallVectors]
            .map(([other, w]) => ({ other, score: dot(v, w) }))
            .sort((a, b) => b.score - a.score)
            .slice(0, 10);
          expect(results.map((r) => r.id)).toEqual(exact.map((e) => e.other));
          for (const [i, r] of results.entries()) expect(r.score).toBeCloseTo(exact[i]!.score, 4);
        }
      });

      it('normalises queries, so the scale of the query does not change scores', async () => {
        const [id, v] = [...smallVectors][0]!;
        const scaled = v.map((x) => x * 7);
        const [top] = await store.images.search(small, scaled, 1);
        expect(top?.id).toBe(id);
        expect(top?.score).toBeCloseTo(1, 5);
      });

      it('excludes given ids and still returns k', async () => {
        const [id, v] = [...smallVectors][3]!;
        const firstTen = (await store.images.search(small, v, 10)).map((r) => r.id);
        const results = await store.images.search(small, v, 10, [...firstTen.slice(0, 5), 'not-an-id']);
        expect(results).toHaveLength(10);
        expect(results.map((r) => r.id)).not.toContain(id);
        expect(results.slice(0, 5).map((r) => r.id)).toEqual(firstTen.slice(5));
      });

      it('leaves out deleted images and counts only live ones', async () => {
        expect(await store.images.count(small)).toBe(40);
        const [id, v] = [...smallVectors][0]!; // its author is one of the five 'spammer' images
        const image = await store.images.get(id);
        expect(await store.images.deleteByMessage(small, image!.channelId!, image!.messageId!)).toBe(1);
        expect(await store.images.deleteByMessage(small, image!.channelId!, image!.messageId!)).toBe(0);
        expect(await store.images.deleteByAuthor(small, 'spammer')).toBe(4); // the fifth is already deleted
        expect(await store.images.count(small)).toBe(35);
        const results = await store.images.search(small, v, 40);
        expect(results).toHaveLength(35);
        const ids = new Set(results.map((r) => r.id));
        expect(ids.has(id)).toBe(false);
        // A replayed add of a deleted image returns the deleted row and does not bring it back.
        await store.images.add(small, image!.hash, { ...image!, mime: image!.mime });
        expect(await store.images.count(small)).toBe(35);
      });

      it('finds nothing in a community without images, and rejects bad embeddings', async () => {
        const empty = (await store.communities.ensure({ platform: 'cli', externalId: 'empty' })).id;
        expect(await store.images.search(empty, randomUnit(random, DIM), 5)).toEqual([]);
        // A query of another dimension matches no stored embedding.
        expect(await store.images.search(small, randomUnit(random, DIM + 1), 5)).toEqual([]);
        await expect(store.images.search(small, new Float32Array(DIM), 5)).rejects.toThrow(/all zeros/);
        await expect(store.images.search(small, new Float32Array([1, Number.NaN]), 5)).rejects.toThrow(
          /non-finite/,
        );
        await expect(store.images.search(small, randomUnit(random, DIM), 0)).rejects.toThrow(/k must be/);
        await expect(store.images.setEmbedding('999999999', randomUnit(random, DIM))).rejects.toThrow(
          /no image/,
        );
      });
    });

    describe('visibility', () => {
      let community: string;
      const random = rng(7);
      const query = randomUnit(random, DIM);
      /** Image name by id. */
      const names = new Map<string, string>();
      const places = {
        general: { channelId: 'general' },
        publicThread: { channelId: 'general', threadId: 'open-thread' },
        privateThread: { channelId: 'general', threadId: 'secret-thread', visibility: 'private' },
        privateChannel: { channelId: 'staff', visibility: 'private' },
        privateChannelThread: { channelId: 'staff', threadId: 'staff-thread', visibility: 'private' },
      } as const;
      const everywhere = ['general', 'publicThread'];

      beforeAll(async () => {
        community = (await store.communities.ensure({ platform: 'discord', externalId: 'visibility-guild' }))
          .id;
        const hash = await store.blobs.put(new Uint8Array([4, 2]), 'image/png');
        for (const [name, place] of Object.entries(places)) {
          const image = await store.images.add(community, hash, {
            mime: 'image/png',
            width: 2,
            height: 2,
            ...source,
            messageId: name,
            ...place,
          });
          const noise = randomUnit(random, DIM);
          await store.images.setEmbedding(
            image.id,
            query.map((x, d) => x + 0.2 * noise[d]!),
          );
          names.set(image.id, name);
        }
      });

      const found = async (scope?: ViewerScope) =>
        (await store.images.search(community, query, 10, [], scope)).map((r) => names.get(r.id)).sort();

      it('records each image’s channel, thread and visibility, public in its channel by default', async () => {
        const byName = new Map([...names].map(([id, name]) => [name, id]));
        expect(await store.images.get(byName.get('privateThread')!)).toMatchObject({
          channelId: 'general',
          threadId: 'secret-thread',
          visibility: 'private',
        });
        expect(await store.images.get(byName.get('general')!)).toMatchObject({
          channelId: 'general',
          threadId: null,
          visibility: 'public',
        });
      });

      it('shows public images anywhere, private ones only inside their own channel or thread', async () => {
        // Without a scope, and from any channel or thread the private images were not posted in.
        expect(await found()).toEqual(everywhere);
        expect(await found({ channelId: 'random' })).toEqual(everywhere);
        expect(await found({ channelId: 'general' })).toEqual(everywhere);
        expect(await found({ channelId: 'general', threadId: 'open-thread' })).toEqual(everywhere);
        // A thread id only counts in its own channel.
        expect(await found({ channelId: 'random', threadId: 'secret-thread' })).toEqual(everywhere);
        expect(await found({ channelId: 'general', threadId: 'secret-thread' })).toEqual(
          [...everywhere, 'privateThread'].sort(),
        );
        // The private channel's images are seen in it and its threads; its private thread's only there.
        expect(await found({ channelId: 'staff' })).toEqual([...everywhere, 'privateChannel'].sort());
        expect(await found({ channelId: 'staff', threadId: 'staff-thread' })).toEqual(
          [...everywhere, 'privateChannel', 'privateChannelThread'].sort(),
        );
        await expect(store.images.search(community, query, 10, [], { channelId: '' })).rejects.toThrow(
          /scope.channelId/,
        );
      });

      it('applies the same rule when the HNSW index answers', async () => {
        const viaIndex = (scope?: ViewerScope) =>
          withSql(async (client) => {
            const plans: string[] = [];
            const rows = await nearest<{ id: string; score: number }>(client, 'id::text AS id', {
              communityId: community,
              scope,
              embedding: query,
              k: 10,
              plan: 'hnsw',
              forced: true, // the index's answer even though it is short of k
              onPlan: (plan) => plans.push(plan),
            });
            expect(plans).toEqual(['hnsw']);
            return rows.map((r) => names.get(r.id)).sort();
          });
        expect(await viaIndex()).toEqual(everywhere);
        expect(await viaIndex({ channelId: 'general', threadId: 'secret-thread' })).toEqual(
          [...everywhere, 'privateThread'].sort(),
        );
        expect(await viaIndex({ channelId: 'staff' })).toEqual([...everywhere, 'privateChannel'].sort());
      });

      it('lets a replay make an image private, never public again, and refuses a private image without a channel', async () => {
        const hash = await store.blobs.put(new Uint8Array([4, 3]), 'image/png');
        const meta = {
          mime: 'image/png',
          width: 2,
          height: 2,
          ...source,
          channelId: 'c',
          messageId: 'replayed',
        };
        const first = await store.images.add(community, hash, meta);
        expect(first.visibility).toBe('public');
        const tightened = await store.images.add(community, hash, {
          ...meta,
          threadId: 't',
          visibility: 'private',
        });
        expect(tightened).toMatchObject({ id: first.id, threadId: 't', visibility: 'private' });
        expect(await store.images.add(community, hash, meta)).toEqual(tightened);
        await expect(
          store.images.add(community, hash, { ...meta, channelId: null, visibility: 'private' }),
        ).rejects.toThrow(/needs its channelId/);
        await expect(
          store.images.add(community, hash, { ...meta, visibility: 'secret' as 'private' }),
        ).rejects.toThrow(/visibility must be public or private/);
      });
    });

    describe('jobs', () => {
      let community: string;
      beforeAll(async () => {
        community = (await store.communities.ensure({ platform: 'discord', externalId: 'jobs-guild' })).id;
      });

      it('creates one job per idempotency key, even under concurrent calls', async () => {
        const results = await Promise.all(
          Array.from({ length: 12 }, (_, i) =>
            store.jobs.createOrGet({
              idempotencyKey: 'interaction-1',
              communityId: community,
              authorKey: 'discord:u1',
              payload: payload(`attempt ${i}`),
              replyTarget,
            }),
          ),
        );
        expect(results.filter((r) => r.created)).toHaveLength(1);
        expect(new Set(results.map((r) => r.job.id)).size).toBe(1);
        const { job } = results[0]!;
        expect(job).toMatchObject({ status: 'queued', kind: 'imagine', attempts: 0, communityId: community });
        expect(job.replyTarget).toEqual(replyTarget);
        expect(await store.jobs.get(job.id)).toEqual(job);
        expect(await store.jobs.get('interaction-1')).toBeNull();
      });

      it('stores text with NUL characters, which Postgres cannot hold, without them', async () => {
        const { job } = await store.jobs.createOrGet({
          idempotencyKey: 'nul',
          communityId: community,
          payload: payload('a\u0000b'),
          replyTarget,
        });
        expect(job.payload).toMatchObject({ prompt: 'ab' });
        const hash = await store.blobs.put(new Uint8Array([7]), 'image/png');
        const image = await store.images.add(community, hash, {
          mime: 'image/png',
          width: 1,
          height: 1,
          ...source,
          title: 'cat\u0000.png',
        });
        expect(image.title).toBe('cat.png');
      });

      it('counts active jobs per community and per author', async () => {
        const make = (key: string, author: string) =>
          store.jobs.createOrGet({
            idempotencyKey: key,
            communityId: community,
            authorKey: author,
            payload: payload(key),
            replyTarget,
          });
        const base = await store.jobs.countActive({ communityId: community });
        const a = await make('count-a', 'discord:alice');
        await make('count-b', 'discord:alice');
        await make('count-c', 'discord:bob');
        expect(await store.jobs.countActive({ communityId: community })).toBe(base + 3);
        expect(await store.jobs.countActive({ communityId: community, authorKey: 'discord:alice' })).toBe(2);
        // Index jobs are a lane of their own: never counted with people's requests.
        const indexing = await store.jobs.countActive({ communityId: community, lane: 'indexing' });
        await store.jobs.createOrGet({
          idempotencyKey: 'count-index',
          communityId: community,
          payload: { kind: 'index', community: { platform: 'discord', externalId: 'g' }, imageId: '1' },
          replyTarget,
        });
        expect(await store.jobs.countActive({ communityId: community })).toBe(base + 3);
        expect(await store.jobs.countActive({ communityId: community, lane: 'indexing' })).toBe(indexing + 1);
        await store.jobs.markRunning(a.job.id);
        expect(await store.jobs.countActive({ communityId: community, authorKey: 'discord:alice' })).toBe(2);
        await store.jobs.complete(a.job.id, {
          kind: 'imagine',
          text: '',
          images: [],
          decision: null,
          notes: [],
        });
        expect(await store.jobs.countActive({ communityId: community, authorKey: 'discord:alice' })).toBe(1);
      });

      it('moves through states, and ignores transitions out of final states', async () => {
        const { job } = await store.jobs.createOrGet({
          idempotencyKey: 'states',
          communityId: null,
          payload: payload('states'),
          replyTarget,
        });
        expect((await store.jobs.listUnfinished(1000)).map((j) => j.id)).toContain(job.id);
        await store.jobs.markRunning(job.id);
        await store.jobs.updateReplyTarget(job.id, { progressMessageId: 'p1' });
        await store.jobs.fail(job.id, { message: 'The prompt is empty', userFacing: true });
        await store.jobs.cancel(job.id); // too late: failed is final unless retried
        const failed = await store.jobs.get(job.id);
        expect(failed).toMatchObject({
          status: 'failed',
          attempts: 1,
          error: { message: 'The prompt is empty', userFacing: true },
        });
        expect(failed!.replyTarget.data).toEqual({ interactionToken: 'x', progressMessageId: 'p1' });
        expect((await store.jobs.listUnfinished(1000)).map((j) => j.id)).not.toContain(job.id);
        await expect(store.jobs.markRunning('00000000-0000-4000-8000-000000000000')).rejects.toThrow(
          /no job/,
        );
      });

      it('gives the delivery claim to exactly one of many concurrent claimers', async () => {
        const { job } = await store.jobs.createOrGet({
          idempotencyKey: 'deliver-race',
          communityId: community,
          payload: payload('race'),
          replyTarget,
        });
        expect(await store.jobs.claimDelivery(job.id, 'early', 60_000)).toBeNull(); // not finished yet
        await store.jobs.complete(job.id, {
          kind: 'imagine',
          text: 'done',
          images: [],
          decision: null,
          notes: [],
        });
        const claims = await Promise.all(
          Array.from({ length: 10 }, (_, i) => store.jobs.claimDelivery(job.id, `bot-${i}`, 60_000)),
        );
        expect(claims.filter(Boolean)).toEqual([{ redelivery: false }]);
        const winner = `bot-${claims.findIndex(Boolean)}`;
        const loser = winner === 'bot-0' ? 'bot-1' : 'bot-0';
        await expect(store.jobs.markDelivered(job.id, loser, { messageId: 'm' })).rejects.toBeInstanceOf(
          DeliveryClaimError,
        );
        // Renewing its own claim: an attempt of its own may have posted parts already.
        expect(await store.jobs.claimDelivery(job.id, winner, 60_000)).toEqual({ redelivery: true });
        await store.jobs.markDelivered(job.id, winner, { messageId: 'm' });
        await store.jobs.markDelivered(job.id, winner, { messageId: 'm' }); // idempotent for the owner
        expect((await store.jobs.get(job.id))?.deliveredAt).toBeInstanceOf(Date);
        expect(await store.jobs.claimDelivery(job.id, loser, 60_000)).toBeNull();
      });

      it('lets another deliverer take over after the lease expires', async () => {
        const { job } = await store.jobs.createOrGet({
          idempotencyKey: 'deliver-lease',
          communityId: community,
          payload: payload('lease'),
          replyTarget: { ...replyTarget, platform: 'slack' },
        });
        await store.jobs.complete(job.id, {
          kind: 'imagine',
          text: 'ok',
          images: [],
          decision: null,
          notes: [],
        });
        expect((await store.jobs.listUndelivered('slack', 100)).map((j) => j.id)).toContain(job.id);
        expect((await store.jobs.listUndelivered('discord', 100)).map((j) => j.id)).not.toContain(job.id);
        expect(await store.jobs.claimDelivery(job.id, 'crashed', 150)).toEqual({ redelivery: false });
        expect(await store.jobs.claimDelivery(job.id, 'rescuer', 60_000)).toBeNull();
        await new Promise((resolve) => setTimeout(resolve, 300));
        expect(await store.jobs.claimDelivery(job.id, 'rescuer', 60_000)).toEqual({ redelivery: true });
        await expect(store.jobs.markDelivered(job.id, 'crashed', {})).rejects.toThrow(/held by rescuer/);
        await store.jobs.markDelivered(job.id, 'rescuer', { ts: '1.2' });
        expect((await store.jobs.listUndelivered('slack', 100)).map((j) => j.id)).not.toContain(job.id);
      });
    });

    describe('rate limits', () => {
      const T0 = Date.UTC(2030, 0, 1);
      const MINUTE = 60_000;

      /**
       * Runs fn on a second, independent store: beside this one on Postgres (another process's pool);
       * on PGlite, which one process at a time may open, after closing this one (a restart).
       */
      async function withOtherStore<T>(fn: (other: Store) => Promise<T>): Promise<T> {
        const run = async () => {
          const other = await connect(backend.config);
          try {
            return await fn(other);
          } finally {
            await other.close();
          }
        };
        return store.kind === 'postgres' ? run() : withStoreClosed(run);
      }

      it('shares one sliding window per user across store connections, and forgets expired windows', async () => {
        const community = (await store.communities.ensure({ platform: 'discord', externalId: 'rate-guild' }))
          .id;
        const elsewhere = (await store.communities.ensure({ platform: 'slack', externalId: 'rate-team' })).id;
        const take = (s: Store, at: number, authorKey = 'discord:alice', communityId = community) =>
          s.rateLimits.take({ communityId, authorKey, max: 3, windowMs: MINUTE, at });

        expect(await take(store, T0)).toEqual({ allowed: true, retryAfterMs: 0 });
        expect(await take(store, T0 + 1000)).toEqual({ allowed: true, retryAfterMs: 0 });
        await withOtherStore(async (other) => {
          expect(await take(other, T0 + 2000)).toEqual({ allowed: true, retryAfterMs: 0 });
          // The fourth in a minute, whichever connection takes it; it waits for the first to leave the window.
          expect(await take(other, T0 + 3000)).toEqual({ allowed: false, retryAfterMs: 57_000 });
          expect(await take(other, T0 + 3000, 'discord:bob')).toEqual({ allowed: true, retryAfterMs: 0 });
          expect(await take(other, T0 + 3000, 'discord:alice', elsewhere)).toMatchObject({ allowed: true });
        });
        expect(await take(store, T0 + 4000)).toEqual({ allowed: false, retryAfterMs: 56_000 });
        // Sliding: once the first request is a minute old one more fits, and then the second one counts.
        expect(await take(store, T0 + MINUTE)).toEqual({ allowed: true, retryAfterMs: 0 });
        expect(await take(store, T0 + MINUTE + 1)).toEqual({ allowed: false, retryAfterMs: 999 });

        // Minutes later: a take reuses its own expired row and deletes the others'.
        expect(await take(store, T0 + 5 * MINUTE, 'discord:bob')).toEqual({ allowed: true, retryAfterMs: 0 });
        const rows = () =>
          withSql((client) =>
            client.query<{ community_id: string; author_key: string }>(
              'SELECT community_id::text AS community_id, author_key FROM rate_limits ORDER BY author_key',
            ),
          );
        expect(await rows()).toEqual([{ community_id: community, author_key: 'discord:bob' }]);
        // Alice's window has expired: she has her whole minute again.
        const again = [];
        for (let i = 0; i < 4; i++) again.push(await take(store, T0 + 5 * MINUTE + i));
        expect(again.map((r) => r.allowed)).toEqual([true, true, true, false]);
        expect(again[3]!.retryAfterMs).toBe(MINUTE - 3);
        expect(await store.rateLimits.sweep(T0 + 10 * MINUTE)).toBe(2);
        expect(await rows()).toEqual([]);
      });

      it('counts concurrent requests of one user exactly', async () => {
        const community = (await store.communities.ensure({ platform: 'discord', externalId: 'rate-race' }))
          .id;
        const results = await Promise.all(
          Array.from({ length: 10 }, (_, i) =>
            store.rateLimits.take({
              communityId: community,
              authorKey: 'discord:crowd',
              max: 3,
              windowMs: MINUTE,
              at: T0 + i,
            }),
          ),
        );
        expect(results.filter((r) => r.allowed)).toHaveLength(3);
        await expect(
          store.rateLimits.take({
            communityId: community,
            authorKey: 'discord:crowd',
            max: 0,
            windowMs: MINUTE,
          }),
        ).rejects.toThrow(/max must be a positive whole number/);
      });
    });
  });
}

contractSuite(
  'PGlite',
  async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'gill-store-'));
    return { config: { dataDir: dir }, cleanup: () => rm(dir, { recursive: true, force: true }) };
  },
  true,
);

describe.skipIf(!postgresUp)('Postgres', () => {
  contractSuite(
    'Postgres',
    async () => {
      const db = await createTempDatabase('gill_store_test');
      return { config: { DATABASE_URL: db.url, dataDir: os.tmpdir() }, cleanup: db.drop };
    },
    false,
  );

  it('migrates a fresh database once when several processes start together', async () => {
    const db = await createTempDatabase('gill_store_race');
    try {
      const config = { DATABASE_URL: db.url, dataDir: os.tmpdir() };
      const stores = await Promise.all(Array.from({ length: 4 }, () => connect(config)));
      await Promise.all(stores.map((s) => s.close()));
      const client = await openDatabase(config);
      const rows = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM schema_migrations');
      await client.close();
      expect(rows[0]?.n).toBe((await loadMigrations()).length);
    } finally {
      await db.drop();
    }
  });
});

describe.skipIf(!postgresUp)('closing a Postgres store while a community index builds', () => {
  it('cancels its own build instead of waiting for it; the next call drops the invalid index and builds again', async () => {
    const db = await createTempDatabase('gill_store_close');
    const config = { DATABASE_URL: db.url, dataDir: os.tmpdir() };
    await (await connect(config)).close(); // migrates
    const watcher = await openDatabase(config);
    const builder = await openDatabase(config);
    try {
      const [{ id: community } = { id: '' }] = await watcher.query<{ id: string }>(
        "INSERT INTO communities (platform, external_id) VALUES ('discord', 'busy') RETURNING id::text AS id",
      );
      await watcher.query("INSERT INTO blobs (hash, bytes, mime) VALUES ($1, '\\x00', 'image/png')", [
        'b'.repeat(64),
      ]);
      // Enough 256-d rows that the build is still running when close() is called.
      await watcher.query(
        `INSERT INTO images (community_id, hash, mime, width, height, message_id, embedding)
         SELECT $1, $2, 'image/png', 8, 8, 'm' || n,
                l2_normalize(ARRAY(SELECT random() - 0.5 FROM generate_series(1, 256) WHERE n > 0)::vector)
         FROM generate_series(1, 20000) AS n`,
        [community, 'b'.repeat(64)],
      );
      const name = communityIndexName(256, community);
      // Settled as a value at once: the cancellation comes while close() is awaited.
      const build = ensureCommunityIndex(builder, 256, community).then(
        () => null,
        (error: Error) => error,
      );
      const building = async () =>
        (
          await watcher.query(
            `SELECT 1 FROM pg_stat_progress_create_index p JOIN pg_class c ON c.oid = p.index_relid
             WHERE c.relname = $1`,
            [name],
          )
        ).length > 0;
      await expect.poll(building, { timeout: 30_000, interval: 20 }).toBe(true);
      await builder.close();
      expect((await build)?.message).toMatch(/cancel/i);
      const [left] = await watcher.query<{ valid: boolean }>(
        'SELECT indisvalid AS valid FROM pg_index WHERE indexrelid = to_regclass($1)',
        [name],
      );
      expect(left).toEqual({ valid: false });
      // Smaller now, so the rebuild is quick: the invalid index is dropped and a valid one built.
      await watcher.query(
        "DELETE FROM images WHERE message_id <> ALL (SELECT 'm' || n FROM generate_series(1, 300) AS n)",
      );
      expect(await ensureCommunityIndex(watcher, 256, community)).toBe(true);
      const [rebuilt] = await watcher.query<{ valid: boolean }>(
        'SELECT indisvalid AS valid FROM pg_index WHERE indexrelid = to_regclass($1)',
        [name],
      );
      expect(rebuilt).toEqual({ valid: true });
    } finally {
      await builder.close().catch(() => {}); // already closed unless an assertion failed before
      await watcher.close();
      await db.drop();
    }
  });
});

/** Migrates up to before image visibility, indexes an image the old way, then migrates the rest. */
async function imageFromBeforeVisibility(client: SqlClient) {
  const all = await loadMigrations();
  await migrate(
    client,
    all.filter((m) => m.version < '004'),
  );
  const [{ id: community } = { id: '' }] = await client.query<{ id: string }>(
    "INSERT INTO communities (platform, external_id) VALUES ('discord', 'old-guild') RETURNING id::text AS id",
  );
  await client.query("INSERT INTO blobs (hash, bytes, mime) VALUES ($1, '\\x00', 'image/png')", [
    'a'.repeat(64),
  ]);
  await client.query(
    `INSERT INTO images (community_id, hash, mime, width, height, channel_id, message_id, embedding)
     VALUES ($1, $2, 'image/png', 1, 1, 'general', 'm1', '[1,0,0]')`,
    [community, 'a'.repeat(64)],
  );
  await migrate(client, all);
  const store = createStore(client);
  try {
    return await store.images.search(community, new Float32Array([1, 0, 0]), 5);
  } finally {
    await store.close();
  }
}

describe('session settings', () => {
  it('refuses a setting that is not a plain name and value, before connecting', async () => {
    await expect(
      pgliteClient(undefined, { sessionSettings: { 'hnsw.ef_search = 1; DROP TABLE x; --': '1' } }),
    ).rejects.toThrow(/bad setting name/);
    await expect(
      pgliteClient(undefined, { sessionSettings: { 'hnsw.ef_search': "1'; DROP TABLE x; --" } }),
    ).rejects.toThrow(/bad value/);
  });
});

describe('images indexed before visibility was recorded', () => {
  it('are public, in their channel, on PGlite', async () => {
    const [image] = await imageFromBeforeVisibility(await pgliteClient());
    expect(image).toMatchObject({ channelId: 'general', threadId: null, visibility: 'public' });
  });

  it.skipIf(!postgresUp)('are public, in their channel, on Postgres', async () => {
    const db = await createTempDatabase('gill_store_upgrade');
    try {
      const client = await openDatabase({ DATABASE_URL: db.url, dataDir: os.tmpdir() });
      const [image] = await imageFromBeforeVisibility(client);
      expect(image).toMatchObject({ channelId: 'general', threadId: null, visibility: 'public' });
    } finally {
      await db.drop();
    }
  });
});

describe('connection errors', () => {
  it('names the unreachable host and never the password', async () => {
    const config = { DATABASE_URL: 'postgres://gill:s3cret-pw@127.0.0.1:1/gill', dataDir: os.tmpdir() };
    const error = await connect(config).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreConnectionError);
    expect((error as StoreConnectionError).retryable).toBe(true);
    expect((error as Error).message).toMatch(
      /cannot connect to Postgres at 127\.0\.0\.1:1\/gill as gill: .*ECONNREFUSED/,
    );
    expect((error as Error).message).not.toContain('s3cret-pw');
  });

  it('retries an unreachable database with backoff until stopped', async () => {
    const { logger, lines } = collectingLogger();
    const config = { DATABASE_URL: 'postgres://gill:s3cret-pw@127.0.0.1:1/gill', dataDir: os.tmpdir() };
    const stop = AbortSignal.timeout(400);
    await expect(connectWithRetry(config, logger, { signal: stop, initialDelayMs: 50 })).rejects.toThrow(
      /abort/i,
    );
    const retries = lines.filter((l) => l.msg === 'database unreachable; retrying');
    expect(retries.length).toBeGreaterThanOrEqual(2);
    expect(retries.map((l) => l.retryInMs)).toEqual(retries.map((_, i) => 50 * 2 ** i));
    expect(JSON.stringify(lines)).not.toContain('s3cret-pw');
  });

  it.skipIf(!postgresUp)('fails at once, without retrying, when the database does not exist', async () => {
    const url = new URL(process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test');
    url.pathname = '/gill_no_such_database';
    const { logger, lines } = collectingLogger();
    const error = await connectWithRetry(
      { DATABASE_URL: url.toString(), dataDir: os.tmpdir() },
      logger,
    ).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreConnectionError);
    expect((error as Error).message).toMatch(/gill_no_such_database.*create the database/);
    expect(lines).toHaveLength(0);
  });
});
