-- 0017: a merge of a bulk of pairs drops item_pairs' index by item_b, and the first neighbour-list
-- refresh after the bulk builds it again (inserting each new pair into it cost a third of adding
-- the pairs). The user ids of the derived tables (user_item_events, user_windows) compare as bytes
-- (collate "C") instead of by the database's locale: every fold sorts and looks them up, and a
-- libc locale costs a strcoll per comparison for ids that are equal or not the same way under any
-- deterministic collation; recsql.events and the view recsql.user_items keep the database's
-- collation. A bulk fold analyzes item_stats only once its rows grew by a fifth. Live model states
-- get the same columns and new copies of the functions.
-- Frozen: never edit after release.

-- New: item_pairs' index by item_b is dropped for a bulk of pairs and built again after it.
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

create or replace function recsql._state_functions() returns text[]
language sql immutable parallel safe as $$
    select array[
        -- folding
        '_batch_resolve_items', '_windows_key', '_batch_add_context', '_save_windows', '_pairs_lock_key', '_pair_part_lock_key', '_pair_delta',
        '_merge_pair_delta', '_pair_b_index', '_drop_pair_b_index', '_restore_pair_b_index',
        '_apply_pairs', '_drain_pair_queue', '_apply_stats', 'fold', 'fold_pairs', 'refresh_neighbors', 'flush',
        'mark_all_neighbors', 'rebuild', '_forget_state', 'maintain', 'state_digest',
        -- queries, so that a candidate can serve an online test from its own state
        '_pair_scores', '_user_sources', '_rank', 'recommend', 'session_recommend', '_neighbors',
        '_similar', 'similar_items', 'bought_together', '_trending_score', 'trending', 'explain']
$$;

comment on function recsql._state_functions() is 'Functions each model state has its own copy of, bound to its tables';

-- The view reads user_item_events.user_id: dropped while the column changes, then made again,
-- showing the id in the database's collation as before.
drop view recsql.user_items;

alter table recsql.user_windows alter column user_id type text collate "C";
alter table recsql.user_item_events alter column user_id type text collate "C";

do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        execute format('alter table %I.user_windows alter column user_id type text collate "C"', v_schema);
        execute format('alter table %I.user_item_events alter column user_id type text collate "C"', v_schema);
    end loop;
end
$$;

create view recsql.user_items as
select x.user_id collate "default" as user_id,
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
