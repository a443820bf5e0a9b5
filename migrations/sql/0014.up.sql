-- 0014: each user's windows (the items of their last pair-forming events and conversions) are kept
-- in recsql.user_windows, so that a fold reads one row per user instead of each user's last events
-- from the log and their items. A cache of the log: a user without a row (new, or emptied when the
-- window settings change, recorded in fold_state.windows_key) is read from the log as before.
-- Also: the fold's and refresh's scratch tables are truncated only when the transaction used them
-- already (they start every transaction empty), which was most of a small round's fixed cost.
-- Live model states get the table, the column and new copies of the functions.
-- Frozen: never edit after release.

alter table recsql.fold_state add column windows_key text;

comment on column recsql.fold_state.windows_key is
    'The window settings recsql.user_windows was built with: when they change, it is emptied (see recsql._windows_key)';

create table recsql.user_windows (
    user_id text constraint user_windows_pkey primary key,
    items integer[] not null,
    conversions integer[] not null
);

comment on table recsql.user_windows is
    'Per user, the items of the last cooc_window pair-forming events and of the last purchase_window '
    'conversions, oldest first: the windows the next event pairs with. Derived from the log; a user '
    'with no row has their windows read from recsql.events';

create function recsql._windows_key() returns text
language sql stable as $$
    select format('%s/%s/%s/%s', s.cooc_window, s.purchase_window,
                  (select string_agg(t.name, ',' order by t.name) from recsql.event_types t where t.forms_pairs),
                  (select string_agg(t.name, ',' order by t.name) from recsql.event_types t where t.is_conversion))
    from recsql.settings s
$$;

comment on function recsql._windows_key() is
    'The window lengths and pair-forming and conversion types that recsql.user_windows is valid for';

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

create or replace function recsql._batch_reset() returns void
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

create or replace function recsql._batch_add_context() returns void
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

create or replace function recsql._pair_delta(p_sign integer, p_from timestamptz, p_to timestamptz) returns bigint
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

create or replace function recsql._apply_stats() returns void
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

    -- Items gaining a user: any (user, item) with no earlier event.
    delete from pg_temp.recsql_new_users;  -- empty after _batch_reset(), as above
    insert into pg_temp.recsql_new_users (item_key, n)
    select u.item_key, count(*)
    from (select distinct b.user_id, b.item_key from pg_temp.recsql_batch b) u
    where not exists (
        select 1 from recsql.user_item_events x where x.user_id = u.user_id and x.item_key = u.item_key)
    group by u.item_key;

    insert into recsql.user_item_events as x (user_id, item_key, event_type, n, value_sum, first_ts, last_ts)
    select b.user_id, b.item_key, b.event_type, count(*), coalesce(sum(b.value::numeric), 0), min(b.ts), max(b.ts)
    from pg_temp.recsql_batch b
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

create or replace function recsql.fold(defer_pairs boolean default false, max_events bigint default null) returns bigint
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
            -- Two halves by the parity of item_a, each a row even when empty: fold_status counts
            -- the events of each half, and they are pending until both halves are added.
            insert into recsql.pair_queue (events, part, kinds, items_a, items_b, n)
            select v_n, h.part, coalesce(d.kinds, '{}'), coalesce(d.items_a, '{}'), coalesce(d.items_b, '{}'),
                   coalesce(d.n, '{}')
            from (values (0::smallint), (1::smallint)) h(part)
            left join (select (x.item_a % 2)::smallint as part, array_agg(x.kind) as kinds,
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
        -- their last analyze (item_pairs: see _merge_pair_delta).
        analyze recsql.item_stats;
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

create or replace function recsql.refresh_neighbors(max_items integer default null, wait boolean default true)
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
begin
    -- Shared: refreshers run side by side on disjoint lists (picked with skip locked below), while
    -- whoever changes pairs or marks lists holds the lock exclusively (or one half's lock).
    if wait then
        perform pg_advisory_xact_lock_shared(recsql._pairs_lock_key());
        perform pg_advisory_xact_lock_shared(recsql._pair_part_lock_key(0));
        perform pg_advisory_xact_lock_shared(recsql._pair_part_lock_key(1));
    elsif exists (select 1 from recsql.pair_queue)
          or not (pg_try_advisory_xact_lock_shared(recsql._pairs_lock_key())
                  and pg_try_advisory_xact_lock_shared(recsql._pair_part_lock_key(0))
                  and pg_try_advisory_xact_lock_shared(recsql._pair_part_lock_key(1))) then
        return 0;
    end if;
    if not exists (select 1 from recsql.neighbor_dirty) then
        return 0;  -- idle: leave the scratch tables alone
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
    if v_n <= 1000 then
        -- A round of a few lists (steady traffic: several a second): hashing every item's statistics
        -- and neighbour list took 5-10 ms per statement, most of such a round.
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

    -- An item's pairs: those it is item_a of, and those it is item_b of.
    insert into pg_temp.recsql_refresh_scored (kind, item_a, item_b, n, score)
    select p.kind, p.item_a, p.item_b, p.n, recsql._pair_score(p.n, r.users, sb.n_users, v_settings.similarity)
    from pg_temp.recsql_refresh r
    join recsql.item_pairs p on p.kind = r.kind and p.item_a = r.item_key
    join recsql.item_stats sb on sb.item_key = p.item_b
    where p.n >= r.min_n
    union all
    select p.kind, p.item_b, p.item_a, p.n, recsql._pair_score(p.n, r.users, sa.n_users, v_settings.similarity)
    from pg_temp.recsql_refresh r
    join recsql.item_pairs p on p.kind = r.kind and p.item_b = r.item_key
    join recsql.item_stats sa on sa.item_key = p.item_a
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
        where r.full_scan and p.n >= v_settings.min_support
        union all
        select p.kind, p.item_b, p.item_a, p.n, recsql._pair_score(p.n, r.users, sa.n_users, v_settings.similarity)
        from pg_temp.recsql_refresh r
        join recsql.item_pairs p on p.kind = r.kind and p.item_b = r.item_key
        join recsql.item_stats sa on sa.item_key = p.item_a
        where r.full_scan and p.n >= v_settings.min_support;
    end if;

    delete from recsql.neighbor_dirty d
    using pg_temp.recsql_refresh r
    where d.kind = r.kind and d.item_key = r.item_key;

    delete from recsql.neighbor_lists l
    using pg_temp.recsql_refresh r
    where l.kind = r.kind and l.item_key = r.item_key;

    -- Each item's pairs gathered by hashing, then its best v_len sorted apart: many small sorts
    -- instead of one sort of every scored pair (a bulk refresh scores millions). Ranked as stored
    -- (real), so that a patched list orders ties as a recomputed one.
    insert into recsql.neighbor_lists (kind, item_key, neighbors, scores, together, users)
    select g.kind, g.item_a, top.neighbors, top.scores, top.together, r.users
    from (
        select s.kind, s.item_a, array_agg(s.item_b) as bs, array_agg(s.score::real) as ss, array_agg(s.n) as ns
        from pg_temp.recsql_refresh_scored s
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
            limit v_len
        ) c
    ) top;

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

create or replace function recsql.rebuild() returns bigint
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

create or replace function recsql._forget_state(p_ids text[]) returns void
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

create or replace function recsql._state_tables() returns text[]
language sql immutable parallel safe as $$
    select array['settings', 'fold_state', 'event_inbox', 'user_item_events', 'item_event_counts',
                 'item_stats', 'item_pairs', 'pair_queue', 'neighbor_lists', 'neighbor_dirty', 'user_windows']
$$;

comment on function recsql._state_tables() is 'Tables each model state has its own copy of; promotion swaps them';

create or replace function recsql._state_functions() returns text[]
language sql immutable parallel safe as $$
    select array[
        -- folding
        '_batch_resolve_items', '_windows_key', '_batch_add_context', '_save_windows', '_pairs_lock_key', '_pair_part_lock_key', '_pair_delta',
        '_merge_pair_delta',
        '_apply_pairs', '_drain_pair_queue', '_apply_stats', 'fold', 'fold_pairs', 'refresh_neighbors', 'flush',
        'mark_all_neighbors', 'rebuild', '_forget_state', 'maintain', 'state_digest',
        -- queries, so that a candidate can serve an online test from its own state
        '_pair_scores', '_user_sources', '_rank', 'recommend', 'session_recommend', '_neighbors',
        '_similar', 'similar_items', 'bought_together', '_trending_score', 'trending', 'explain']
$$;

comment on function recsql._state_functions() is 'Functions each model state has its own copy of, bound to its tables';

-- Live model states: the table, the column, and their copies of the functions.
do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        execute format('alter table %I.fold_state add column windows_key text', v_schema);
        execute format('create table %I.user_windows (like recsql.user_windows including defaults'
                       ' including constraints including storage including comments)', v_schema);
        execute format('alter table %I.user_windows add constraint user_windows_pkey primary key (user_id)',
                       v_schema);
        perform recsql._copy_state_functions(v_schema);
    end loop;
end
$$;
