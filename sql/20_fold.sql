-- Folding: the one place where events become derived state. A single folder at a time (advisory
-- lock) applies committed events in replay order (xid, seq); every derived value is an exact sum of
-- per-event or per-formation contributions, so incremental folding, rebuild() and forget_user()
-- agree to the last digit.

-- Key of the advisory lock that serialises folding, rebuild, forget_user and maintain.
create function recsql._fold_lock_key() returns bigint
language sql immutable parallel safe as $$ select 7274006961524951345::bigint $$;

comment on function recsql._fold_lock_key() is
    'Advisory lock key held by whoever folds events into derived state (one folder at a time)';

-- Key of the second lock: whoever writes item_pairs or marks lists holds it (refresh_neighbors() holds
-- it shared, so that refreshers can run side by side). A fold with defer_pairs takes only the first,
-- recsql.fold_pairs() and refresh_neighbors() only this one, so the worker's two lanes run side by
-- side; everything else takes both, always first then second.
create function recsql._pairs_lock_key() returns bigint
language sql immutable parallel safe as $$ select recsql._fold_lock_key() # 1 $$;

comment on function recsql._pairs_lock_key() is
    'Advisory lock key held by whoever writes item pairs and neighbour lists';

-- Keys of the locks on the four parts of the queued pairs (pair_queue.part): recsql.fold_pairs(part)
-- holds the pairs lock shared and its part's lock exclusively, so that the parts are added side by
-- side; refresh_neighbors() holds all five shared. Taken in the order pairs, part 0, 1, 2, 3.
-- (Written from _fold_lock_key(): a model state's copy of it exists before its other copies.)
create function recsql._pair_part_lock_key(p_part integer) returns bigint
language sql immutable parallel safe as $$ select recsql._fold_lock_key() # (8 + p_part) $$;

comment on function recsql._pair_part_lock_key(integer) is
    'Advisory lock key held by whoever adds one part of the queued pairs (0 to 3)';

-- Key of the lock a transaction holds (shared) while it has promised to insert no events: the
-- worker's list lane adding pairs and refreshing lists for seconds. The replay horizon does not
-- wait for such transactions, so folding goes on meanwhile.
create function recsql._no_events_lock_key() returns bigint
language sql immutable parallel safe as $$ select recsql._fold_lock_key() # 4 $$;

comment on function recsql._no_events_lock_key() is
    'Advisory lock key held (shared) by transactions that promised to insert no events';

-- Promises, for the rest of this transaction, that it inserts no events, if it has not written
-- anything yet (a transaction that has may have inserted events: it keeps holding the horizon
-- back). The events trigger refuses the events of a transaction that promised. Returns whether
-- the promise was made.
create function recsql._promise_no_events() returns boolean
language plpgsql as $$
begin
    if current_setting('recsql.no_events', true) = 'on' then
        return true;
    end if;
    if pg_current_xact_id_if_assigned() is not null then
        return false;
    end if;
    perform set_config('recsql.no_events', 'on', true);
    perform pg_advisory_xact_lock_shared(recsql._no_events_lock_key());
    return true;
end
$$;

comment on function recsql._promise_no_events() is
    'Marks a transaction that has written nothing yet as one that inserts no events, so folding need not wait for it';

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
                   where p.transaction = xid(x.id) and p.database <> current_database())
           -- Nor transactions here that promised to insert no events (recsql._promise_no_events):
           -- the lock is taken before their first write, so they held it when they got the xid.
           and not exists (
                   select 1
                   from pg_locks l
                   join pg_stat_activity a on a.pid = l.pid
                   where l.locktype = 'advisory' and l.granted and l.objsubid = 1
                     and l.database = (select d.oid from pg_database d where d.datname = current_database())
                     and l.classid = (recsql._no_events_lock_key() >> 32)::oid
                     and l.objid = (recsql._no_events_lock_key() & 4294967295)::oid
                     and a.backend_xid = xid(x.id))))
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

-- Small batches (a few events, a few lists) read the big tables by key: their statements are
-- planned again just after the scratch tables are truncated, when the planner assumes ten pages of
-- rows in each, and would hash every item for a handful of rows. Transaction-local settings; returns
-- the previous ones for recsql._restore_joins.
create function recsql._lookup_joins() returns text[]
language plpgsql as $$
declare
    v_old text[] := array[current_setting('enable_hashjoin'), current_setting('enable_mergejoin')];
begin
    perform set_config('enable_hashjoin', 'off', true);
    perform set_config('enable_mergejoin', 'off', true);
    return v_old;
end
$$;

comment on function recsql._lookup_joins() is
    'Turns hash and merge joins off for the rest of the transaction (small batches); returns the old settings';

create function recsql._restore_joins(p_old text[]) returns void
language plpgsql as $$
begin
    if p_old is not null then
        perform set_config('enable_hashjoin', p_old[1], true);
        perform set_config('enable_mergejoin', p_old[2], true);
    end if;
end
$$;

comment on function recsql._restore_joins(text[]) is 'Puts back the join settings recsql._lookup_joins() changed';

-- Per-session scratch tables: the events being folded, their users' windows before them, pair
-- deltas and new item users. Created once per session. Every transaction finds them empty (on commit
-- delete rows), so they are truncated only when this transaction used them already (maintain() and
-- forget_user() fold first): a truncate costs about half a millisecond per table, most of a small
-- fold's fixed cost.
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
            seq bigint not null
        ) on commit delete rows;
        -- Analyzed every fold (see _batch_resolve_items) for row counts and distinct users: a sample
        -- of 3,000 rows tells the planner that, at a seventh of the default sample's cost.
        alter table recsql_batch
            alter user_id set statistics 10, alter item_id set statistics 10, alter item_key set statistics 10,
            alter event_type set statistics 10, alter value set statistics 10, alter ts set statistics 10,
            alter xid set statistics 10, alter seq set statistics 10;
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
    elsif current_setting('recsql.batch_used', true) = 'on' then
        truncate pg_temp.recsql_batch, pg_temp.recsql_pair_delta, pg_temp.recsql_new_users;
    end if;
    -- Apart: a session that folded before this table existed has the others already.
    if to_regclass('pg_temp.recsql_windows') is null then
        create temp table recsql_windows (
            user_id text not null,
            items integer[] not null,
            conversions integer[] not null
        ) on commit delete rows;
        alter table recsql_windows
            alter user_id set statistics 10, alter items set statistics 10, alter conversions set statistics 10;
    elsif current_setting('recsql.batch_used', true) = 'on' then
        truncate pg_temp.recsql_windows;
    end if;
    perform set_config('recsql.batch_used', 'on', true);
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

-- What the window settings are: recsql.user_windows holds windows of these lengths over events of
-- these kinds, and is emptied when they change.
create function recsql._windows_key() returns text
language sql stable as $$
    select format('%s/%s/%s/%s', s.cooc_window, s.purchase_window,
                  (select string_agg(t.name, ',' order by t.name) from recsql.event_types t where t.forms_pairs),
                  (select string_agg(t.name, ',' order by t.name) from recsql.event_types t where t.is_conversion))
    from recsql.settings s
$$;

comment on function recsql._windows_key() is
    'The window lengths and pair-forming and conversion types that recsql.user_windows is valid for';

-- Fills pg_temp.recsql_windows with each batch user's windows before their first batch event: their
-- row of recsql.user_windows, or for a user without one (new, or the windows were emptied), their
-- last events from the log.
create function recsql._batch_add_context() returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_key text := recsql._windows_key();
    v_joins text[];
begin
    select * into v_settings from recsql.settings;
    -- Windows kept under other settings would pair events wrongly: they are read from the log again.
    if (select f.windows_key from recsql.fold_state f) is distinct from v_key then
        truncate recsql.user_windows;
        update recsql.fold_state set windows_key = v_key;
    end if;
    if not exists (select 1 from pg_temp.recsql_batch offset 1000) then
        -- A trickle: each user's windows by key, not a hash of every user's.
        v_joins := recsql._lookup_joins();
    end if;

    insert into pg_temp.recsql_windows (user_id, items, conversions)
    select w.user_id, w.items, w.conversions
    from recsql.user_windows w
    where w.user_id in (select b.user_id from pg_temp.recsql_batch b);

    insert into pg_temp.recsql_windows (user_id, items, conversions)
    select f.user_id,
           coalesce((
               select array_agg(c.item_key order by c.xid, c.seq)
               from (select i.item_key, e.xid, e.seq
                     from recsql.events e
                     join recsql.event_types t on t.name = e.event_type
                     join recsql.items i on i.item_id = e.item_id
                     where e.user_id = f.user_id and (e.xid, e.seq) < (f.xid, f.seq) and t.forms_pairs
                     order by e.xid desc, e.seq desc
                     limit v_settings.cooc_window) c), '{}'),
           coalesce((
               select array_agg(c.item_key order by c.xid, c.seq)
               from (select i.item_key, e.xid, e.seq
                     from recsql.events e
                     join recsql.event_types t on t.name = e.event_type
                     join recsql.items i on i.item_id = e.item_id
                     where e.user_id = f.user_id and (e.xid, e.seq) < (f.xid, f.seq) and t.is_conversion
                     order by e.xid desc, e.seq desc
                     limit v_settings.purchase_window) c), '{}')
    from (
        -- Grouped by user id bytes (collate "C"): the same groups as any deterministic collation, at
        -- the cost of memcmp instead of strcoll.
        select distinct on (b.user_id collate "C") b.user_id, b.xid, b.seq
        from pg_temp.recsql_batch b
        where not exists (select 1 from pg_temp.recsql_windows w where w.user_id = b.user_id)
        order by b.user_id collate "C", b.xid, b.seq
    ) f;
    if v_joins is null then
        -- Row counts for the pair step's join, which would otherwise sort both sides to merge them.
        analyze pg_temp.recsql_windows;
    end if;
    perform recsql._restore_joins(v_joins);
end
$$;

comment on function recsql._batch_add_context() is
    'Loads each batch user''s windows before the batch (recsql.user_windows, else the log) so pairs formed '
    'across fold boundaries are counted';

-- Stores each batch user's windows after the batch: their windows before it (none in a rebuild)
-- followed by their batch events, the last cooc_window and purchase_window of them.
create function recsql._save_windows() returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;
    insert into recsql.user_windows as u (user_id, items, conversions)
    select b.user_id,
           coalesce((w.items || b.items)[greatest(coalesce(cardinality(w.items), 0)
                                                  + coalesce(cardinality(b.items), 0)
                                                  - v_settings.cooc_window + 1, 1):], '{}'),
           coalesce((w.conversions || b.conversions)[greatest(coalesce(cardinality(w.conversions), 0)
                                                              + coalesce(cardinality(b.conversions), 0)
                                                              - v_settings.purchase_window + 1, 1):], '{}')
    from (
        select b.user_id collate "C" as user_id,
               array_agg(b.item_key order by b.xid, b.seq) filter (where t.forms_pairs) as items,
               array_agg(b.item_key order by b.xid, b.seq) filter (where t.is_conversion) as conversions
        from pg_temp.recsql_batch b
        join recsql.event_types t on t.name = b.event_type
        group by 1
    ) b
    left join pg_temp.recsql_windows w on w.user_id = b.user_id
    order by 1
    on conflict (user_id) do update set items = excluded.items, conversions = excluded.conversions;
end
$$;

comment on function recsql._save_windows() is
    'Stores each batch user''s windows after the batch in recsql.user_windows';

-- The pair formations of the batch's events whose ts lies in [p_from, p_to), as count
-- deltas (times p_sign: 1 adds, -1 removes) in pg_temp.recsql_pair_delta; returns how many rows.
-- kind v: pair-forming events, window cooc_window; kind p: conversions, window purchase_window. An event forms a pair with each distinct item among the
-- user's previous N events of that kind, unless its own item is among them (no inflation by repeats).
create function recsql._pair_delta(p_sign integer, p_from timestamptz, p_to timestamptz) returns bigint
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_deltas bigint;
begin
    select * into v_settings from recsql.settings;

    -- Empty after _batch_reset(), which every caller runs first: a delete of nothing costs less
    -- than a truncate, and keeps a caller that did not from adding stale deltas.
    delete from pg_temp.recsql_pair_delta;

    insert into pg_temp.recsql_pair_delta (kind, item_a, item_b, n)
    -- An event's window: the user's window before the batch (pg_temp.recsql_windows; none when the
    -- batch holds the user's whole history), then their earlier batch events; the last N of them.
    -- Only a user's first N events of a kind need the window before the batch: joined after the
    -- window function, so that its sort does not carry the arrays. Partitioned by user id bytes
    -- (collate "C"): the same partitions, sorted with memcmp.
    with windowed as (
        select 'v'::"char" as kind, b.user_id, b.item_key, b.ts, v_settings.cooc_window as size,
               array_agg(b.item_key) over w as prev, row_number() over w as place
        from pg_temp.recsql_batch b
        join recsql.event_types t on t.name = b.event_type
        where t.forms_pairs
        window w as (partition by b.user_id collate "C" order by b.xid, b.seq
                     rows between v_settings.cooc_window preceding and 1 preceding)
        union all
        select 'p'::"char", b.user_id, b.item_key, b.ts, v_settings.purchase_window,
               array_agg(b.item_key) over w, row_number() over w
        from pg_temp.recsql_batch b
        join recsql.event_types t on t.name = b.event_type
        where t.is_conversion
        window w as (partition by b.user_id collate "C" order by b.xid, b.seq
                     rows between v_settings.purchase_window preceding and 1 preceding)
    ), windows as (
        select w.kind, w.item_key,
               case when u.user_id is null then w.prev
                    else (c.before || w.prev)[greatest(cardinality(c.before) + coalesce(cardinality(w.prev), 0)
                                                       - w.size + 1, 1):] end as prev
        from windowed w
        left join pg_temp.recsql_windows u on u.user_id = w.user_id and w.place <= w.size
        cross join lateral (select case w.kind when 'v' then u.items else u.conversions end) c(before)
        where w.ts >= p_from and w.ts < p_to
    ), formed as (
        -- An item seen twice in the window pairs once with the event: only its last place counts.
        -- (A check of the rest of a 10-item array, not a distinct over every formation.)
        select w.kind, w.item_key as a, x.b
        from windows w
        cross join lateral unnest(w.prev) with ordinality as x(b, i)
        where w.item_key <> all (w.prev) and x.b <> all (w.prev[x.i + 1:])
    )
    -- A pair is stored once, under (smaller key, larger key): both items' lists read it.
    select kind, least(a, b), greatest(a, b), p_sign * count(*)::integer
    from formed
    group by 1, 2, 3;

    get diagnostics v_deltas = row_count;
    return v_deltas;
end
$$;

comment on function recsql._pair_delta(integer, timestamptz, timestamptz) is
    'Computes the batch events'' pair count deltas into pg_temp.recsql_pair_delta; returns the row count';

-- item_pairs' index by partner (item_b): what a neighbour list recomputed on its own reads the pairs
-- it is the second item of by. Null while a bulk of pairs is being added without it (see
-- _drop_pair_b_index). Found by its leading column, not its name: a model state's copy of the table
-- may name it otherwise.
create function recsql._pair_b_index() returns regclass
language sql stable as $$
    select i.indexrelid::regclass
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
    where i.indrelid = 'recsql.item_pairs'::regclass and not i.indisunique and a.attname = 'item_b'
    limit 1
$$;

comment on function recsql._pair_b_index() is
    'The index of item_pairs by item_b, or null while a bulk of pairs is added without it';

-- Bulk loads: a merge of many pair deltas drops the index by item_b for the rest of the bulk, and
-- the first neighbour-list refresh after it (nothing queued, no backlog of events) builds it again
-- (_restore_pair_b_index). Inserting new pairs into that index one by one costs several times
-- what sorting them into a fresh one does (a merge of 900,000 events' pairs: 0.6 s more with the
-- index; building it on 774,000 pairs: 0.25 s); streaming 1M events (bench/ingest.py), adding the
-- pairs took a third less time without it. Only for merges of at least recsql.pair_index_drop_rows deltas (a
-- setting, default 50,000) and at least a quarter of the pairs already stored, so that the pairs
-- of the bulk outnumber what the rebuild sorts; never for removals. Nothing waits for it: when
-- another transaction uses item_pairs, or this role does not own it, the index stays. Returns
-- whether it dropped the index.
create function recsql._drop_pair_b_index(p_deltas bigint) returns boolean
language plpgsql as $$
declare
    v_index regclass := recsql._pair_b_index();
    v_setting text := nullif(current_setting('recsql.pair_index_drop_rows', true), '');
begin
    if v_setting !~ '^[0-9]{1,18}$' then
        raise exception 'recsql.pair_index_drop_rows must be a number of pair deltas, got "%"', v_setting
            using errcode = '22023',
                  hint = 'Reset it for the default (50000), or set a whole number (a very high one keeps the index always).';
    end if;
    if v_index is null
       or p_deltas < coalesce(v_setting::bigint, 50000)
       or p_deltas * 4 < (select c.reltuples from pg_catalog.pg_class c where c.oid = 'recsql.item_pairs'::regclass) then
        return false;
    end if;
    begin
        lock table recsql.item_pairs in access exclusive mode nowait;
        execute format('drop index %s', v_index);
    exception when lock_not_available or insufficient_privilege then
        return false;  -- in use, or this role does not own the table: added with the index
    end;
    return true;
end
$$;

comment on function recsql._drop_pair_b_index(bigint) is
    'Drops item_pairs'' index by item_b before a bulk merge of p_deltas pair deltas (see the comment above it)';

-- Builds item_pairs' index by item_b again after a bulk (see _drop_pair_b_index), unless it exists,
-- pairs are still queued, a backlog of events waits for folding, or another transaction is building
-- it (or writing pairs) now, or this role may not (it does not own item_pairs). Returns whether it
-- built it.
create function recsql._restore_pair_b_index() returns boolean
language plpgsql as $$
begin
    if recsql._pair_b_index() is not null
       or exists (select 1 from recsql.pair_queue)
       or (select coalesce(sum(q.n), 0) from recsql.event_inbox q) >= 10000 then
        return false;
    end if;
    begin
        -- Conflicts with itself and with writers of pairs, not with readers.
        lock table recsql.item_pairs in share row exclusive mode nowait;
        if recsql._pair_b_index() is not null then  -- built by another transaction meanwhile
            return false;
        end if;
        create index item_pairs_b_idx on recsql.item_pairs (item_b, kind);
    exception when lock_not_available or insufficient_privilege then
        return false;  -- being built, or this role does not own the table: a later refresh builds it
    end;
    return true;
end
$$;

comment on function recsql._restore_pair_b_index() is
    'Builds item_pairs'' index by item_b again once a bulk of pairs is added; returns whether it did';

-- Adds the count deltas in pg_temp.recsql_pair_delta (p_deltas rows; p_sign -1: removals) to item_pairs
-- and marks the neighbour lists they change. The caller holds the pairs lock (or, adding one part of
-- the queued pairs, that part's lock; then p_analyze is false for parts 1-3, so that the parts'
-- sessions never sample the table at once).
create function recsql._merge_pair_delta(p_sign integer, p_deltas bigint, p_analyze boolean default true)
returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;

    if p_sign < 0 or p_deltas > 10000 then
        -- Removals (a listed partner may drop out) and bulk folds (most lists change anyway): every
        -- touched list is recomputed whole.
        if p_sign > 0 then
            perform recsql._drop_pair_b_index(p_deltas);
        end if;
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

-- Adds (p_sign = 1) or removes (p_sign = -1) the pair formations of the batch's events
-- whose ts lies in [p_from, p_to), at once. The caller holds both locks.
create function recsql._apply_pairs(p_sign integer, p_from timestamptz, p_to timestamptz) returns void
language plpgsql as $$
begin
    perform recsql._merge_pair_delta(p_sign, recsql._pair_delta(p_sign, p_from, p_to));
end
$$;

comment on function recsql._apply_pairs(integer, timestamptz, timestamptz) is
    'Counts (or uncounts) the co-occurrence and bought-together pairs formed by the batch events';

-- Applies every committed queued pair delta (folds run with defer_pairs), or those of one part
-- (p_part); the caller holds the pairs lock, or that part's. Returns the events whose pairs it
-- applied (each part of a fold counts all its events).
create function recsql._drain_pair_queue(p_part integer default null) returns bigint
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
    -- Every part of a fold counts its events: all of them, once, is the largest of the parts' sums.
    -- A queue row holds each pair once (a fold's part, summed), and the parts share no pair (by
    -- item_a modulo 4): with one row per part taken there is nothing to sum, which saves a third
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
    'Adds every queued pair delta (or one part''s) to item_pairs (caller holds the lock); returns their events';

-- The worker's lanes: add the pairs of folds run with defer_pairs, all of them, or one part (0 to
-- 3), while other sessions may add the other parts. Without wait it returns
-- 0 at once when a lock it needs is taken. Returns their events.
create function recsql.fold_pairs(part integer default null, wait boolean default true) returns bigint
language plpgsql as $$
declare
    v_n bigint;
begin
    if fold_pairs.part is not null and fold_pairs.part not between 0 and 3 then
        raise exception 'part must be 0, 1, 2, 3 or null (all parts), got %', fold_pairs.part using errcode = '22023';
    end if;
    -- Nothing queued: return without the lock, which would wait for refreshers to finish.
    if not exists (select 1 from recsql.pair_queue q where fold_pairs.part is null or q.part = fold_pairs.part) then
        return 0;
    end if;
    if fold_pairs.part is null then
        if wait then
            perform pg_advisory_xact_lock(recsql._pairs_lock_key());
        elsif not pg_try_advisory_xact_lock(recsql._pairs_lock_key()) then
            return 0;
        end if;
    elsif wait then
        perform pg_advisory_xact_lock_shared(recsql._pairs_lock_key());
        perform pg_advisory_xact_lock(recsql._pair_part_lock_key(fold_pairs.part));
    elsif not (pg_try_advisory_xact_lock_shared(recsql._pairs_lock_key())
               and pg_try_advisory_xact_lock(recsql._pair_part_lock_key(fold_pairs.part))) then
        return 0;
    end if;
    v_n := recsql._drain_pair_queue(fold_pairs.part);
    if v_n > 0 then
        perform pg_notify('recsql_folded', v_n::text);  -- main only
    end if;
    return v_n;
end
$$;

comment on function recsql.fold_pairs(integer, boolean) is
    'Adds the pair counts queued by fold(defer_pairs => true) (all, or one part: 0 to 3) to item_pairs and '
    'marks changed lists; returns their events';


-- Adds the batch's events to the per user/item/type statistics.
create function recsql._apply_stats() returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;
    if v_settings.decay_epoch is null then
        update recsql.settings
        set decay_epoch = (select date_trunc('day', min(ts)) from pg_temp.recsql_batch)
        returning * into v_settings;
    end if;

    -- Items gaining a user: any (user, item) with no earlier event. User ids as bytes (collate
    -- "C", as user_item_events has them): the same groups, compared with memcmp.
    delete from pg_temp.recsql_new_users;  -- empty after _batch_reset(), as above
    insert into pg_temp.recsql_new_users (item_key, n)
    select u.item_key, count(*)
    from (select distinct b.user_id collate "C" as user_id, b.item_key from pg_temp.recsql_batch b) u
    where not exists (
        select 1 from recsql.user_item_events x where x.user_id = u.user_id and x.item_key = u.item_key)
    group by u.item_key;

    insert into recsql.user_item_events as x (user_id, item_key, event_type, n, value_sum, first_ts, last_ts)
    select b.user_id collate "C", b.item_key, b.event_type, count(*), coalesce(sum(b.value::numeric), 0),
           min(b.ts), max(b.ts)
    from pg_temp.recsql_batch b
    group by 1, 2, 3
    order by 1, 2, 3  -- the primary key's order
    on conflict (user_id, item_key, event_type) do update
    set n = x.n + excluded.n,
        value_sum = x.value_sum + excluded.value_sum,
        first_ts = least(x.first_ts, excluded.first_ts),
        last_ts = greatest(x.last_ts, excluded.last_ts);

    insert into recsql.item_event_counts as c (item_key, event_type, n, value_sum)
    select b.item_key, b.event_type, count(*), coalesce(sum(b.value::numeric), 0)
    from pg_temp.recsql_batch b
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

-- Folds every committed event that no running transaction can precede; returns how many. With
-- defer_pairs their pair counts are queued for recsql.fold_pairs() instead of added here, so that
-- the worker adds them (and refreshes lists) in a second session, on another core; without, any
-- queued pairs are added too, so derived state is complete when it returns. With max_events, only
-- about that many of the oldest such events (a prefix of the replay order), so that a backlog is
-- folded in slices whose pairs the other session adds while the next slice folds.
create function recsql.fold(defer_pairs boolean default false, max_events bigint default null) returns bigint
language plpgsql as $$
declare
    v_horizon xid8;
    v_folded_below xid8;
    v_n bigint;
    v_cooc_horizon timestamptz;
    v_deltas bigint;
    v_paired bigint := 0;
    -- The inbox row where a slice of max_events ends (null: no cut).
    v_cut_row tid;
    v_cut_xid xid8;
    v_cut_first bigint;
    v_cut_last bigint;
    v_cut_room bigint;
    v_joins text[];
begin
    if max_events is not null and max_events < 1 then
        raise exception 'max_events must be at least 1, got %', max_events using errcode = '22023';
    end if;
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    if not defer_pairs then
        perform pg_advisory_xact_lock(recsql._pairs_lock_key());
    end if;
    -- Every transaction of this database older than the horizon has ended, so no event can still
    -- appear before the ones folded here in (xid, seq) order.
    v_horizon := recsql._fold_horizon();
    v_folded_below := v_horizon;
    v_n := 0;
    -- An idle poll stops here: no scratch-table truncation (catalog churn) every 100 ms.
    if exists (select 1 from recsql.event_inbox q where q.xid < v_horizon) then
        perform recsql._batch_reset();
        if max_events is not null then
            -- The inbox row where the slice ends: rows before it are taken whole, its first seqs
            -- (up to the events still allowed) are taken and the rest stays queued.
            select q.row_id, q.xid, q.first_seq, q.last_seq, max_events - (q.upto - q.n)
            into v_cut_row, v_cut_xid, v_cut_first, v_cut_last, v_cut_room
            from (select q.ctid as row_id, q.xid, q.first_seq, q.last_seq, q.n,
                         sum(q.n) over (order by q.xid, q.first_seq) as upto
                  from recsql.event_inbox q
                  where q.xid < v_horizon) q
            where q.upto > max_events
            order by q.xid, q.first_seq
            limit 1;
            if found then
                -- Not all of the cut row's transaction is folded now: the stored horizon must not
                -- claim it.
                v_folded_below := v_cut_xid;
            end if;
        end if;
        if (select coalesce(sum(q.n), 0) from recsql.event_inbox q where q.xid < v_horizon) <= 1000 then
            -- A trickle (steady traffic): each event's item by its key, not a hash of every item,
            -- which took 10 ms of a 12 ms fold of two events.
            v_joins := recsql._lookup_joins();
        end if;
        with taken as (
            delete from recsql.event_inbox q
            where q.xid < v_horizon
              and (v_cut_row is null or (q.xid, q.first_seq) < (v_cut_xid, v_cut_first))
            returning q.xid, q.first_seq, q.last_seq
        ), sliced as (
            select t.xid, t.first_seq, t.last_seq from taken t
            union all
            -- A seq range holds at most that many of the row's events (seqs of other
            -- transactions and skipped duplicates may sit in between).
            select v_cut_xid, v_cut_first, least(v_cut_last, v_cut_first + v_cut_room - 1)
            where v_cut_room > 0
        )
        insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
        select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
        from sliced q
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
        perform recsql._restore_joins(v_joins);
        if v_cut_room > 0 then
            -- What is left of the cut row: the seqs after the slice, and the events among them.
            update recsql.event_inbox q
            set first_seq = v_cut_first + v_cut_room,
                n = q.n - (select count(*) from pg_temp.recsql_batch b
                           where b.xid = v_cut_xid and b.seq between v_cut_first and v_cut_first + v_cut_room - 1)
            where q.ctid = v_cut_row;
            delete from recsql.event_inbox q
            where q.xid = v_cut_xid and q.first_seq = v_cut_first + v_cut_room
              and (q.first_seq > q.last_seq or q.n <= 0);
        end if;
    end if;
    if v_n > 0 then
        perform recsql._batch_resolve_items();
        perform recsql._batch_add_context();
        perform recsql._apply_stats();
        select coalesce(cooc_horizon, '-infinity') into v_cooc_horizon from recsql.fold_state;
        v_deltas := recsql._pair_delta(1, v_cooc_horizon, 'infinity');
        perform recsql._save_windows();
        if not defer_pairs then
            perform recsql._merge_pair_delta(1, v_deltas);
            v_paired := v_n;
        elsif v_deltas > 0 then
            -- Four parts by item_a modulo 4, each a row even when empty: fold_status counts the
            -- events of each part, and they are pending until all parts are added. Four, not two:
            -- the two lanes take parts as they come free, so at the end of a backlog neither waits
            -- long for the other's last part.
            insert into recsql.pair_queue (events, part, kinds, items_a, items_b, n)
            select v_n, h.part, coalesce(d.kinds, '{}'), coalesce(d.items_a, '{}'), coalesce(d.items_b, '{}'),
                   coalesce(d.n, '{}')
            from (values (0::smallint), (1::smallint), (2::smallint), (3::smallint)) h(part)
            left join (select (x.item_a % 4)::smallint as part, array_agg(x.kind) as kinds,
                              array_agg(x.item_a) as items_a, array_agg(x.item_b) as items_b, array_agg(x.n) as n
                       from pg_temp.recsql_pair_delta x
                       group by 1) d on d.part = h.part;
        end if;
    end if;
    if not defer_pairs then
        v_paired := v_paired + recsql._drain_pair_queue();
    end if;

    if v_n > 50000 then
        -- A bulk fold changes the derived tables faster than autovacuum re-samples them; fresh
        -- statistics keep the next folds on good plans. Only tables that changed by a fifth since
        -- their last analyze (item_pairs: see _merge_pair_delta); item_stats, whose rows every bulk
        -- fold updates (one per item), once its rows grew by a fifth: the plans need its size.
        if (select c.reltuples < 0 or s.n_live_tup > 1.2 * c.reltuples
            from pg_class c join pg_stat_user_tables s on s.relid = c.oid
            where c.oid = 'recsql.item_stats'::regclass) then
            analyze recsql.item_stats;
        end if;
        if (select n_mod_since_analyze > 0.2 * greatest(n_live_tup, 1000)
            from pg_stat_user_tables where relid = 'recsql.user_item_events'::regclass) then
            analyze recsql.user_item_events;
        end if;
    end if;

    -- An idle poll writes nothing, except a heartbeat every few seconds for fold_status.
    update recsql.fold_state
    set horizon = greatest(horizon, v_folded_below),
        folded_events = folded_events + v_n,
        last_fold_at = now()
    where v_n > 0 or last_fold_at is null or last_fold_at < now() - interval '5 seconds';
    if v_paired > 0 then
        -- Wakes the embedding worker once pairs are in (here or in fold_pairs). Sent once per fold
        -- rather than by the events trigger: NOTIFY serialises committing transactions, which every
        -- writer would then pay for.
        perform pg_notify('recsql_folded', v_paired::text);  -- main only
    end if;
    return v_n;
end
$$;

comment on function recsql.fold(boolean, bigint) is
    'Folds committed events (at most about max_events, oldest first) into the derived tables (not the '
    'neighbour lists; with defer_pairs, not the item pairs either: recsql.fold_pairs() adds those); returns the count';

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

-- Brings the neighbour lists of items whose pairs changed up to date, oldest change first: patched
-- with the partners whose counts went up where that is all that changed, recomputed whole otherwise.
-- Without wait it returns 0 at once while pairs are queued or being added: a helper (the worker's
-- fold lane when idle) would only hold up their adding and refresh lists they change again.
create function recsql.refresh_neighbors(max_items integer default null, wait boolean default true)
returns integer
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_n integer;
    v_nestloop text;
    v_work_mem text;
    v_joins text[];
    v_len integer;
    v_prune boolean;
    v_full integer;
    v_scored text;
    v_indexed boolean;
begin
    -- Shared: refreshers run side by side on disjoint lists (picked with skip locked below), while
    -- whoever changes pairs or marks lists holds the lock exclusively (or one part's lock).
    if wait then
        perform pg_advisory_xact_lock_shared(recsql._pairs_lock_key());
        perform pg_advisory_xact_lock_shared(recsql._pair_part_lock_key(p)) from generate_series(0, 3) p;
    elsif exists (select 1 from recsql.pair_queue)
          or not (pg_try_advisory_xact_lock_shared(recsql._pairs_lock_key())
                  and pg_try_advisory_xact_lock_shared(recsql._pair_part_lock_key(0))
                  and pg_try_advisory_xact_lock_shared(recsql._pair_part_lock_key(1))
                  and pg_try_advisory_xact_lock_shared(recsql._pair_part_lock_key(2))
                  and pg_try_advisory_xact_lock_shared(recsql._pair_part_lock_key(3))) then
        return 0;
    end if;
    if not exists (select 1 from recsql.neighbor_dirty) then
        return 0;  -- idle: leave the scratch tables alone
    end if;
    -- After a bulk of pairs (lists are always due then): the index by item_b, which lists
    -- recomputed a few at a time read their pairs by, built again where it may be now.
    v_indexed := recsql._pair_b_index() is not null;
    if not v_indexed then
        v_indexed := recsql._restore_pair_b_index();
    end if;
    select * into v_settings from recsql.settings;
    v_len := v_settings.neighbors_per_item;

    if to_regclass('pg_temp.recsql_refresh_picked') is null then
        create temp table recsql_refresh_picked (
            kind "char" not null,
            item_key integer not null,
            users integer not null,
            partners integer[]
        ) on commit delete rows;
    elsif current_setting('recsql.refresh_used', true) = 'on' then
        -- Only when this transaction refreshed already (see _batch_reset).
        truncate pg_temp.recsql_refresh_picked;
    end if;
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
    elsif current_setting('recsql.refresh_used', true) = 'on' then
        truncate pg_temp.recsql_refresh, pg_temp.recsql_refresh_scored;
    end if;
    perform set_config('recsql.refresh_used', 'on', true);

    -- The user count by a lookup per list: a hash of every item's statistics would cost more than
    -- the few lists of a round under steady traffic.
    insert into pg_temp.recsql_refresh_picked (kind, item_key, users, partners)
    select p.kind, p.item_key,
           coalesce((select st.n_users from recsql.item_stats st where st.item_key = p.item_key), 0), p.partners
    from (
        select d.kind, d.item_key, d.partners
        from recsql.neighbor_dirty d
        order by d.marked_at, d.kind, d.item_key
        limit refresh_neighbors.max_items
        for update of d skip locked
    ) p;
    get diagnostics v_n = row_count;
    if v_n <= 1000 and v_indexed then
        -- A round of a few lists (steady traffic: several a second): hashing every item's statistics
        -- and neighbour list took 5-10 ms per statement, most of such a round. (Not without the
        -- index by item_b, still missing after a bulk: each list would scan every pair.)
        v_joins := recsql._lookup_joins();
    end if;

    -- Patches: only some partners' counts went up, so the list is its old entries with those partners
    -- rescored, best first (see _apply_pairs); no scan of the item's pairs. An item whose list is
    -- gone, or would come out empty, is recomputed whole instead.
    with patched as (
        update recsql.neighbor_lists l
        set neighbors = x.neighbors, scores = x.scores, together = x.together
        from (
            select r.kind, r.item_key, top.neighbors, top.scores, top.together
            from pg_temp.recsql_refresh_picked r
            join recsql.neighbor_lists o on o.kind = r.kind and o.item_key = r.item_key
            cross join lateral (
                select array_agg(c.b order by c.s desc, c.b) as neighbors,
                       array_agg(c.s::real order by c.s desc, c.b) as scores,
                       array_agg(c.n order by c.s desc, c.b) as together
                from (
                    select u.b, u.s, u.n
                    from (
                        select e.b, e.s::double precision as s, e.n
                        from unnest(o.neighbors, o.scores, o.together) as e(b, s, n)
                        where e.b <> all (r.partners)
                        union all
                        -- Scored with the item's user count of the list, like its other entries.
                        select x.b,
                               recsql._pair_score(p.n, o.users, sb.n_users, v_settings.similarity)::real::double precision,
                               p.n
                        from unnest(r.partners) as x(b)
                        join recsql.item_pairs p
                          on p.kind = r.kind and p.item_a = least(r.item_key, x.b) and p.item_b = greatest(r.item_key, x.b)
                        join recsql.item_stats sb on sb.item_key = x.b
                        where p.n >= v_settings.min_support
                    ) u
                    order by u.s desc, u.b
                    limit v_len
                ) c
            ) top
            where r.partners is not null
        ) x
        where l.kind = x.kind and l.item_key = x.item_key and x.neighbors is not null
        returning l.kind, l.item_key
    )
    update pg_temp.recsql_refresh_picked r
    set partners = null
    where r.partners is not null
      and not exists (select 1 from patched x where x.kind = r.kind and x.item_key = r.item_key);
    delete from recsql.neighbor_dirty d
    using pg_temp.recsql_refresh_picked r
    where r.partners is not null and d.kind = r.kind and d.item_key = r.item_key;

    -- Whole lists. Pruning: a full list's last score is a floor. cosine <= n / sqrt(users_a) and
    -- count = n, so a pair whose count is below floor * sqrt(users_a) (cosine) or floor (count)
    -- cannot enter. If fewer than a full list of pairs still reach the floor, that item is
    -- recomputed without it. Pruning pays off for the steady trickle of a few items (a hot item's
    -- list rescored from a handful of its pairs); when most lists are due, one plain pass over the
    -- pairs is cheaper.
    v_prune := coalesce(refresh_neighbors.max_items, 2147483647) <= 10000
               or (select count(*) from recsql.neighbor_dirty) <= 10000;
    insert into pg_temp.recsql_refresh (kind, item_key, users, floor_score, min_n)
    select p.kind, p.item_key, p.users, f.floor_score,
           greatest(v_settings.min_support, coalesce(floor(case v_settings.similarity
               when 'cosine' then f.floor_score * sqrt(greatest(p.users, 1)) * (1 - 1e-9)
               when 'count' then f.floor_score * (1 - 1e-9)
           end)::integer, 0))
    from pg_temp.recsql_refresh_picked p
    left join recsql.neighbor_lists l on l.kind = p.kind and l.item_key = p.item_key
    -- The floor: the old last entry scored with today's user counts (its stored score may have
    -- drifted above what any pair reaches now, which would only send the item to the fallback).
    left join recsql.item_stats sk on sk.item_key = l.neighbors[v_len]
    cross join lateral (
        select case when v_prune and cardinality(l.scores) >= v_len
                    then recsql._pair_score(l.together[v_len], p.users, sk.n_users, v_settings.similarity) end
               as floor_score
    ) f
    where p.partners is null;
    get diagnostics v_full = row_count;
    if v_full = 0 then
        perform recsql._restore_joins(v_joins);
        return v_n;
    end if;
    if v_full > 1000 then
        analyze pg_temp.recsql_refresh;
    end if;
    if v_full > 10000 then
        -- Recomputing most lists: hash-join item_stats once instead of a lookup per pair, and sort
        -- in memory. Local to this transaction; put back below.
        v_nestloop := current_setting('enable_nestloop');
        v_work_mem := current_setting('work_mem');
        perform set_config('enable_nestloop', 'off', true);
        perform set_config('work_mem', '256MB', true);
    end if;

    -- An item's pairs (those it is item_a of, and those it is item_b of), scored; %1$s filters them.
    -- One text for the three statements below that read them (run with EXECUTE: the settings are
    -- literals in it, so _pair_score's choice of measure is made once, at planning).
    v_scored := format($q$
        select p.kind, p.item_a, p.item_b, p.n, recsql._pair_score(p.n, r.users, sb.n_users, %2$L) as score
        from pg_temp.recsql_refresh r
        join recsql.item_pairs p on p.kind = r.kind and p.item_a = r.item_key
        join recsql.item_stats sb on sb.item_key = p.item_b
        where %1$s
        union all
        select p.kind, p.item_b, p.item_a, p.n, recsql._pair_score(p.n, r.users, sa.n_users, %2$L)
        from pg_temp.recsql_refresh r
        join recsql.item_pairs p on p.kind = r.kind and p.item_b = r.item_key
        join recsql.item_stats sa on sa.item_key = p.item_a
        where %1$s$q$, '%1$s', v_settings.similarity);

    if v_prune then
        execute format('insert into pg_temp.recsql_refresh_scored (kind, item_a, item_b, n, score) ' || v_scored,
                       'p.n >= r.min_n');

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
            execute format('insert into pg_temp.recsql_refresh_scored (kind, item_a, item_b, n, score) ' || v_scored,
                           format('r.full_scan and p.n >= %s', v_settings.min_support));
        end if;
    end if;

    delete from recsql.neighbor_dirty d
    using pg_temp.recsql_refresh r
    where d.kind = r.kind and d.item_key = r.item_key;

    delete from recsql.neighbor_lists l
    using pg_temp.recsql_refresh r
    where l.kind = r.kind and l.item_key = r.item_key;

    -- Each item's pairs gathered by hashing, then its best v_len sorted apart: many small sorts
    -- instead of one sort of every scored pair (a bulk refresh scores millions). Ranked as stored
    -- (real), so that a patched list orders ties as a recomputed one. Without pruning (no floors)
    -- the pairs are scored in this statement, not stored first: writing and reading back millions
    -- of scored pairs was a fifth of a bulk refresh.
    execute format($q$
        insert into recsql.neighbor_lists (kind, item_key, neighbors, scores, together, users)
        select g.kind, g.item_a, top.neighbors, top.scores, top.together, r.users
        from (
            select s.kind, s.item_a, array_agg(s.item_b) as bs, array_agg(s.score::real) as ss, array_agg(s.n) as ns
            from (%s) s
            group by s.kind, s.item_a
        ) g
        join pg_temp.recsql_refresh r on r.kind = g.kind and r.item_key = g.item_a
        cross join lateral (
            select array_agg(c.b order by c.s desc, c.b) as neighbors,
                   array_agg(c.s order by c.s desc, c.b) as scores,
                   array_agg(c.n order by c.s desc, c.b) as together
            from (
                select u.b, u.s, u.n
                from unnest(g.bs, g.ss, g.ns) as u(b, s, n)
                order by u.s desc, u.b
                limit %s
            ) c
        ) top$q$,
        case when v_prune then 'select * from pg_temp.recsql_refresh_scored'
             else format(v_scored, 'p.n >= r.min_n') end,
        v_len);

    if v_nestloop is not null then
        perform set_config('enable_nestloop', v_nestloop, true);
        perform set_config('work_mem', v_work_mem, true);
    end if;
    perform recsql._restore_joins(v_joins);
    return v_n;
end
$$;

comment on function recsql.refresh_neighbors(integer, boolean) is
    'Patches or recomputes the neighbour lists of up to max_items changed items (all when null); returns how '
    'many; without wait, 0 at once while pairs are queued or being added';

-- Makes every committed event visible to every query function now.
create function recsql.flush() returns bigint
language plpgsql as $$
declare
    v_n bigint;
begin
    v_n := recsql.fold();
    perform recsql.refresh_neighbors();
    perform recsql.fold_states();  -- main only
    return v_n;
end
$$;

comment on function recsql.flush() is
    'Folds committed events and refreshes the affected neighbour lists; the worker does this continuously';

-- Queues every neighbour list for recomputation (after a settings change, and hourly against drift).
create function recsql.mark_all_neighbors() returns bigint
language sql as $$
    with marked as (
        insert into recsql.neighbor_dirty as d (kind, item_key)
        select u.kind, u.item_key
        from (select p.kind, p.item_a as item_key from recsql.item_pairs p
              union all
              select p.kind, p.item_b from recsql.item_pairs p) u
        group by 1, 2
        on conflict (kind, item_key) do update set partners = null where d.partners is not null
        returning 1
    )
    select count(*) from marked
$$;

comment on function recsql.mark_all_neighbors() is
    'Marks every item with pairs for a whole neighbour-list recompute; returns how many were not marked so yet';

-- Recomputes all derived state from the event log, in the same replay order as incremental folding.
create function recsql.rebuild() returns bigint
language plpgsql as $$
declare
    v_horizon xid8;
    v_n bigint;
    v_cooc_horizon timestamptz;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    perform pg_advisory_xact_lock(recsql._pairs_lock_key());
    v_horizon := recsql._fold_horizon();

    truncate recsql.user_item_events, recsql.item_event_counts, recsql.item_stats, recsql.item_pairs,
             recsql.pair_queue, recsql.neighbor_lists, recsql.neighbor_dirty, recsql.user_windows;
    delete from recsql.event_inbox where xid < v_horizon;
    update recsql.fold_state set windows_key = recsql._windows_key();

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
        perform recsql._save_windows();
    end if;

    perform recsql.refresh_neighbors();
    update recsql.fold_state
    set horizon = greatest(horizon, v_horizon), folded_events = v_n, last_fold_at = now();
    return v_n;
end
$$;

comment on function recsql.rebuild() is 'Recomputes all derived state from recsql.events; returns the number of events replayed';

-- Removes exactly the contribution of a person's events (the ids given) from every derived table,
-- leaving the events themselves: recsql.forget_user() runs it for each model state, then deletes them.
create function recsql._forget_state(p_ids text[]) returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_horizon xid8;
    v_cooc_horizon timestamptz;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    perform pg_advisory_xact_lock(recsql._pairs_lock_key());
    -- Fold first (queued pairs included) so that every visible event of the user below the horizon
    -- is in derived state.
    perform recsql.fold();
    select * into v_settings from recsql.settings;
    select horizon, coalesce(cooc_horizon, '-infinity') into v_horizon, v_cooc_horizon from recsql.fold_state;

    perform recsql._batch_reset();
    insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
    select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
    from recsql.events e
    join recsql.items i on i.item_id = e.item_id
    where e.user_id = any (p_ids) and e.xid < v_horizon;

    perform recsql._apply_pairs(-1, v_cooc_horizon, 'infinity');

    update recsql.item_event_counts c
    set n = c.n - x.n, value_sum = c.value_sum - x.value_sum
    from (select item_key, event_type, sum(n) as n, sum(value_sum) as value_sum
          from recsql.user_item_events where user_id = any (p_ids)
          group by item_key, event_type) x
    where c.item_key = x.item_key and c.event_type = x.event_type;
    delete from recsql.item_event_counts where n <= 0;

    update recsql.item_stats s
    set n_users = s.n_users - x.n_users,
        n_events = s.n_events - x.n_events,
        popularity = s.popularity - x.popularity
    from (select b.item_key, count(distinct b.user_id) as n_users, count(*) as n_events,
                 sum(recsql._popularity(t.weight, b.ts, v_settings.decay_epoch, v_settings.trending_half_life)) as popularity
          from pg_temp.recsql_batch b join recsql.event_types t on t.name = b.event_type
          group by b.item_key) x
    where s.item_key = x.item_key;
    delete from recsql.item_stats where n_events <= 0;

    delete from recsql.user_item_events where user_id = any (p_ids);
    delete from recsql.user_windows where user_id = any (p_ids);
    -- No list may keep a trace of the user.
    perform recsql.refresh_neighbors();
end
$$;

comment on function recsql._forget_state(text[]) is
    'Subtracts the events of the given user ids from every derived table of one model state';

-- Deletes a user's events and removes exactly their contribution from every derived table.
create function recsql.forget_user(p_user_id text) returns bigint
language plpgsql as $$
declare
    v_n bigint;
    v_ids text[];
    v_state record;
begin
    if p_user_id is null then
        raise exception 'forget_user needs a user id' using errcode = '22004';
    end if;
    -- The person is the user id and every anonymous id linked to it.
    v_ids := recsql._user_ids(p_user_id);
    perform recsql._forget_state(v_ids);
    -- Every model's shadow state forgets them too (a state being built waits here, then forgets).
    for v_state in select schema_name from recsql.model_states order by model loop
        execute format('select %I._forget_state($1)', v_state.schema_name) using v_ids;
    end loop;

    perform set_config('recsql.forgetting', 'on', true);
    delete from recsql.events where user_id = any (v_ids);
    get diagnostics v_n = row_count;
    perform set_config('recsql.forgetting', 'off', true);
    delete from recsql.user_aliases where user_id = p_user_id or alias_id = p_user_id;
    delete from recsql.recommendation_log where user_id = any (v_ids);
    return v_n;
end
$$;

comment on function recsql.forget_user(text) is
    'Deletes the user''s events (and those of anonymous ids linked to it), their contribution to all derived '
    'state of every model, the links and the lists served to them, in the caller''s transaction';

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
    perform pg_advisory_xact_lock(recsql._pairs_lock_key());
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
    insert into recsql.neighbor_dirty as d (kind, item_key)
    select l.kind, l.item_key
    from recsql.neighbor_lists l
    where l.refreshed_at < now() - interval '1 day'
    on conflict (kind, item_key) do update set partners = null where d.partners is not null;
    update recsql.fold_state set maintained_at = now();
    perform recsql._maintain_states();  -- main only

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
