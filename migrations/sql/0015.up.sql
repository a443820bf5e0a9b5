-- 0015: retried event ids are dropped by the inserting statement's trigger instead of a row
-- trigger's probe. The id's unique constraint is deferred to commit, so that a repeated id goes in
-- and events_after_insert deletes it again (one probe per row inside one statement); the row
-- trigger runs only for rows that need server values filled (no id, or a client's xid or
-- arrived_at), so a COPY of the ingest columns skips it. recsql.track() probes before inserting;
-- a copy stored by a transaction still open makes the later commit fail (retry: duplicate).
-- Also: adding queued pairs skips the sum when it takes one queue row per half (nothing repeats),
-- and marks each list once before checking whether it is due already. Live model states get new
-- copies of those functions.
-- Rebuilds the event_id index under an exclusive lock on recsql.events.
-- Frozen: never edit after release.

drop index recsql.events_event_id_key;

alter table recsql.events
    add constraint events_event_id_key unique (event_id) deferrable initially deferred;

comment on column recsql.events.event_id is
    'Idempotency key: a second event with the same id is dropped (by the inserting statement''s trigger)';

create or replace function recsql.events_before_insert() returns trigger
language plpgsql as $$
begin
    if new.event_id is null then
        new.event_id := recsql.new_event_id();
    end if;
    new.xid := pg_current_xact_id();
    new.arrived_at := now();
    return new;
end
$$;

comment on function recsql.events_before_insert() is
    'Fills event_id when missing and sets xid and arrived_at to the server''s values';

create or replace function recsql.events_after_insert() returns trigger
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_bad record;
    v_range record;
    v_schema text;
begin
    if current_setting('recsql.no_events', true) = 'on' then
        raise exception 'this transaction promised to insert no events (it added pairs or refreshed neighbour lists first)'
            using errcode = '55000',
                  hint = 'Insert events in a transaction of their own; folding does not wait for transactions that promised.';
    end if;

    select * into v_settings from recsql.settings;

    -- One pass over the statement's rows finds its range and whether any row is bad; only a bad
    -- statement pays for the queries that name the first offender.
    select pg_current_xact_id() as xid, min(n.seq) as first_seq, max(n.seq) as last_seq, count(*) as n,
           coalesce(bool_or(t.name is null), false) as bad_type,
           -- Retried deliveries: an id stored before this row, by another transaction (which
           -- committed, as the row is visible) or earlier in this one; of two copies in one
           -- statement, the later. One probe of the id index per row, here rather than in a row
           -- trigger, whose call costs more than the probe and stops COPY batching its inserts.
           -- The duplicates' seqs (null when none).
           array_agg(n.seq) filter (where exists (select from recsql.events e
                                                  where e.event_id = n.event_id
                                                    and (e.seq < n.seq or e.xid <> n.xid))) as duplicates,
           coalesce(bool_or(n.ts > now() + v_settings.max_future), false) as bad_ts,
           coalesce(bool_or(t.value_max is not null
                            and (n.value is null or n.value < t.value_min or n.value > t.value_max)), false) as bad_value
    into v_range
    from new_events n
    left join recsql.event_types t on t.name = n.event_type;

    if v_range.bad_type then
        select n.event_type into v_bad
        from new_events n
        where not exists (select 1 from recsql.event_types t where t.name = n.event_type)
        limit 1;
        raise exception 'unknown event type "%"', v_bad.event_type
            using errcode = '23503',
                  constraint = 'events_event_type_fkey',
                  hint = format('Known types: %s. Add a type with INSERT INTO recsql.event_types (name, weight) VALUES (...).',
                                (select string_agg(name, ', ' order by name) from recsql.event_types));
    end if;

    if v_range.bad_ts then
        select n.event_id, n.ts into v_bad
        from new_events n
        where n.ts > now() + v_settings.max_future
        limit 1;
        raise exception 'event "%" has timestamp % which is more than % in the future',
                v_bad.event_id, v_bad.ts, v_settings.max_future
            using errcode = '23514',
                  constraint = 'events_ts_check',
                  hint = 'Send the time the event happened (UTC, ISO 8601), or omit it to use the server time.';
    end if;

    if v_range.bad_value then
        select n.event_id, n.event_type, n.value, t.value_min, t.value_max into v_bad
        from new_events n
        join recsql.event_types t on t.name = n.event_type
        where t.value_max is not null and (n.value is null or n.value < t.value_min or n.value > t.value_max)
        limit 1;
        raise exception 'event "%" of type "%" needs a value between % and %, got %',
                v_bad.event_id, v_bad.event_type, v_bad.value_min, v_bad.value_max, coalesce(v_bad.value::text, 'none')
            using errcode = '23514',
                  constraint = 'events_value_range_check';
    end if;

    if v_range.duplicates is not null then
        -- Removed again before anything reads them; the deferred unique check at commit skips
        -- deleted rows.
        perform set_config('recsql.dropping_duplicates', 'on', true);
        delete from recsql.events e where e.seq = any (v_range.duplicates);
        perform set_config('recsql.dropping_duplicates', 'off', true);
        -- For callers that count what a COPY stored (recsql import): this transaction's total.
        perform set_config('recsql.duplicates_dropped',
                           (coalesce(nullif(current_setting('recsql.duplicates_dropped', true), ''), '0')::bigint
                            + cardinality(v_range.duplicates))::text, true);
        -- The range of the rows kept (no probes: the seqs are known).
        select min(n.seq), max(n.seq), count(*) into v_range.first_seq, v_range.last_seq, v_range.n
        from new_events n
        where n.seq <> all (v_range.duplicates);
    end if;

    if v_range.n > 0 then
        insert into recsql.event_inbox (xid, first_seq, last_seq, n)
        values (v_range.xid, v_range.first_seq, v_range.last_seq, v_range.n);
        -- Each model's shadow state folds the same events (recsql.model_states).
        for v_schema in select schema_name from recsql.model_states loop
            execute format('insert into %I.event_inbox (xid, first_seq, last_seq, n) values ($1, $2, $3, $4)', v_schema)
            using v_range.xid, v_range.first_seq, v_range.last_seq, v_range.n;
        end loop;
    end if;
    return null;
end
$$;

comment on function recsql.events_after_insert() is
    'Rejects unknown types, future timestamps and out-of-range values for the whole statement; drops '
    'retried event ids; queues the statement for folding';

create or replace function recsql.events_guard() returns trigger
language plpgsql as $$
begin
    if tg_op = 'DELETE' and (current_setting('recsql.forgetting', true) = 'on'
                             or current_setting('recsql.dropping_duplicates', true) = 'on') then
        return null;
    end if;
    raise exception '% on recsql.events is not allowed', tg_op
        using errcode = '55000',
              hint = 'Events are immutable. Use recsql.forget_user(user_id) to delete a user''s events.';
end
$$;

comment on function recsql.events_guard() is
    'Blocks UPDATE, DELETE and TRUNCATE of events outside recsql.forget_user() (and the removal of duplicates)';

create or replace function recsql.track(
    user_id text,
    item_id text,
    event_type text,
    ts timestamptz default now(),
    value double precision default null,
    event_id text default null,
    session_id text default null,
    properties jsonb default '{}',
    recommendation_id uuid default null
) returns table (id text, seq bigint, duplicate boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_event_id text := coalesce(track.event_id, recsql.new_event_id());
    v_seq bigint;
begin
    select e.seq into v_seq from recsql.events e where e.event_id = v_event_id;
    if found then
        return query select v_event_id, v_seq, true;
        return;
    end if;
    -- A copy stored by a transaction still open is not visible here: the commit that comes second
    -- fails on events_event_id_key, and its retry finds the first (duplicate = true).
    insert into recsql.events as e (event_id, user_id, item_id, event_type, value, ts, session_id, properties,
                                    recommendation_id)
    values (v_event_id, track.user_id, track.item_id, track.event_type, track.value,
            coalesce(track.ts, now()), track.session_id, coalesce(track.properties, '{}'), track.recommendation_id)
    returning e.seq into v_seq;
    -- An earlier copy in this transaction's open statement cannot exist (one row), so the row stays.
    return query select v_event_id, v_seq, false;
end
$$;

comment on function recsql.track(text, text, text, timestamptz, double precision, text, text, jsonb, uuid) is
    'Records one event idempotently (same event_id twice counts once); returns its id and whether it was a duplicate';

create or replace function recsql._merge_pair_delta(p_sign integer, p_deltas bigint, p_analyze boolean default true)
returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;

    if p_sign < 0 or p_deltas > 10000 then
        -- Removals (a listed partner may drop out) and bulk folds (most lists change anyway): every
        -- touched list is recomputed whole.
        insert into recsql.item_pairs as p (kind, item_a, item_b, n)
        select d.kind, d.item_a, d.item_b, d.n
        from pg_temp.recsql_pair_delta d
        order by d.item_a, d.item_b, d.kind
        on conflict (kind, item_a, item_b) do update set n = p.n + excluded.n;

        -- Distinct by hashing (group by), not by sorting every delta twice (union); then lists
        -- already due whole (most of them, behind a backlog) are skipped before the upsert.
        insert into recsql.neighbor_dirty as x (kind, item_key)
        select u.kind, u.item_key
        from (select u.kind, u.item_key
              from (select d.kind, d.item_a as item_key from pg_temp.recsql_pair_delta d
                    union all
                    select d.kind, d.item_b from pg_temp.recsql_pair_delta d) u
              group by 1, 2) u
        where not exists (select 1 from recsql.neighbor_dirty w
                          where w.kind = u.kind and w.item_key = u.item_key and w.partners is null)
        order by 1, 2
        on conflict (kind, item_key) do update set partners = null where x.partners is not null;
    else
        -- A trickle of new formations: a count that went up changes a list only if that partner is
        -- listed, or now scores at least the list's last entry, or the list is not full. Such lists
        -- are patched with the changed partners (refresh_neighbors), scored with the item's user
        -- count of the list; every other change leaves the list as it is. A list is recomputed whole
        -- instead when the item has none yet, when it was last computed whole over 10 minutes ago,
        -- or when its last entry's partner has gained users enough to move that score by over 10%:
        -- patches keep the other entries' scores, so their drift is bounded by those two rules.
        -- Past 1,000 pending partners an item is recomputed whole.
        with changed as (
            insert into recsql.item_pairs as p (kind, item_a, item_b, n)
            select d.kind, d.item_a, d.item_b, d.n
            from pg_temp.recsql_pair_delta d
            order by d.item_a, d.item_b, d.kind
            on conflict (kind, item_a, item_b) do update set n = p.n + excluded.n
            returning p.kind, p.item_a, p.item_b, p.n
        ), directed as (
            -- Each stored pair changes two lists: item_a's (partner item_b) and item_b's.
            select c.kind, c.item_a, c.item_b, c.n from changed c
            union all
            select c.kind, c.item_b, c.item_a, c.n from changed c
        ), lists as materialized (  -- once per list, not once per changed pair
            select a.kind, a.item_a, l.neighbors, l.users, l.last_score,
                   l.item_key is null or l.users is null or l.refreshed_at < now() - interval '10 minutes'
                   or abs(recsql._pair_score(l.last_n, l.users, sk.n_users, v_settings.similarity) - l.last_score)
                      > 0.1 * l.last_score as whole,
                   coalesce(l.len < v_settings.neighbors_per_item, true) as open
            from (select distinct c.kind, c.item_a from directed c) a
            left join lateral (
                select l.item_key, l.neighbors, l.users, l.refreshed_at, cardinality(l.neighbors) as len,
                       l.together[cardinality(l.together)] as last_n,
                       l.neighbors[cardinality(l.neighbors)] as last_b,
                       l.scores[cardinality(l.scores)]::double precision as last_score
                from recsql.neighbor_lists l
                where l.kind = a.kind and l.item_key = a.item_a
                offset 0  -- a lookup per touched list, not a hash of every list
            ) l on true
            left join recsql.item_stats sk on sk.item_key = l.last_b
        ), touched as (
            -- Lookups in joins, not subqueries in function arguments: those would stop _pair_score
            -- from being inlined, and a call per row costs more than the rest of the fold.
            select c.kind, c.item_a, c.item_b, l.whole
            from directed c
            join lists l on l.kind = c.kind and l.item_a = c.item_a
            -- A partner's users are needed only when it is not listed in a full list.
            left join lateral (
                select sb.n_users as b
                from recsql.item_stats sb
                where sb.item_key = c.item_b
                  and not l.whole and not l.open and c.n >= v_settings.min_support
                  and c.item_b <> all (l.neighbors)
            ) u on true
            where l.whole or l.open or c.item_b = any (l.neighbors)
               or recsql._pair_score(c.n, l.users, u.b, v_settings.similarity) >= (1 - 1e-6) * l.last_score
        )
        insert into recsql.neighbor_dirty as x (kind, item_key, partners)
        select t.kind, t.item_a,
               case when bool_or(t.whole) or count(*) > 1000 then null
                    else array_agg(t.item_b order by t.item_b) end
        from touched t
        group by t.kind, t.item_a
        order by 1, 2
        on conflict (kind, item_key) do update
        set partners = case
            when x.partners is null or excluded.partners is null
                 or cardinality(x.partners) + cardinality(excluded.partners) > 1000
                then null
            else array(select distinct u.b from unnest(x.partners || excluded.partners) u(b) order by 1)
        end;
    end if;

    if p_sign < 0 then
        delete from recsql.item_pairs p
        using pg_temp.recsql_pair_delta d
        where p.kind = d.kind and p.item_a = d.item_a and p.item_b = d.item_b and p.n <= 0;
    end if;

    -- A bulk merge changes item_pairs faster than autovacuum re-samples it; fresh statistics keep
    -- the next merges and refreshes on good plans. Only once it changed by a fifth since its last
    -- analyze: re-sampling millions of pairs every chunk is not free.
    if p_analyze and p_deltas > 100000 and (select n_mod_since_analyze > 0.2 * greatest(n_live_tup, 1000)
                              from pg_stat_user_tables where relid = 'recsql.item_pairs'::regclass) then
        analyze recsql.item_pairs;
    end if;
end
$$;

comment on function recsql._merge_pair_delta(integer, bigint, boolean) is
    'Adds the pair count deltas of pg_temp.recsql_pair_delta to item_pairs and marks the lists they change';

create or replace function recsql._drain_pair_queue(p_part integer default null) returns bigint
language plpgsql as $$
declare
    v_events bigint;
    v_deltas bigint;
begin
    if not exists (select 1 from recsql.pair_queue q where p_part is null or q.part = p_part) then
        return 0;
    end if;
    perform recsql._batch_reset();
    -- Folds that queue meanwhile commit rows this snapshot does not see: the next drain takes them.
    -- Both halves of a fold count its events: all of them, once, is the larger of the two sums.
    -- A queue row holds each pair once (a fold's half, summed), and the halves share no pair (by the
    -- parity of item_a): with one row per half taken there is nothing to sum, which saves a third
    -- of the drain. Rows of several folds are summed. (The test is a one-time filter: only one of
    -- the two arms runs.)
    with taken as materialized (
        delete from recsql.pair_queue q
        where p_part is null or q.part = p_part
        returning q.events, q.part, q.kinds, q.items_a, q.items_b, q.n
    ), single as materialized (
        select count(*) = count(distinct t.part) as one from taken t
    ), deltas as (
        insert into pg_temp.recsql_pair_delta (kind, item_a, item_b, n)
        select u.kind, u.a, u.b, u.n
        from taken t
        cross join lateral unnest(t.kinds, t.items_a, t.items_b, t.n) as u(kind, a, b, n)
        where (select s.one from single s)
        union all
        select u.kind, u.a, u.b, sum(u.n)
        from taken t
        cross join lateral unnest(t.kinds, t.items_a, t.items_b, t.n) as u(kind, a, b, n)
        where not (select s.one from single s)
        group by 1, 2, 3
        returning 1
    )
    select (select coalesce(max(e.n), 0) from (select sum(t.events) as n from taken t group by t.part) e),
           (select count(*) from deltas)
    into v_events, v_deltas;
    perform recsql._merge_pair_delta(1, v_deltas, p_analyze => coalesce(p_part, 0) = 0);
    return v_events;
end
$$;

comment on function recsql._drain_pair_queue(integer) is
    'Adds every queued pair delta (or one half''s) to item_pairs (caller holds the lock); returns their events';

drop trigger events_before_insert on recsql.events;

create trigger events_before_insert before insert on recsql.events
    for each row
    when (new.event_id is null or new.xid <> pg_current_xact_id() or new.arrived_at <> now())
    execute function recsql.events_before_insert();

-- Live model states: their copies of the changed functions.
do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        perform recsql._copy_state_functions(v_schema);
    end loop;
end
$$;
