-- 0016: a bulk refresh of neighbour lists (no pruning floors) scores each item's pairs inside the
-- statement that writes the lists, instead of storing millions of scored pairs in a scratch table
-- and reading them back; the three statements that read scored pairs share one text. A fold's
-- queued pairs come in four parts (item_a modulo 4) instead of two halves, so that the worker's
-- two lanes share the last fold's pairs evenly. Live model states get new copies of the functions
-- and the new check on their queue.
-- Frozen: never edit after release.

create or replace function recsql._pair_part_lock_key(p_part integer) returns bigint
language sql immutable parallel safe as $$ select recsql._fold_lock_key() # (8 + p_part) $$;

comment on function recsql._pair_part_lock_key(integer) is
    'Advisory lock key held by whoever adds one part of the queued pairs (0 to 3)';

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

create or replace function recsql.fold_pairs(part integer default null, wait boolean default true) returns bigint
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
    v_scored text;
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

-- Four parts of queued pairs instead of two halves, here and in every model state.
alter table recsql.pair_queue
    drop constraint pair_queue_part_check,
    add constraint pair_queue_part_check check (part between 0 and 3);

comment on column recsql.pair_queue.part is
    'Which part of the fold''s pairs the row holds (item_a % 4): recsql.fold_pairs(part) adds one part. '
    'Only a split of the work: a row may hold any pairs';

comment on column recsql.pair_queue.events is 'Events of the fold whose pairs the row holds (each part counts them all)';

do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        execute format('alter table %I.pair_queue drop constraint pair_queue_part_check,'
                       ' add constraint pair_queue_part_check check (part between 0 and 3)', v_schema);
    end loop;
end
$$;

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
