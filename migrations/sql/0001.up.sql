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
    decay_epoch timestamptz
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
    updated_at timestamptz not null default now()
);

create index items_category_idx on recsql.items (category);

comment on table recsql.items is 'Catalog; an event for an unknown item registers it with only its id';
comment on column recsql.items.item_key is 'Compact internal key used by the derived tables';

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
    arrived_at timestamptz not null default now()
);

create unique index events_event_id_key on recsql.events (event_id);
create index events_user_idx on recsql.events (user_id, xid, seq);

comment on table recsql.events is
    'Append-only event log. INSERT or COPY (user_id, item_id, event_type, ts) directly, or call recsql.track()';
comment on column recsql.events.event_id is 'Idempotency key: a second event with the same id is dropped';
comment on column recsql.events.xid is 'Inserting transaction; replay order is (xid, seq)';
comment on column recsql.events.arrived_at is 'Server time the event was stored';

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
    maintained_at timestamptz
);

insert into recsql.fold_state default values;

comment on table recsql.fold_state is 'Every event with xid below horizon has been folded';
comment on column recsql.fold_state.cooc_horizon is 'Pair formations by events with ts before this are expired (null: none)';

create table recsql.user_item_events (
    user_id text not null,
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
    constraint item_pairs_pkey primary key (kind, item_a, item_b)
);

comment on table recsql.item_pairs is
    'Derived: kind v = times item_b was in the user''s recent window when item_a entered it; '
    'kind p = the same over the user''s recent conversions (bought together). Stored in both directions.';

-- Serving index: each item's top neighbours by similarity, recomputed when its pairs change.
create table recsql.neighbor_lists (
    kind "char" not null,
    item_key integer not null,
    neighbors integer[] not null,
    scores real[] not null,
    together integer[] not null,
    refreshed_at timestamptz not null default now(),
    constraint neighbor_lists_pkey primary key (kind, item_key)
);

comment on table recsql.neighbor_lists is
    'Per item and pair kind, the neighbors_per_item best neighbours by similarity, best first; read by the queries';

create table recsql.neighbor_dirty (
    kind "char" not null,
    item_key integer not null,
    marked_at timestamptz not null default now(),
    constraint neighbor_dirty_pkey primary key (kind, item_key)
);

comment on table recsql.neighbor_dirty is 'Items whose pairs changed since their neighbour list was computed';
-- Ingestion: what happens inside the client's transaction. It only appends (the event row and one
-- inbox row per statement), so concurrent writers never wait on each other's counters.

-- Generates an event id: time-ordered UUIDv7 where the server has it, so the id index appends.
do $$
begin
    if exists (select 1 from pg_proc where proname = 'uuidv7' and pronamespace = 'pg_catalog'::regnamespace) then
        execute $f$create function recsql.new_event_id() returns text language sql volatile parallel safe
            as 'select pg_catalog.uuidv7()::text'$f$;
    else
        execute $f$create function recsql.new_event_id() returns text language sql volatile parallel safe
            as 'select pg_catalog.gen_random_uuid()::text'$f$;
    end if;
end
$$;

comment on function recsql.new_event_id() is 'Generates an event id for events sent without one';

-- Fills server-side columns and drops an event whose id was already stored (idempotent retries).
create function recsql.events_before_insert() returns trigger
language plpgsql as $$
begin
    if new.event_id is null then
        new.event_id := recsql.new_event_id();
    elsif exists (select 1 from recsql.events e where e.event_id = new.event_id) then
        return null;
    end if;
    new.xid := pg_current_xact_id();
    new.arrived_at := now();
    return new;
end
$$;

comment on function recsql.events_before_insert() is
    'Fills event_id, xid and arrived_at; skips a duplicate event_id so a retried delivery counts once';

create trigger events_before_insert before insert on recsql.events
    for each row execute function recsql.events_before_insert();

-- Validates a whole statement at once and queues it for the folder; raising here undoes the statement.
create function recsql.events_after_insert() returns trigger
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_bad record;
begin
    select * into v_settings from recsql.settings;

    select n.event_type into v_bad
    from new_events n
    where not exists (select 1 from recsql.event_types t where t.name = n.event_type)
    limit 1;
    if found then
        raise exception 'unknown event type "%"', v_bad.event_type
            using errcode = '23503',
                  constraint = 'events_event_type_fkey',
                  hint = format('Known types: %s. Add a type with INSERT INTO recsql.event_types (name, weight) VALUES (...).',
                                (select string_agg(name, ', ' order by name) from recsql.event_types));
    end if;

    select n.event_id, n.ts into v_bad
    from new_events n
    where n.ts > now() + v_settings.max_future
    limit 1;
    if found then
        raise exception 'event "%" has timestamp % which is more than % in the future',
                v_bad.event_id, v_bad.ts, v_settings.max_future
            using errcode = '23514',
                  constraint = 'events_ts_check',
                  hint = 'Send the time the event happened (UTC, ISO 8601), or omit it to use the server time.';
    end if;

    select n.event_id, n.event_type, n.value, t.value_min, t.value_max into v_bad
    from new_events n
    join recsql.event_types t on t.name = n.event_type
    where t.value_max is not null and (n.value is null or n.value < t.value_min or n.value > t.value_max)
    limit 1;
    if found then
        raise exception 'event "%" of type "%" needs a value between % and %, got %',
                v_bad.event_id, v_bad.event_type, v_bad.value_min, v_bad.value_max, coalesce(v_bad.value::text, 'none')
            using errcode = '23514',
                  constraint = 'events_value_range_check';
    end if;

    insert into recsql.event_inbox (xid, first_seq, last_seq, n)
    select pg_current_xact_id(), min(seq), max(seq), count(*)
    from new_events
    having count(*) > 0;
    return null;
end
$$;

comment on function recsql.events_after_insert() is
    'Rejects unknown types, future timestamps and out-of-range values for the whole statement; queues it for folding';

create trigger events_after_insert after insert on recsql.events
    referencing new table as new_events
    for each statement execute function recsql.events_after_insert();

-- Events are facts: changing one would silently desynchronise derived state.
create function recsql.events_guard() returns trigger
language plpgsql as $$
begin
    if tg_op = 'DELETE' and current_setting('recsql.forgetting', true) = 'on' then
        return null;
    end if;
    raise exception '% on recsql.events is not allowed', tg_op
        using errcode = '55000',
              hint = 'Events are immutable. Use recsql.forget_user(user_id) to delete a user''s events.';
end
$$;

comment on function recsql.events_guard() is 'Blocks UPDATE, DELETE and TRUNCATE of events outside recsql.forget_user()';

create trigger events_guard before update or delete or truncate on recsql.events
    for each statement execute function recsql.events_guard();

-- Keeps updated_at honest for catalog edits.
create function recsql.items_touch() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end
$$;

comment on function recsql.items_touch() is 'Sets items.updated_at on every update';

create trigger items_touch before update on recsql.items
    for each row execute function recsql.items_touch();

-- The API entry point for one event; same effect as an INSERT, plus a result saying what happened.
create function recsql.track(
    user_id text,
    item_id text,
    event_type text,
    ts timestamptz default now(),
    value double precision default null,
    event_id text default null,
    session_id text default null,
    properties jsonb default '{}'
) returns table (id text, seq bigint, duplicate boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_event_id text := coalesce(track.event_id, recsql.new_event_id());
    v_seq bigint;
begin
    insert into recsql.events as e (event_id, user_id, item_id, event_type, value, ts, session_id, properties)
    values (v_event_id, track.user_id, track.item_id, track.event_type, track.value,
            coalesce(track.ts, now()), track.session_id, coalesce(track.properties, '{}'))
    on conflict (event_id) do nothing
    returning e.seq into v_seq;
    if v_seq is null then
        return query select v_event_id, (select x.seq from recsql.events x where x.event_id = v_event_id), true;
    else
        return query select v_event_id, v_seq, false;
    end if;
end
$$;

comment on function recsql.track(text, text, text, timestamptz, double precision, text, text, jsonb) is
    'Records one event idempotently (same event_id twice counts once); returns its id and whether it was a duplicate';
-- Folding: the one place where events become derived state. A single folder at a time (advisory
-- lock) applies committed events in replay order (xid, seq); every derived value is an exact sum of
-- per-event or per-formation contributions, so incremental folding, rebuild() and forget_user()
-- agree to the last digit.

-- Key of the advisory lock that serialises folding, rebuild, forget_user and maintain.
create function recsql._fold_lock_key() returns bigint
language sql immutable parallel safe as $$ select 7274006961524951345::bigint $$;

comment on function recsql._fold_lock_key() is 'Advisory lock key held by whoever writes derived state';

-- The replay horizon: every transaction of this database with a smaller id has ended.
create function recsql._fold_horizon() returns xid8
language sql volatile as $$
    -- pg_snapshot_xmin would do, but it counts running transactions of every database on the
    -- server: a long load elsewhere would stall folding here. Only xids provably owned by another
    -- database are skipped; anything else (this database, unknown, prepared here) holds it back.
    select least(
        pg_snapshot_xmax(q.s),
        pg_current_xact_id_if_assigned(),
        (select min(x.id)
         from pg_snapshot_xip(q.s) as x(id)
         where not exists (
                   select 1 from pg_stat_activity a
                   where a.backend_xid = xid(x.id) and a.datname is distinct from current_database())
           and not exists (
                   select 1 from pg_prepared_xacts p
                   where p.transaction = xid(x.id) and p.database <> current_database())))
    from (select pg_current_snapshot() as s) q
$$;

comment on function recsql._fold_horizon() is
    'Smallest xid of a transaction of this database that may still insert events (or the snapshot xmax)';

-- One event's share of item popularity: weight * 2^((ts - epoch) / half-life), rounded to a fixed
-- scale so that sums are exact and independent of order.
create function recsql._popularity(p_weight double precision, p_ts timestamptz, p_epoch timestamptz,
                                   p_half_life interval)
returns numeric
language sql immutable parallel safe as $$
    select round((p_weight * power(2::double precision,
        greatest(-1000, least(1000,
            extract(epoch from p_ts - p_epoch)::double precision
            / extract(epoch from p_half_life)::double precision))))::numeric, 6)
$$;

comment on function recsql._popularity(double precision, timestamptz, timestamptz, interval) is
    'Contribution of one event to item_stats.popularity';

-- Per-session scratch tables: the events being folded (ctx rows are earlier events that only
-- provide each user's window), pair deltas and new item users. Created once per session.
create function recsql._batch_reset() returns void
language plpgsql as $$
begin
    if to_regclass('pg_temp.recsql_batch') is null then
        create temp table recsql_batch (
            user_id text not null,
            item_id text not null,
            item_key integer,
            event_type text not null,
            value double precision,
            ts timestamptz not null,
            xid xid8 not null,
            seq bigint not null,
            ctx boolean not null default false
        ) on commit delete rows;
        create temp table recsql_pair_delta (
            kind "char" not null,
            item_a integer not null,
            item_b integer not null,
            n integer not null
        ) on commit delete rows;
        create temp table recsql_new_users (
            item_key integer not null,
            n integer not null
        ) on commit delete rows;
    else
        truncate pg_temp.recsql_batch, pg_temp.recsql_pair_delta, pg_temp.recsql_new_users;
    end if;
end
$$;

comment on function recsql._batch_reset() is 'Creates or empties the session''s scratch tables used while folding';

-- Gives every batch event its item_key, registering items seen for the first time.
create function recsql._batch_resolve_items() returns void
language plpgsql as $$
begin
    insert into recsql.items (item_id)
    select distinct b.item_id
    from pg_temp.recsql_batch b
    where b.item_key is null
      and not exists (select 1 from recsql.items i where i.item_id = b.item_id)
    order by 1
    on conflict (item_id) do nothing;

    update pg_temp.recsql_batch b
    set item_key = i.item_key
    from recsql.items i
    where b.item_key is null and i.item_id = b.item_id;

    if (select count(*) from pg_temp.recsql_batch) > 1000 then
        analyze pg_temp.recsql_batch;
    end if;
end
$$;

comment on function recsql._batch_resolve_items() is 'Maps batch item ids to item keys; an unknown item is registered';

-- Adds, per user in the batch, the earlier events that fall inside the pair windows.
create function recsql._batch_add_context() returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;

    insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq, ctx)
    with firsts as (
        select distinct on (b.user_id) b.user_id, b.xid, b.seq
        from pg_temp.recsql_batch b
        where not b.ctx
        order by b.user_id, b.xid, b.seq
    ), converting as (
        -- Only a conversion forms bought-together pairs, so only converting users need that window.
        select f.*
        from firsts f
        where f.user_id in (
            select b.user_id
            from pg_temp.recsql_batch b
            join recsql.event_types t on t.name = b.event_type
            where not b.ctx and t.is_conversion)
    ), earlier as (
        select c.*
        from firsts f
        cross join lateral (
            select e.user_id, e.item_id, e.event_type, e.value, e.ts, e.xid, e.seq
            from recsql.events e
            join recsql.event_types t on t.name = e.event_type
            where e.user_id = f.user_id and (e.xid, e.seq) < (f.xid, f.seq) and t.forms_pairs
            order by e.xid desc, e.seq desc
            limit v_settings.cooc_window
        ) c
        union
        select c.*
        from converting f
        cross join lateral (
            select e.user_id, e.item_id, e.event_type, e.value, e.ts, e.xid, e.seq
            from recsql.events e
            join recsql.event_types t on t.name = e.event_type
            where e.user_id = f.user_id and (e.xid, e.seq) < (f.xid, f.seq) and t.is_conversion
            order by e.xid desc, e.seq desc
            limit v_settings.purchase_window
        ) c
    )
    select x.user_id, x.item_id, i.item_key, x.event_type, x.value, x.ts, x.xid, x.seq, true
    from earlier x
    join recsql.items i on i.item_id = x.item_id;
end
$$;

comment on function recsql._batch_add_context() is
    'Loads each batch user''s previous window events so pairs formed across fold boundaries are counted';

-- Adds (p_sign = 1) or removes (p_sign = -1) the pair formations of the batch's non-context events
-- whose ts lies in [p_from, p_to). kind v: pair-forming events, window cooc_window; kind p:
-- conversions, window purchase_window. An event forms a pair with each distinct item among the
-- user's previous N events of that kind, unless its own item is among them (no inflation by repeats).
create function recsql._apply_pairs(p_sign integer, p_from timestamptz, p_to timestamptz) returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;

    truncate pg_temp.recsql_pair_delta;

    insert into pg_temp.recsql_pair_delta (kind, item_a, item_b, n)
    with windowed as (
        select 'v'::"char" as kind, b.seq, b.item_key, b.ts, b.ctx,
               array_agg(b.item_key) over (
                   partition by b.user_id order by b.xid, b.seq
                   rows between v_settings.cooc_window preceding and 1 preceding) as prev
        from pg_temp.recsql_batch b join recsql.event_types t on t.name = b.event_type
        where t.forms_pairs
        union all
        select 'p'::"char", b.seq, b.item_key, b.ts, b.ctx,
               array_agg(b.item_key) over (
                   partition by b.user_id order by b.xid, b.seq
                   rows between v_settings.purchase_window preceding and 1 preceding)
        from pg_temp.recsql_batch b join recsql.event_types t on t.name = b.event_type
        where t.is_conversion
    ), formed as (
        -- distinct: an item seen twice in the window pairs once with the event.
        select distinct w.kind, w.seq, w.item_key as a, x.b
        from windowed w
        cross join lateral unnest(w.prev) as x(b)
        where not w.ctx and w.ts >= p_from and w.ts < p_to and w.item_key <> all (w.prev)
    ), directed as (
        select kind, a, b from formed
        union all
        select kind, b, a from formed
    )
    select kind, a, b, p_sign * count(*)::integer
    from directed
    group by kind, a, b;

    insert into recsql.item_pairs as p (kind, item_a, item_b, n)
    select d.kind, d.item_a, d.item_b, d.n
    from pg_temp.recsql_pair_delta d
    order by d.kind, d.item_a, d.item_b
    on conflict (kind, item_a, item_b) do update set n = p.n + excluded.n;

    if p_sign < 0 then
        delete from recsql.item_pairs p
        using pg_temp.recsql_pair_delta d
        where p.kind = d.kind and p.item_a = d.item_a and p.item_b = d.item_b and p.n <= 0;
    end if;

    insert into recsql.neighbor_dirty (kind, item_key)
    select distinct d.kind, d.item_a
    from pg_temp.recsql_pair_delta d
    order by 1, 2
    on conflict (kind, item_key) do nothing;
end
$$;

comment on function recsql._apply_pairs(integer, timestamptz, timestamptz) is
    'Counts (or uncounts) the co-occurrence and bought-together pairs formed by the batch events';

-- Adds the batch's non-context events to the per user/item/type statistics.
create function recsql._apply_stats() returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;
    if v_settings.decay_epoch is null then
        update recsql.settings
        set decay_epoch = (select date_trunc('day', min(ts)) from pg_temp.recsql_batch where not ctx)
        returning * into v_settings;
    end if;

    -- Items gaining a user: any (user, item) with no earlier event.
    truncate pg_temp.recsql_new_users;
    insert into pg_temp.recsql_new_users (item_key, n)
    select u.item_key, count(*)
    from (select distinct b.user_id, b.item_key from pg_temp.recsql_batch b where not b.ctx) u
    where not exists (
        select 1 from recsql.user_item_events x where x.user_id = u.user_id and x.item_key = u.item_key)
    group by u.item_key;

    insert into recsql.user_item_events as x (user_id, item_key, event_type, n, value_sum, first_ts, last_ts)
    select b.user_id, b.item_key, b.event_type, count(*), coalesce(sum(b.value::numeric), 0), min(b.ts), max(b.ts)
    from pg_temp.recsql_batch b
    where not b.ctx
    group by b.user_id, b.item_key, b.event_type
    order by b.user_id, b.item_key, b.event_type
    on conflict (user_id, item_key, event_type) do update
    set n = x.n + excluded.n,
        value_sum = x.value_sum + excluded.value_sum,
        first_ts = least(x.first_ts, excluded.first_ts),
        last_ts = greatest(x.last_ts, excluded.last_ts);

    insert into recsql.item_event_counts as c (item_key, event_type, n, value_sum)
    select b.item_key, b.event_type, count(*), coalesce(sum(b.value::numeric), 0)
    from pg_temp.recsql_batch b
    where not b.ctx
    group by b.item_key, b.event_type
    order by b.item_key, b.event_type
    on conflict (item_key, event_type) do update
    set n = c.n + excluded.n, value_sum = c.value_sum + excluded.value_sum;

    insert into recsql.item_stats as s (item_key, n_users, n_events, popularity)
    select e.item_key, coalesce(nu.n, 0), e.n_events, e.popularity
    from (
        select b.item_key, count(*) as n_events,
               sum(recsql._popularity(t.weight, b.ts, v_settings.decay_epoch, v_settings.trending_half_life)) as popularity
        from pg_temp.recsql_batch b
        join recsql.event_types t on t.name = b.event_type
        where not b.ctx
        group by b.item_key
    ) e
    left join pg_temp.recsql_new_users nu on nu.item_key = e.item_key
    order by e.item_key
    on conflict (item_key) do update
    set n_users = s.n_users + excluded.n_users,
        n_events = s.n_events + excluded.n_events,
        popularity = s.popularity + excluded.popularity;
end
$$;

comment on function recsql._apply_stats() is 'Adds the batch events to user_item_events, item_event_counts and item_stats';

-- Folds every committed event that no running transaction can precede; returns how many.
create function recsql.fold() returns bigint
language plpgsql as $$
declare
    v_horizon xid8;
    v_n bigint;
    v_cooc_horizon timestamptz;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    -- Every transaction of this database older than the horizon has ended, so no event can still
    -- appear before the ones folded here in (xid, seq) order.
    v_horizon := recsql._fold_horizon();
    v_n := 0;
    -- An idle poll stops here: no scratch-table truncation (catalog churn) every 100 ms.
    if exists (select 1 from recsql.event_inbox q where q.xid < v_horizon) then
        perform recsql._batch_reset();
        with taken as (
            delete from recsql.event_inbox q where q.xid < v_horizon
            returning q.xid, q.first_seq, q.last_seq
        )
        insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
        select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
        from taken q
        -- One primary-key range scan per inbox row; OFFSET 0 keeps the planner, misled by the inbox's
        -- always-stale statistics, from turning this into a scan of every event.
        cross join lateral (
            select x.user_id, x.item_id, x.event_type, x.value, x.ts, x.xid, x.seq
            from recsql.events x
            where x.seq between q.first_seq and q.last_seq and x.xid = q.xid
            offset 0
        ) e
        left join recsql.items i on i.item_id = e.item_id;
        get diagnostics v_n = row_count;
    end if;
    if v_n > 0 then
        perform recsql._batch_resolve_items();
        perform recsql._batch_add_context();
        perform recsql._apply_stats();
        select coalesce(cooc_horizon, '-infinity') into v_cooc_horizon from recsql.fold_state;
        perform recsql._apply_pairs(1, v_cooc_horizon, 'infinity');
    end if;

    if v_n > 50000 then
        -- A bulk fold changes the derived tables faster than autovacuum re-samples them; fresh
        -- statistics keep the next folds and refreshes on good plans. Only tables that changed by
        -- a fifth since their last analyze: re-sampling millions of pairs every chunk is not free.
        analyze recsql.item_stats;
        if (select n_mod_since_analyze > 0.2 * greatest(n_live_tup, 1000)
            from pg_stat_user_tables where relid = 'recsql.item_pairs'::regclass) then
            analyze recsql.item_pairs;
        end if;
        if (select n_mod_since_analyze > 0.2 * greatest(n_live_tup, 1000)
            from pg_stat_user_tables where relid = 'recsql.user_item_events'::regclass) then
            analyze recsql.user_item_events;
        end if;
    end if;

    -- An idle poll writes nothing, except a heartbeat every few seconds for fold_status.
    update recsql.fold_state
    set horizon = greatest(horizon, v_horizon),
        folded_events = folded_events + v_n,
        last_fold_at = now()
    where v_n > 0 or last_fold_at is null or last_fold_at < now() - interval '5 seconds';
    return v_n;
end
$$;

comment on function recsql.fold() is
    'Folds committed events into the derived tables (not the neighbour lists); returns the count';

-- Similarity of a pair from its count and the two items' user counts.
create function recsql._pair_score(p_n integer, p_users_a integer, p_users_b integer, p_similarity text)
returns double precision
language sql immutable parallel safe as $$
    select case p_similarity
        when 'cosine' then p_n / sqrt(greatest(p_users_a, 1)::double precision * greatest(p_users_b, 1))
        when 'jaccard' then p_n / greatest(p_users_a + p_users_b - p_n, p_n, 1)::double precision
        else p_n::double precision
    end
$$;

comment on function recsql._pair_score(integer, integer, integer, text) is
    'cosine n/sqrt(users_a*users_b), jaccard n/(users_a+users_b-n), or the raw count';

-- Recomputes the neighbour lists of items whose pairs changed, oldest change first.
create function recsql.refresh_neighbors(max_items integer default null) returns integer
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_n integer;
    v_nestloop text;
    v_work_mem text;
    v_len integer;
    v_prune boolean;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    if not exists (select 1 from recsql.neighbor_dirty) then
        return 0;  -- idle: leave the scratch tables alone
    end if;
    select * into v_settings from recsql.settings;
    v_len := v_settings.neighbors_per_item;

    if to_regclass('pg_temp.recsql_refresh') is null then
        create temp table recsql_refresh (
            kind "char" not null,
            item_key integer not null,
            users integer not null,
            floor_score double precision,
            min_n integer not null,
            full_scan boolean not null default false
        ) on commit delete rows;
        create temp table recsql_refresh_scored (
            kind "char" not null,
            item_a integer not null,
            item_b integer not null,
            n integer not null,
            score double precision not null
        ) on commit delete rows;
    else
        truncate pg_temp.recsql_refresh, pg_temp.recsql_refresh_scored;
    end if;

    -- Pruning: a full list's last score is a floor. cosine <= n / sqrt(users_a) and count = n, so a
    -- pair whose count is below floor * sqrt(users_a) (cosine) or floor (count) cannot enter. If
    -- fewer than a full list of pairs still reach the floor, that item is recomputed without it.
    -- Pruning pays off for the steady trickle of a few items (a hot item's list rescored from a
    -- handful of its pairs); when most lists are due, one plain pass over the pairs is cheaper.
    v_prune := coalesce(refresh_neighbors.max_items, 2147483647) <= 10000
               or (select count(*) from recsql.neighbor_dirty) <= 10000;
    with picked as (
        select d.kind, d.item_key
        from recsql.neighbor_dirty d
        order by d.marked_at, d.kind, d.item_key
        limit refresh_neighbors.max_items
    )
    insert into pg_temp.recsql_refresh (kind, item_key, users, floor_score, min_n)
    select p.kind, p.item_key, coalesce(st.n_users, 0), f.floor_score,
           greatest(v_settings.min_support, coalesce(floor(case v_settings.similarity
               when 'cosine' then f.floor_score * sqrt(greatest(st.n_users, 1)) * (1 - 1e-9)
               when 'count' then f.floor_score * (1 - 1e-9)
           end)::integer, 0))
    from picked p
    left join recsql.item_stats st on st.item_key = p.item_key
    left join recsql.neighbor_lists l on l.kind = p.kind and l.item_key = p.item_key
    cross join lateral (
        select case when v_prune and cardinality(l.scores) >= v_len then l.scores[v_len]::double precision end
               as floor_score
    ) f;
    get diagnostics v_n = row_count;
    if v_n = 0 then
        return 0;
    end if;
    if v_n > 1000 then
        analyze pg_temp.recsql_refresh;
    end if;
    if v_n > 10000 then
        -- Recomputing most lists: hash-join item_stats once instead of a lookup per pair, and sort
        -- in memory. Local to this transaction; put back below.
        v_nestloop := current_setting('enable_nestloop');
        v_work_mem := current_setting('work_mem');
        perform set_config('enable_nestloop', 'off', true);
        perform set_config('work_mem', '256MB', true);
    end if;

    insert into pg_temp.recsql_refresh_scored (kind, item_a, item_b, n, score)
    select p.kind, p.item_a, p.item_b, p.n, recsql._pair_score(p.n, r.users, sb.n_users, v_settings.similarity)
    from pg_temp.recsql_refresh r
    join recsql.item_pairs p on p.kind = r.kind and p.item_a = r.item_key
    join recsql.item_stats sb on sb.item_key = p.item_b
    where p.n >= r.min_n;

    -- A join, not a correlated count: the scratch tables have no indexes.
    update pg_temp.recsql_refresh r
    set full_scan = true
    from (
        select f.kind, f.item_key
        from pg_temp.recsql_refresh f
        left join pg_temp.recsql_refresh_scored x
               on x.kind = f.kind and x.item_a = f.item_key and x.score >= f.floor_score
        where f.floor_score is not null
        group by f.kind, f.item_key
        having count(x.item_b) < v_len
    ) short
    where r.kind = short.kind and r.item_key = short.item_key;
    if found then
        delete from pg_temp.recsql_refresh_scored x
        using pg_temp.recsql_refresh r
        where r.full_scan and x.kind = r.kind and x.item_a = r.item_key;
        insert into pg_temp.recsql_refresh_scored (kind, item_a, item_b, n, score)
        select p.kind, p.item_a, p.item_b, p.n, recsql._pair_score(p.n, r.users, sb.n_users, v_settings.similarity)
        from pg_temp.recsql_refresh r
        join recsql.item_pairs p on p.kind = r.kind and p.item_a = r.item_key
        join recsql.item_stats sb on sb.item_key = p.item_b
        where r.full_scan and p.n >= v_settings.min_support;
    end if;

    delete from recsql.neighbor_dirty d
    using pg_temp.recsql_refresh r
    where d.kind = r.kind and d.item_key = r.item_key;

    delete from recsql.neighbor_lists l
    using pg_temp.recsql_refresh r
    where l.kind = r.kind and l.item_key = r.item_key;

    insert into recsql.neighbor_lists (kind, item_key, neighbors, scores, together)
    select x.kind, x.item_a,
           array_agg(x.item_b order by x.rank),
           array_agg(x.score::real order by x.rank),
           array_agg(x.n order by x.rank)
    from (
        select s.kind, s.item_a, s.item_b, s.n, s.score,
               row_number() over (partition by s.kind, s.item_a order by s.score desc, s.item_b) as rank
        from pg_temp.recsql_refresh_scored s
    ) x
    where x.rank <= v_len
    group by x.kind, x.item_a;

    if v_nestloop is not null then
        perform set_config('enable_nestloop', v_nestloop, true);
        perform set_config('work_mem', v_work_mem, true);
    end if;
    return v_n;
end
$$;

comment on function recsql.refresh_neighbors(integer) is
    'Recomputes the neighbour lists of up to max_items changed items (all when null); returns how many';

-- Makes every committed event visible to every query function now.
create function recsql.flush() returns bigint
language plpgsql as $$
declare
    v_n bigint;
begin
    v_n := recsql.fold();
    perform recsql.refresh_neighbors();
    return v_n;
end
$$;

comment on function recsql.flush() is
    'Folds committed events and refreshes the affected neighbour lists; the worker does this continuously';

-- Queues every neighbour list for recomputation (after a settings change, and hourly against drift).
create function recsql.mark_all_neighbors() returns bigint
language sql as $$
    with marked as (
        insert into recsql.neighbor_dirty (kind, item_key)
        select distinct p.kind, p.item_a from recsql.item_pairs p
        on conflict (kind, item_key) do nothing
        returning 1
    )
    select count(*) from marked
$$;

comment on function recsql.mark_all_neighbors() is
    'Marks every item with pairs for a neighbour-list refresh; returns how many were newly marked';

-- Recomputes all derived state from the event log, in the same replay order as incremental folding.
create function recsql.rebuild() returns bigint
language plpgsql as $$
declare
    v_horizon xid8;
    v_n bigint;
    v_cooc_horizon timestamptz;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    v_horizon := recsql._fold_horizon();

    truncate recsql.user_item_events, recsql.item_event_counts, recsql.item_stats, recsql.item_pairs,
             recsql.neighbor_lists, recsql.neighbor_dirty;
    delete from recsql.event_inbox where xid < v_horizon;

    perform recsql._batch_reset();
    insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
    select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
    from recsql.events e
    left join recsql.items i on i.item_id = e.item_id
    where e.xid < v_horizon;
    get diagnostics v_n = row_count;

    if v_n > 0 then
        perform recsql._batch_resolve_items();
        perform recsql._apply_stats();
        select coalesce(cooc_horizon, '-infinity') into v_cooc_horizon from recsql.fold_state;
        perform recsql._apply_pairs(1, v_cooc_horizon, 'infinity');
    end if;

    perform recsql.refresh_neighbors();
    update recsql.fold_state
    set horizon = greatest(horizon, v_horizon), folded_events = v_n, last_fold_at = now();
    return v_n;
end
$$;

comment on function recsql.rebuild() is 'Recomputes all derived state from recsql.events; returns the number of events replayed';

-- Deletes a user's events and removes exactly their contribution from every derived table.
create function recsql.forget_user(p_user_id text) returns bigint
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_horizon xid8;
    v_cooc_horizon timestamptz;
    v_n bigint;
begin
    if p_user_id is null then
        raise exception 'forget_user needs a user id' using errcode = '22004';
    end if;
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    -- Fold first so that every visible event of the user below the horizon is in derived state.
    perform recsql.flush();
    select * into v_settings from recsql.settings;
    select horizon, coalesce(cooc_horizon, '-infinity') into v_horizon, v_cooc_horizon from recsql.fold_state;

    perform recsql._batch_reset();
    insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
    select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
    from recsql.events e
    join recsql.items i on i.item_id = e.item_id
    where e.user_id = p_user_id and e.xid < v_horizon;

    perform recsql._apply_pairs(-1, v_cooc_horizon, 'infinity');

    update recsql.item_event_counts c
    set n = c.n - x.n, value_sum = c.value_sum - x.value_sum
    from (select item_key, event_type, sum(n) as n, sum(value_sum) as value_sum
          from recsql.user_item_events where user_id = p_user_id
          group by item_key, event_type) x
    where c.item_key = x.item_key and c.event_type = x.event_type;
    delete from recsql.item_event_counts where n <= 0;

    update recsql.item_stats s
    set n_users = s.n_users - 1,
        n_events = s.n_events - x.n_events,
        popularity = s.popularity - x.popularity
    from (select b.item_key, count(*) as n_events,
                 sum(recsql._popularity(t.weight, b.ts, v_settings.decay_epoch, v_settings.trending_half_life)) as popularity
          from pg_temp.recsql_batch b join recsql.event_types t on t.name = b.event_type
          group by b.item_key) x
    where s.item_key = x.item_key;
    delete from recsql.item_stats where n_events <= 0;

    delete from recsql.user_item_events where user_id = p_user_id;

    perform set_config('recsql.forgetting', 'on', true);
    delete from recsql.events where user_id = p_user_id;
    get diagnostics v_n = row_count;
    perform set_config('recsql.forgetting', 'off', true);
    -- No list may keep a trace of the user.
    perform recsql.refresh_neighbors();
    return v_n;
end
$$;

comment on function recsql.forget_user(text) is
    'Deletes the user''s events and their contribution to all derived state, in the caller''s transaction';

-- Periodic upkeep: expires old pair formations (the storage bound) and re-bases popularity.
create function recsql.maintain() returns table (expired_before timestamptz, pair_rows bigint)
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_old timestamptz;
    v_new timestamptz;
    v_horizon xid8;
    v_shift double precision;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    perform recsql.flush();
    select * into v_settings from recsql.settings;
    select coalesce(cooc_horizon, '-infinity'), horizon into v_old, v_horizon from recsql.fold_state;
    v_new := date_trunc('day', now() - v_settings.cooc_retention);

    if v_new > v_old then
        perform recsql._batch_reset();
        insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
        select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
        from recsql.events e
        join recsql.items i on i.item_id = e.item_id
        where e.xid < v_horizon
          and e.user_id in (select x.user_id from recsql.events x where x.ts >= v_old and x.ts < v_new);
        if (select count(*) from pg_temp.recsql_batch) > 1000 then
            analyze pg_temp.recsql_batch;
        end if;
        perform recsql._apply_pairs(-1, v_old, v_new);
        update recsql.fold_state set cooc_horizon = v_new;
    end if;

    -- Popularity is stored relative to decay_epoch; move the epoch before 2^x leaves float range.
    if v_settings.decay_epoch is not null then
        v_shift := extract(epoch from now() - v_settings.decay_epoch)
                   / extract(epoch from v_settings.trending_half_life);
        if v_shift > 500 then
            update recsql.item_stats
            set popularity = round(popularity * power(2::numeric, -floor(v_shift)::integer), 6);
            update recsql.settings
            set decay_epoch = decay_epoch + floor(v_shift) * trending_half_life;
        end if;
    end if;

    -- Scores depend on partners' user counts too: recompute lists untouched for a day.
    insert into recsql.neighbor_dirty (kind, item_key)
    select l.kind, l.item_key
    from recsql.neighbor_lists l
    where l.refreshed_at < now() - interval '1 day'
    on conflict (kind, item_key) do nothing;
    update recsql.fold_state set maintained_at = now();

    return query select fs.cooc_horizon, (select count(*) from recsql.item_pairs)
                 from recsql.fold_state fs;
end
$$;

comment on function recsql.maintain() is
    'Expires pair formations older than settings.cooc_retention, keeps popularity in range, queues lists older than a day for refresh; run hourly';

-- Order-independent fingerprint of derived state, to check incremental state against rebuild().
create function recsql.state_digest()
returns table (table_name text, row_count bigint, checksum numeric)
language sql stable as $$
    select 'user_item_events', count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)
    from recsql.user_item_events x
    union all
    select 'item_event_counts', count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)
    from recsql.item_event_counts x
    union all
    select 'item_stats', count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)
    from recsql.item_stats x
    union all
    select 'item_pairs', count(*), coalesce(sum(hashtextextended(x::text, 0)::numeric), 0)
    from recsql.item_pairs x
$$;

comment on function recsql.state_digest() is
    'Row counts and checksums of every derived table; equal digests mean equal state';
-- Queries: read derived state (and the user's freshest events) and rank items. Each public function
-- returns item_id text and score double precision first.

-- Spreads weighted source items over their precomputed neighbour lists; the core of every
-- personalised list.
create function recsql._pair_scores(p_kind "char", p_sources integer[], p_weights double precision[])
returns table (item_key integer, source_key integer, contribution double precision, together integer)
language sql stable parallel safe as $$
    select u.neighbor, src.k, src.w * u.score, u.together
    from (
        select x.k, max(x.w) as w
        from unnest(p_sources, p_weights) as x(k, w)
        where x.k is not null and x.w > 0
        group by x.k
    ) src
    join recsql.neighbor_lists l on l.kind = p_kind and l.item_key = src.k
    cross join lateral unnest(l.neighbors, l.scores, l.together) as u(neighbor, score, together)
$$;

comment on function recsql._pair_scores("char", integer[], double precision[]) is
    'Similarity-weighted contributions of source items to the items on their neighbour lists';

-- The user's recent events, read straight from the log so a committed event counts at once.
create function recsql._user_sources(p_user_id text)
returns table (item_key integer, item_id text, weight double precision, converted boolean)
language sql stable parallel safe as $$
    with s as (
        select * from recsql.settings
    ), recent as (
        select e.item_id, e.event_type, e.value,
               (row_number() over (order by e.xid desc, e.seq desc) - 1)::integer as rank
        from (
            select e.item_id, e.event_type, e.value, e.xid, e.seq
            from recsql.events e
            where e.user_id = p_user_id
            order by e.xid desc, e.seq desc
            limit (select history_length from s)
        ) e
    ), per_type as (
        select r.item_id, r.event_type, count(*) as n, avg(r.value) as mean_value, min(r.rank) as rank
        from recent r
        group by r.item_id, r.event_type
    ), per_item as (
        select pt.item_id,
               sum(t.weight * ln(1 + pt.n) / ln(2)
                   * case when t.value_max is null then 1 else coalesce(pt.mean_value / t.value_max, 1) end) as strength,
               min(pt.rank) as rank,
               bool_or(t.is_conversion) as converted
        from per_type pt
        join recsql.event_types t on t.name = pt.event_type
        group by pt.item_id
    )
    select i.item_key,
           p.item_id,
           greatest(p.strength, 0) * power(2::double precision, -p.rank / s.history_half_life),
           p.converted
    from per_item p
    cross join s
    left join recsql.items i on i.item_id = p.item_id
$$;

comment on function recsql._user_sources(text) is
    'Weights of the items in the user''s recent history: damped per-type counts times recency';

-- Items to leave out of a user's list: purchased ones, or everything seen.
create function recsql._user_excluded(p_user_id text, p_purchased boolean, p_seen boolean)
returns table (item_key integer)
language sql stable parallel safe as $$
    select x.item_key
    from recsql.user_item_events x
    join recsql.event_types t on t.name = x.event_type
    where x.user_id = p_user_id and (p_seen or (p_purchased and t.is_conversion))
    union
    select s.item_key
    from recsql._user_sources(p_user_id) s
    where s.item_key is not null and (p_seen or (p_purchased and s.converted))
$$;

comment on function recsql._user_excluded(text, boolean, boolean) is
    'Items the user converted on (or interacted with), folded or still in flight';

-- Checks a list size argument once, with the same message everywhere.
create function recsql._check_k(p_k integer) returns integer
language plpgsql immutable as $$
begin
    if p_k is null or p_k < 1 or p_k > 1000 then
        raise exception 'k must be between 1 and 1000, got %', coalesce(p_k::text, 'null')
            using errcode = '22023';
    end if;
    return p_k;
end
$$;

comment on function recsql._check_k(integer) is 'Returns k, or rejects a missing, zero, negative or huge k';

-- Ranks items for a list of weighted sources, fills up with trending items, never repeats an item.
create function recsql._rank(p_sources integer[], p_weights double precision[], p_excluded integer[], p_k integer,
                             p_category text, p_in_stock_only boolean)
returns table (item_id text, score double precision, reason text)
language sql stable parallel safe as $$
    with contributions as materialized (
        select ps.item_key, ps.source_key, ps.contribution
        from recsql._pair_scores('v', p_sources, p_weights) ps
        where ps.item_key <> all (p_excluded)
    ), personal as (
        -- Rank on scores alone; the catalog is consulted only to filter, and for the k winners.
        select sc.item_key, sc.score
        from (select c.item_key, sum(c.contribution) as score from contributions c group by c.item_key) sc
        where (p_category is null and not p_in_stock_only)
           or exists (select 1 from recsql.items i
                      where i.item_key = sc.item_key
                        and (p_category is null or i.category = p_category)
                        and (not p_in_stock_only or i.in_stock))
        order by sc.score desc, sc.item_key
        limit p_k
    ), fill as (
        select st.item_key, st.popularity
        from recsql.item_stats st
        join recsql.items i on i.item_key = st.item_key
        where st.popularity > 0
          and (p_category is null or i.category = p_category)
          and (not p_in_stock_only or i.in_stock)
          and st.item_key <> all (p_excluded)
          and st.item_key not in (select item_key from personal)
        order by st.popularity desc, st.item_key
        limit p_k
    )
    select r.item_id, r.score, r.reason
    from (
        select i.item_id, p.score, 'similar to ' || src.item_id as reason, 0 as grp, p.score as ord, p.item_key
        from personal p
        join recsql.items i on i.item_key = p.item_key
        cross join lateral (
            select c.source_key from contributions c
            where c.item_key = p.item_key
            order by c.contribution desc, c.source_key
            limit 1
        ) top
        join recsql.items src on src.item_key = top.source_key
        union all
        select i.item_id, 0::double precision, 'trending', 1, f.popularity::double precision, f.item_key
        from fill f join recsql.items i on i.item_key = f.item_key
    ) r
    order by r.grp, r.ord desc, r.item_key
    limit p_k
$$;

comment on function recsql._rank(integer[], double precision[], integer[], integer, text, boolean) is
    'Shared ranking of recommend() and session_recommend(): co-occurrence scores, then trending fill';

-- Personalised top-k for a user from their recent history; trending for users with none.
create function recsql.recommend(
    user_id text,
    k integer default 10,
    category text default null,
    in_stock_only boolean default false,
    exclude_purchased boolean default true,
    exclude_seen boolean default false
) returns table (item_id text, score double precision, reason text)
language plpgsql stable as $$
#variable_conflict use_column
declare
    v_sources integer[];
    v_weights double precision[];
    v_excluded integer[];
begin
    perform recsql._check_k(k);
    if recommend.user_id is null then
        raise exception 'recommend needs a user id' using errcode = '22004';
    end if;
    select coalesce(array_agg(s.item_key), '{}'), coalesce(array_agg(s.weight), '{}')
    into v_sources, v_weights
    from recsql._user_sources(recommend.user_id) s
    where s.item_key is not null;
    select coalesce(array_agg(x.item_key), '{}') into v_excluded
    from recsql._user_excluded(recommend.user_id, coalesce(exclude_purchased, true), coalesce(exclude_seen, false)) x;
    return query
    select r.item_id, r.score, r.reason
    from recsql._rank(v_sources, v_weights, v_excluded, k, category, coalesce(in_stock_only, false)) r;
end
$$;

comment on function recsql.recommend(text, integer, text, boolean, boolean, boolean) is
    'Personalised recommendations: co-occurrence neighbours of the user''s recent items, trending as fallback';

-- Recommendations for an anonymous session given the items it touched (most recent last).
create function recsql.session_recommend(item_ids text[], k integer default 10, category text default null,
                                         in_stock_only boolean default false)
returns table (item_id text, score double precision, reason text)
language plpgsql stable as $$
#variable_conflict use_column
declare
    v_sources integer[];
    v_weights double precision[];
    v_half_life double precision;
begin
    perform recsql._check_k(k);
    select history_half_life into v_half_life from recsql.settings;
    select coalesce(array_agg(i.item_key), '{}'),
           coalesce(array_agg(power(2::double precision, -(cardinality(item_ids) - u.pos) / v_half_life)), '{}')
    into v_sources, v_weights
    from unnest(coalesce(item_ids, '{}')) with ordinality as u(id, pos)
    join recsql.items i on i.item_id = u.id;
    return query
    select r.item_id, r.score, r.reason
    from recsql._rank(v_sources, v_weights, v_sources, k, category, coalesce(in_stock_only, false)) r;
end
$$;

comment on function recsql.session_recommend(text[], integer, text, boolean) is
    'Recommendations for an anonymous session from the items it viewed, most recent last';

-- Reads one item's neighbour list of a kind, best first.
create function recsql._neighbors(p_kind "char", p_item_id text, p_k integer)
returns table (item_id text, score double precision, together integer)
language sql stable parallel safe as $$
    select i.item_id, u.score, u.together
    from recsql.items src
    join recsql.neighbor_lists l on l.kind = p_kind and l.item_key = src.item_key
    cross join lateral unnest(l.neighbors, l.scores, l.together) with ordinality as u(neighbor, score, together, pos)
    join recsql.items i on i.item_key = u.neighbor
    where src.item_id = p_item_id
    order by u.pos
    limit recsql._check_k(p_k)
$$;

comment on function recsql._neighbors("char", text, integer) is 'Top of an item''s neighbour list of one kind';

-- Items most often in the same recent window as the given item, normalised for popularity.
create function recsql.similar_items(item_id text, k integer default 10)
returns table (item_id text, score double precision, together integer)
language sql stable as $$
    select n.item_id, n.score, n.together from recsql._neighbors('v', similar_items.item_id, similar_items.k) n
$$;

comment on function recsql.similar_items(text, integer) is
    'Items similar to the given one by normalised co-occurrence (at most settings.neighbors_per_item)';

-- Items bought by the same users close to the given item, normalised for popularity.
create function recsql.bought_together(item_id text, k integer default 10)
returns table (item_id text, score double precision, together integer)
language sql stable as $$
    select n.item_id, n.score, n.together from recsql._neighbors('p', bought_together.item_id, bought_together.k) n
$$;

comment on function recsql.bought_together(text, integer) is 'Items bought together with the given one';

-- Popularity decayed from decay_epoch to now: weighted events per half-life as of now.
create function recsql._trending_score(p_popularity numeric) returns double precision
language sql stable parallel safe as $$
    select p_popularity::double precision
           * power(2::double precision, -greatest(-1000, least(1000,
               extract(epoch from now() - s.decay_epoch)::double precision
               / extract(epoch from s.trending_half_life)::double precision)))
    from recsql.settings s
$$;

comment on function recsql._trending_score(numeric) is 'item_stats.popularity scaled to now';

-- Items by time-decayed weighted popularity; score is weighted events per half-life as of now.
create function recsql.trending(k integer default 10, category text default null)
returns table (item_id text, score double precision)
language sql stable as $$
    select i.item_id, recsql._trending_score(st.popularity)
    from recsql.item_stats st
    join recsql.items i on i.item_key = st.item_key
    where st.popularity > 0 and (trending.category is null or i.category = trending.category)
    order by st.popularity desc, st.item_key
    limit recsql._check_k(trending.k)
$$;

comment on function recsql.trending(integer, text) is 'Trending items (time-decayed popularity), optionally in one category';

-- Why an item is recommended to a user: each recent item's contribution.
create function recsql.explain(user_id text, item_id text)
returns table (source_item_id text, contribution double precision, share double precision,
               source_weight double precision, together integer)
language sql stable as $$
    with src as (
        select s.item_key, s.weight from recsql._user_sources(explain.user_id) s where s.item_key is not null
    ), target as (
        select i.item_key from recsql.items i where i.item_id = explain.item_id
    ), c as (
        select ps.source_key, ps.contribution, ps.together
        from recsql._pair_scores('v', (select array_agg(item_key) from src), (select array_agg(weight) from src)) ps
        where ps.item_key = (select item_key from target)
    )
    select i.item_id, c.contribution, c.contribution / nullif(sum(c.contribution) over (), 0), src.weight, c.together
    from c
    join src on src.item_key = c.source_key
    join recsql.items i on i.item_key = c.source_key
    order by c.contribution desc, i.item_id
$$;

comment on function recsql.explain(text, text) is
    'The user''s recent items that make item_id a recommendation, with their contributions and shares';
-- Stable views for analysts and BI tools. Column names here are a contract: add, never rename.

create view recsql.user_items as
select x.user_id,
       i.item_id,
       greatest(0, sum(t.weight * ln(1 + x.n) / ln(2)
           * case when t.value_max is null then 1
                  else coalesce((x.value_sum / x.n)::double precision / t.value_max, 1) end)) as strength,
       sum(x.n)::bigint as events,
       min(x.first_ts) as first_ts,
       max(x.last_ts) as last_ts,
       bool_or(t.is_conversion) as converted
from recsql.user_item_events x
join recsql.event_types t on t.name = x.event_type
join recsql.items i on i.item_key = x.item_key
group by x.user_id, i.item_id;

comment on view recsql.user_items is
    'Interaction strength per user and item: sum over types of weight * log2(1 + count), floored at 0';

create view recsql.item_popularity as
select i.item_id,
       i.title,
       i.category,
       st.n_users,
       st.n_events,
       recsql._trending_score(st.popularity) as trending_score
from recsql.item_stats st
join recsql.items i on i.item_key = st.item_key;

comment on view recsql.item_popularity is 'Per item: distinct users, events, and trending score as of now';

create view recsql.item_neighbors as
select a.item_id,
       b.item_id as neighbor_id,
       case p.kind when 'v' then 'cooccurrence' else 'bought_together' end as kind,
       p.n as together,
       recsql._pair_score(p.n, sa.n_users, sb.n_users, 'cosine') as cosine
from recsql.item_pairs p
join recsql.items a on a.item_key = p.item_a
join recsql.items b on b.item_key = p.item_b
join recsql.item_stats sa on sa.item_key = p.item_a
join recsql.item_stats sb on sb.item_key = p.item_b;

comment on view recsql.item_neighbors is 'Every stored item pair with its count and cosine similarity';

create view recsql.fold_status as
select (select count(*) from recsql.event_inbox) as pending_statements,
       (select coalesce(sum(n), 0) from recsql.event_inbox)::bigint as pending_events,
       f.folded_events,
       f.last_fold_at,
       extract(epoch from now() - f.last_fold_at)::double precision as seconds_since_fold,
       (select count(*) from recsql.neighbor_dirty) as pending_lists,
       (select min(marked_at) from recsql.neighbor_dirty) as oldest_pending_list,
       f.cooc_horizon,
       f.maintained_at
from recsql.fold_state f;

comment on view recsql.fold_status is 'Folder progress: events waiting to reach derived state, and when it last ran';
