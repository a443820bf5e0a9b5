-- recsql schema: tables. Files in sql/ run in name order and build an empty database in one pass.
--
-- Layout of the data:
--   recsql.events            the append-only event log (source of truth for all derived state)
--   recsql.event_inbox       one row per inserting statement, consumed by the folder
--   recsql.user_item_events  per (user, item, event type) counts          } derived state,
--   recsql.item_event_counts per (item, event type) counts                 } maintained by
--   recsql.item_stats        per item: distinct users, events, popularity  } recsql.flush()
--   recsql.item_pairs        item pairs formed in users' recent windows    } and rebuilt by
--                            (co-occurrence, and bought together)          } recsql.rebuild()
--   recsql.pair_queue        pair deltas of deferred folds, for recsql.fold_pairs()
--   recsql.neighbor_lists    per item, its best-scoring pairs: the serving index the queries read

create schema recsql;

comment on schema recsql is 'recsql: real-time recommendations maintained inside PostgreSQL';

-- One row of typed, validated knobs; an UPDATE changes behaviour, no code change needed.
create table recsql.settings (
    id boolean primary key default true constraint settings_single_row check (id),
    cooc_window integer not null default 10
        constraint settings_cooc_window_check check (cooc_window between 1 and 200),
    purchase_window integer not null default 10
        constraint settings_purchase_window_check check (purchase_window between 1 and 200),
    cooc_retention interval not null default '180 days'
        constraint settings_cooc_retention_check check (cooc_retention >= interval '1 day'),
    min_support integer not null default 1
        constraint settings_min_support_check check (min_support >= 1),
    neighbors_per_item integer not null default 100
        constraint settings_neighbors_per_item_check check (neighbors_per_item between 1 and 1000),
    similarity text not null default 'cosine'
        constraint settings_similarity_check check (similarity in ('cosine', 'jaccard', 'count')),
    history_length integer not null default 15
        constraint settings_history_length_check check (history_length between 1 and 10000),
    history_half_life double precision not null default 5
        constraint settings_history_half_life_check check (history_half_life > 0),
    trending_half_life interval not null default '2 days'
        constraint settings_trending_half_life_check check (trending_half_life >= interval '1 minute'),
    max_future interval not null default '1 day'
        constraint settings_max_future_check check (max_future >= interval '0'),
    decay_epoch timestamptz,
    embedding_weight double precision not null default 0.2
        constraint settings_embedding_weight_check check (embedding_weight between 0 and 1),
    behavior_refresh_ratio double precision not null default 1.5
        constraint settings_behavior_refresh_ratio_check check (behavior_refresh_ratio > 1),
    behavior_refit_interval interval not null default '1 day'
        constraint settings_behavior_refit_interval_check check (behavior_refit_interval >= interval '1 minute'),
    new_item_slots integer not null default 1
        constraint settings_new_item_slots_check check (new_item_slots between 0 and 10),
    new_item_window interval not null default '14 days'
        constraint settings_new_item_window_check check (new_item_window >= interval '0'),
    new_item_min_similarity double precision not null default 0.3
        constraint settings_new_item_min_similarity_check check (new_item_min_similarity between -1 and 1)
);

insert into recsql.settings default values;

comment on table recsql.settings is 'Tuning knobs (one row). See docs/concepts.md for each.';
comment on column recsql.settings.cooc_window is
    'An event forms co-occurrence pairs with the distinct items of the user''s previous N pair-forming events';
comment on column recsql.settings.purchase_window is
    'A conversion forms bought-together pairs with the user''s previous N conversions';
comment on column recsql.settings.cooc_retention is
    'Pruning: pair formations older than this (by event ts) are expired by recsql.maintain()';
comment on column recsql.settings.min_support is
    'Pairs seen fewer times than this are ignored by the query functions';
comment on column recsql.settings.neighbors_per_item is
    'Length of each item''s precomputed neighbour list (recsql.neighbor_lists) used by the query functions';
comment on column recsql.settings.embedding_weight is
    'Share of embedding similarity in hybrid scores (0: co-occurrence only, 1: embeddings only)';
comment on column recsql.settings.behavior_refresh_ratio is
    'An item''s behaviour vector is refreshed once its events grew by this factor since it was computed';
comment on column recsql.settings.behavior_refit_interval is
    'The behaviour space is refitted from scratch when its last fit is older than this';
comment on column recsql.settings.new_item_slots is
    'Places of a personalised list (the last ones) open to new items nothing co-occurs with yet, ranked by embedding similarity';
comment on column recsql.settings.new_item_window is
    'Items created this recently, without a co-occurrence list, may take the new-item places';
comment on column recsql.settings.new_item_min_similarity is
    'A new item takes a place only when its embedding similarity to the user''s taste is at least this';
comment on column recsql.settings.decay_epoch is
    'Internal: reference time of item_stats.popularity; set by the first fold, moved by maintain()';

-- Weights are data: a shop adds its own event types with an INSERT.
create table recsql.event_types (
    name text primary key
        constraint event_types_name_check check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    weight double precision not null
        constraint event_types_weight_check check (weight between -1000 and 1000),
    forms_pairs boolean not null default true,
    is_conversion boolean not null default false,
    value_min double precision,
    value_max double precision,
    description text,
    constraint event_types_value_range_check check (
        (value_min is null and value_max is null)
        or (value_min is not null and value_max is not null and value_min < value_max and value_max > 0))
);

comment on table recsql.event_types is 'Event vocabulary and the weight of each type in interaction strength';

insert into recsql.event_types (name, weight, forms_pairs, is_conversion, value_min, value_max, description) values
    ('view', 1, true, false, null, null, 'product page viewed'),
    ('click', 1, true, false, null, null, 'product clicked in a list or recommendation'),
    ('add_to_cart', 3, true, false, null, null, 'added to cart'),
    ('remove_from_cart', -2, false, false, null, null, 'removed from cart'),
    ('purchase', 5, true, true, null, null, 'bought'),
    ('rating', 3, true, false, 1, 5, 'explicit rating; value 1..5 scales the weight'),
    ('review', 3, true, false, null, null, 'review written'),
    ('wishlist', 2, true, false, null, null, 'added to wishlist');

create table recsql.items (
    item_key integer generated always as identity
        constraint items_item_key_key unique,
    item_id text primary key
        constraint items_item_id_check check (item_id <> '' and length(item_id) <= 256 and item_id !~ '[[:cntrl:]]'),
    title text,
    category text,
    price numeric(14, 2) constraint items_price_check check (price >= 0),
    in_stock boolean not null default true,
    properties jsonb not null default '{}'
        constraint items_properties_check check (jsonb_typeof(properties) = 'object'),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    hidden_at timestamptz
);

create index items_category_idx on recsql.items (category);
create index items_created_idx on recsql.items (created_at);
-- Small in practice; the queries anti-join it to drop hidden items.
create index items_hidden_idx on recsql.items (item_key) where hidden_at is not null;

comment on table recsql.items is 'Catalog; an event for an unknown item registers it with only its id';
comment on column recsql.items.item_key is 'Compact internal key used by the derived tables';
comment on column recsql.items.hidden_at is 'Set when the item was removed from the shop: it is never recommended';

create table recsql.events (
    seq bigint generated always as identity constraint events_pkey primary key,
    event_id text not null
        constraint events_event_id_check check (event_id <> '' and length(event_id) <= 256 and event_id !~ '[[:cntrl:]]'),
    user_id text not null
        constraint events_user_id_check check (user_id <> '' and length(user_id) <= 256 and user_id !~ '[[:cntrl:]]'),
    item_id text not null
        constraint events_item_id_check check (item_id <> '' and length(item_id) <= 256 and item_id !~ '[[:cntrl:]]'),
    event_type text not null,
    value double precision constraint events_value_check check (value = value and abs(value) < 1e12),
    ts timestamptz not null default now(),
    session_id text constraint events_session_id_check check (length(session_id) <= 256),
    properties jsonb not null default '{}'
        constraint events_properties_check check (jsonb_typeof(properties) = 'object'),
    xid xid8 not null default pg_current_xact_id(),
    arrived_at timestamptz not null default now(),
    recommendation_id uuid
);

-- Deferred: a row whose id is already stored goes in, and the statement's trigger takes it out again
-- (recsql.events_after_insert), so a COPY with retried events loads without a per-row probe. The
-- check at commit catches what the trigger cannot see: the same id from a transaction still open.
alter table recsql.events
    add constraint events_event_id_key unique (event_id) deferrable initially deferred;
create index events_user_idx on recsql.events (user_id, xid, seq);
create index events_recommendation_idx on recsql.events (recommendation_id) where recommendation_id is not null;

comment on table recsql.events is
    'Append-only event log. INSERT or COPY (user_id, item_id, event_type, ts) directly, or call recsql.track()';
comment on column recsql.events.event_id is
    'Idempotency key: a second event with the same id is dropped (by the inserting statement''s trigger)';
comment on column recsql.events.xid is 'Inserting transaction; replay order is (xid, seq)';
comment on column recsql.events.arrived_at is 'Server time the event was stored';
comment on column recsql.events.recommendation_id is
    'The served list (recsql.recommendation_log) this event responds to, for click and conversion attribution';

-- Written by every inserting statement, read and emptied by the folder: keeps ingestion append-only.
create table recsql.event_inbox (
    xid xid8 not null,
    first_seq bigint not null,
    last_seq bigint not null,
    n bigint not null
);

comment on table recsql.event_inbox is 'Event ranges waiting to be folded into derived state by recsql.flush()';

-- Folder progress (one row).
create table recsql.fold_state (
    id boolean primary key default true constraint fold_state_single_row check (id),
    horizon xid8 not null default '0',
    cooc_horizon timestamptz,
    folded_events bigint not null default 0,
    last_fold_at timestamptz,
    maintained_at timestamptz,
    windows_key text
);

insert into recsql.fold_state default values;

comment on table recsql.fold_state is 'Every event with xid below horizon has been folded';
comment on column recsql.fold_state.cooc_horizon is 'Pair formations by events with ts before this are expired (null: none)';
comment on column recsql.fold_state.windows_key is
    'The window settings recsql.user_windows was built with: when they change, it is emptied (see recsql._windows_key)';

-- Each user's recent windows, as of the last folded event: what the next event pairs with. A cache
-- of the log (rebuilt from it whenever missing), so that a fold reads one row per user instead of
-- the user's last events and their items.
-- The user ids of the derived tables compare as bytes (collate "C"): internal keys, looked up and
-- sorted on every fold, for which locale rules cost a strcoll per comparison and buy nothing (the
-- same ids are equal under any deterministic collation). recsql.events keeps the database's.
create table recsql.user_windows (
    user_id text collate "C" constraint user_windows_pkey primary key,
    items integer[] not null,
    conversions integer[] not null
);

comment on table recsql.user_windows is
    'Per user, the items of the last cooc_window pair-forming events and of the last purchase_window '
    'conversions, oldest first: the windows the next event pairs with. Derived from the log; a user '
    'with no row has their windows read from recsql.events';

create table recsql.user_item_events (
    user_id text collate "C" not null,  -- as in user_windows
    item_key integer not null,
    event_type text not null,
    n integer not null,
    value_sum numeric not null default 0,
    first_ts timestamptz not null,
    last_ts timestamptz not null,
    constraint user_item_events_pkey primary key (user_id, item_key, event_type)
);

comment on table recsql.user_item_events is 'Derived: per user, item and event type counts (see view recsql.user_items)';

create table recsql.item_event_counts (
    item_key integer not null,
    event_type text not null,
    n bigint not null,
    value_sum numeric not null default 0,
    constraint item_event_counts_pkey primary key (item_key, event_type)
);

comment on table recsql.item_event_counts is 'Derived: per item and event type counts';

create table recsql.item_stats (
    item_key integer constraint item_stats_pkey primary key,
    n_users integer not null,
    n_events bigint not null,
    popularity numeric not null
);

create index item_stats_popularity_idx on recsql.item_stats (popularity desc, item_key);

comment on table recsql.item_stats is 'Derived: distinct users, events and time-decayed weighted popularity per item';
comment on column recsql.item_stats.popularity is
    'Sum of weight * 2^((ts - decay_epoch) / trending_half_life); exact numeric so fold order does not matter';

create table recsql.item_pairs (
    kind "char" not null constraint item_pairs_kind_check check (kind in ('v', 'p')),
    item_a integer not null,
    item_b integer not null,
    n integer not null,
    -- Kind last in both indexes: it almost never decides a comparison there, so adding a pair
    -- compares two integers per index entry on its way down, not a "char" (a function call) first.
    constraint item_pairs_pkey primary key (item_a, item_b, kind),
    constraint item_pairs_order_check check (item_a < item_b)
);

create index item_pairs_b_idx on recsql.item_pairs (item_b, kind);

comment on table recsql.item_pairs is
    'Derived: kind v = times one of the two items entered a user''s recent window while the other was in '
    'it; kind p = the same over the user''s recent conversions (bought together). Symmetric, so stored '
    'once, with item_a < item_b: an item''s pairs are those it is item_a or item_b of.';

-- Pair deltas of folds run with defer_pairs (the worker's fold lane), waiting for recsql.fold_pairs()
-- (its list lane): four rows per fold, one per part of the pairs (by item_a modulo 4), the pairs as
-- parallel arrays, so queueing costs four rows and two sessions can add the parts side by side.
create table recsql.pair_queue (
    events integer not null,
    kinds "char"[] not null,
    items_a integer[] not null,
    items_b integer[] not null,
    n integer[] not null,
    queued_at timestamptz not null default now(),
    part smallint not null default 0 constraint pair_queue_part_check check (part between 0 and 3)
);

-- Written once and read once: compressing them would cost more than the bytes saved.
alter table recsql.pair_queue
    alter column kinds set storage external,
    alter column items_a set storage external,
    alter column items_b set storage external,
    alter column n set storage external;

comment on table recsql.pair_queue is
    'Pair count deltas folded from events but not yet added to item_pairs; recsql.fold_pairs() applies '
    'them (in any order: they are sums)';

comment on column recsql.pair_queue.part is
    'Which part of the fold''s pairs the row holds (item_a % 4): recsql.fold_pairs(part) adds one part. '
    'Only a split of the work: a row may hold any pairs';

comment on column recsql.pair_queue.events is 'Events of the fold whose pairs the row holds (each part counts them all)';

-- Serving index: each item's top neighbours by similarity, recomputed when its pairs change.
create table recsql.neighbor_lists (
    kind "char" not null,
    item_key integer not null,
    neighbors integer[] not null,
    scores real[] not null,
    together integer[] not null,
    refreshed_at timestamptz not null default now(),
    users integer,
    constraint neighbor_lists_pkey primary key (kind, item_key)
);

comment on table recsql.neighbor_lists is
    'Per item and pair kind, the neighbors_per_item best neighbours by similarity, best first; read by the queries';

comment on column recsql.neighbor_lists.refreshed_at is
    'When the list was last computed from all the item''s pairs; patching it with changed partners leaves this';

comment on column recsql.neighbor_lists.users is
    'The item''s user count when the list was last computed whole: patches score new partners with it';

create table recsql.neighbor_dirty (
    kind "char" not null,
    item_key integer not null,
    marked_at timestamptz not null default now(),
    partners integer[],
    constraint neighbor_dirty_pkey primary key (kind, item_key)
);

comment on table recsql.neighbor_dirty is 'Items whose pairs changed since their neighbour list was computed';

comment on column recsql.neighbor_dirty.partners is
    'Null: recompute the whole list. Otherwise only these partners'' counts went up since then, and '
    'the list is patched in place with them (no scan of the item''s pairs)';

-- Serving: API keys, anonymous ids linked to users, and every list served over HTTP.

create table recsql.api_keys (
    key_id text constraint api_keys_pkey primary key
        constraint api_keys_key_id_check check (key_id ~ '^[a-z0-9]{8,32}$'),
    name text not null default ''
        constraint api_keys_name_check check (length(name) <= 200),
    scope text not null constraint api_keys_scope_check check (scope in ('track', 'read', 'admin')),
    secret_hash bytea not null constraint api_keys_secret_hash_check check (length(secret_hash) = 32),
    allowed_origins text[] not null default '{}',
    rate_limit integer constraint api_keys_rate_limit_check check (rate_limit > 0),
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);

comment on table recsql.api_keys is
    'HTTP API keys: only a SHA-256 of the secret is stored; scopes track < read < admin';
comment on column recsql.api_keys.allowed_origins is 'Browser origins a track key may be used from (CORS)';
comment on column recsql.api_keys.rate_limit is 'Requests per second per server process (null: the server default)';

create table recsql.user_aliases (
    alias_id text constraint user_aliases_pkey primary key
        constraint user_aliases_alias_id_check check (alias_id <> '' and length(alias_id) <= 256 and alias_id !~ '[[:cntrl:]]'),
    user_id text not null
        constraint user_aliases_user_id_check check (user_id <> '' and length(user_id) <= 256 and user_id !~ '[[:cntrl:]]'),
    linked_at timestamptz not null default now(),
    constraint user_aliases_distinct_check check (alias_id <> user_id)
);

create index user_aliases_user_idx on recsql.user_aliases (user_id);

comment on table recsql.user_aliases is
    'Anonymous ids linked to a signed-in user by recsql.identify(): their events count as the user''s';

create table recsql.recommendation_log (
    recommendation_id uuid constraint recommendation_log_pkey primary key,
    served_at timestamptz not null default now(),
    surface text not null constraint recommendation_log_surface_check
        check (surface in ('user', 'similar', 'bought_together', 'trending', 'session')),
    user_id text,
    anchor_item_ids text[] not null default '{}',
    item_ids text[] not null,
    scores real[] not null,
    model text,
    constraint recommendation_log_lengths_check check (cardinality(item_ids) = cardinality(scores))
);

create index recommendation_log_served_idx on recsql.recommendation_log (served_at);
create index recommendation_log_user_idx on recsql.recommendation_log (user_id) where user_id is not null;

comment on table recsql.recommendation_log is
    'Every list served over HTTP, items in position order; events carrying its id are attributed to it';
comment on column recsql.recommendation_log.anchor_item_ids is 'The item(s) the list was asked for (similar, bought together, session)';
comment on column recsql.recommendation_log.model is 'Model version that produced the list (null: the built-in model)';
