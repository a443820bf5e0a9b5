-- Undo 0008. Queued pairs are added first: the old fold() knows no queue.
select recsql.fold();

do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        execute format('select %I.fold()', v_schema);
        execute format('drop function %I.fold(boolean, bigint)', v_schema);
        execute format('drop function %I.fold_pairs(), %I._drain_pair_queue(), %I._merge_pair_delta(integer, bigint),'
                       ' %I._pair_delta(integer, timestamptz, timestamptz), %I._pairs_lock_key()',
                       v_schema, v_schema, v_schema, v_schema, v_schema);
        execute format('drop table %I.pair_queue', v_schema);
    end loop;
end
$$;

drop function recsql.fold(boolean, bigint);

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
    if v_n > 0 then
        -- Wakes the embedding worker. Sent here, once per fold, rather than by the events trigger:
        -- NOTIFY serialises committing transactions, which every writer would then pay for.
        perform pg_notify('recsql_folded', v_n::text);  -- main only
    end if;
    return v_n;
end
$$;

comment on function recsql.fold() is
    'Folds committed events into the derived tables (not the neighbour lists); returns the count';

create or replace function recsql._apply_pairs(p_sign integer, p_from timestamptz, p_to timestamptz) returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_deltas bigint;
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
    )
    -- A pair is stored once, under (smaller key, larger key): both items' lists read it.
    select kind, least(a, b), greatest(a, b), p_sign * count(*)::integer
    from formed
    group by 1, 2, 3;

    get diagnostics v_deltas = row_count;

    if p_sign < 0 or v_deltas > 10000 then
        -- Removals (a listed partner may drop out) and bulk folds (most lists change anyway): every
        -- touched list is recomputed whole.
        insert into recsql.item_pairs as p (kind, item_a, item_b, n)
        select d.kind, d.item_a, d.item_b, d.n
        from pg_temp.recsql_pair_delta d
        order by d.kind, d.item_a, d.item_b
        on conflict (kind, item_a, item_b) do update set n = p.n + excluded.n;

        insert into recsql.neighbor_dirty as x (kind, item_key)
        select d.kind, d.item_a from pg_temp.recsql_pair_delta d
        union
        select d.kind, d.item_b from pg_temp.recsql_pair_delta d
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
            order by d.kind, d.item_a, d.item_b
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
end
$$;

comment on function recsql._apply_pairs(integer, timestamptz, timestamptz) is
    'Counts (or uncounts) the co-occurrence and bought-together pairs formed by the batch events';

create or replace function recsql.refresh_neighbors(max_items integer default null) returns integer
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_n integer;
    v_nestloop text;
    v_work_mem text;
    v_len integer;
    v_prune boolean;
    v_full integer;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
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
    else
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
    else
        truncate pg_temp.recsql_refresh, pg_temp.recsql_refresh_scored;
    end if;

    insert into pg_temp.recsql_refresh_picked (kind, item_key, users, partners)
    select p.kind, p.item_key, coalesce(st.n_users, 0), p.partners
    from (
        select d.kind, d.item_key, d.partners
        from recsql.neighbor_dirty d
        order by d.marked_at, d.kind, d.item_key
        limit refresh_neighbors.max_items
    ) p
    left join recsql.item_stats st on st.item_key = p.item_key;
    get diagnostics v_n = row_count;

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

    insert into recsql.neighbor_lists (kind, item_key, neighbors, scores, together, users)
    select x.kind, x.item_a,
           array_agg(x.item_b order by x.rank),
           array_agg(x.score::real order by x.rank),
           array_agg(x.n order by x.rank),
           r.users
    from (
        select s.kind, s.item_a, s.item_b, s.n, s.score,
               -- Ranked as stored (real), so that a patched list orders ties as a recomputed one.
               row_number() over (partition by s.kind, s.item_a order by s.score::real desc, s.item_b) as rank
        from pg_temp.recsql_refresh_scored s
    ) x
    join pg_temp.recsql_refresh r on r.kind = x.kind and r.item_key = x.item_a
    where x.rank <= v_len
    group by x.kind, x.item_a, r.users;

    if v_nestloop is not null then
        perform set_config('enable_nestloop', v_nestloop, true);
        perform set_config('work_mem', v_work_mem, true);
    end if;
    return v_n;
end
$$;

comment on function recsql.refresh_neighbors(integer) is
    'Patches or recomputes the neighbour lists of up to max_items changed items (all when null); returns how many';

create or replace function recsql.mark_all_neighbors() returns bigint
language sql as $$
    with marked as (
        insert into recsql.neighbor_dirty as d (kind, item_key)
        select p.kind, p.item_a from recsql.item_pairs p
        union
        select p.kind, p.item_b from recsql.item_pairs p
        on conflict (kind, item_key) do update set partners = null where d.partners is not null
        returning 1
    )
    select count(*) from marked
$$;

comment on function recsql.mark_all_neighbors() is
    'Marks every item with pairs for a whole neighbour-list recompute; returns how many were not marked so yet';

create or replace function recsql.rebuild() returns bigint
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

create or replace function recsql._forget_state(p_ids text[]) returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_horizon xid8;
    v_cooc_horizon timestamptz;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    -- Fold first so that every visible event of the user below the horizon is in derived state.
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
    -- No list may keep a trace of the user.
    perform recsql.refresh_neighbors();
end
$$;

comment on function recsql._forget_state(text[]) is
    'Subtracts the events of the given user ids from every derived table of one model state';

create or replace function recsql.maintain() returns table (expired_before timestamptz, pair_rows bigint)
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

create or replace function recsql._state_tables() returns text[]
language sql immutable parallel safe as $$
    select array['settings', 'fold_state', 'event_inbox', 'user_item_events', 'item_event_counts',
                 'item_stats', 'item_pairs', 'neighbor_lists', 'neighbor_dirty']
$$;

comment on function recsql._state_tables() is 'Tables each model state has its own copy of; promotion swaps them';

create or replace function recsql._state_functions() returns text[]
language sql immutable parallel safe as $$
    select array[
        -- folding
        '_batch_resolve_items', '_batch_add_context', '_apply_pairs', '_apply_stats', 'fold',
        'refresh_neighbors', 'flush', 'mark_all_neighbors', 'rebuild', '_forget_state', 'maintain',
        'state_digest',
        -- queries, so that a candidate can serve an online test from its own state
        '_pair_scores', '_user_sources', '_rank', 'recommend', 'session_recommend', '_neighbors',
        '_similar', 'similar_items', 'bought_together', '_trending_score', 'trending', 'explain']
$$;

comment on function recsql._state_functions() is 'Functions each model state has its own copy of, bound to its tables';

create or replace function recsql._rank(p_sources integer[], p_weights double precision[], p_excluded integer[], p_k integer,
                             p_category text, p_in_stock_only boolean)
returns table (item_id text, score double precision, reason text)
language sql stable as $$
    with s as (
        select recsql._query_param('embedding_weight', embedding_weight::text)::double precision as w,
               greatest(2 * p_k, 20) as pool,
               least(p_k, recsql._query_param('new_item_slots', new_item_slots::text)::integer) as new_slots,
               recsql._query_param('new_item_window', new_item_window::text)::interval as new_window,
               recsql._query_param('new_item_min_similarity', new_item_min_similarity::text)::double precision
                   as new_min_similarity
        from recsql.settings
    ), new_items as materialized (
        -- Of the 200 newest items added within new_window, those nothing co-occurs with yet:
        -- scored on their embeddings alone, they may take the last new_slots places of the list.
        -- (Bounded first, filtered after: a catalog that adds many items stays one index range.)
        select n.item_key
        from (select i.item_key, i.hidden_at
              from recsql.items i
              cross join s
              where s.w > 0 and s.new_slots > 0 and i.created_at >= now() - s.new_window
              order by i.created_at desc
              limit 200) n
        where n.hidden_at is null
          and n.item_key <> all (p_excluded)
          and not exists (select 1 from recsql.neighbor_lists l where l.kind = 'v' and l.item_key = n.item_key)
    ), contributions as materialized (
        select ps.item_key, ps.source_key, ps.contribution
        from recsql._pair_scores('v', p_sources, p_weights) ps
        where ps.item_key <> all (p_excluded)
    ), cooc as materialized (
        select c.item_key, sum(c.contribution) as score from contributions c group by c.item_key
    ), emb as materialized (
        select x.item_key, x.similarity
        from s
        cross join lateral recsql._embedding_scores(
            p_sources, p_weights, s.pool,
            array(select c.item_key from (select c.item_key from cooc c order by c.score desc, c.item_key
                                          limit (select pool from s)) c
                  union select n.item_key from new_items n)) x
        where s.w > 0 and x.item_key <> all (p_excluded)
    ), scored as (
        select coalesce(c.item_key, e.item_key) as item_key,
               case when not exists (select 1 from emb) then c.score
                    else (1 - s.w) * coalesce(c.score / nullif((select max(score) from cooc), 0), 0)
                         + s.w * coalesce(e.similarity, 0) end as score,
               c.item_key is null as by_embedding
        from cooc c
        full join emb e on e.item_key = c.item_key
        cross join s
    ), fresh as materialized (
        -- The new items closest to the user's taste, up to new_slots of them.
        select e.item_key, e.similarity as score
        from emb e
        join new_items n on n.item_key = e.item_key
        cross join s
        where e.similarity >= s.new_min_similarity
          and ((p_category is null and not p_in_stock_only)
           or exists (select 1 from recsql.items i
                      where i.item_key = e.item_key
                        and (p_category is null or i.category = p_category)
                        and (not p_in_stock_only or i.in_stock)))
        order by e.similarity desc, e.item_key
        limit (select new_slots from s)
    ), personal as (
        -- Rank on scores alone; the catalog is consulted only to filter, and for the k winners.
        select sc.item_key, sc.score, sc.by_embedding
        from scored sc
        where sc.item_key not in (select h.item_key from recsql.items h where h.hidden_at is not null)
          and ((p_category is null and not p_in_stock_only)
           or exists (select 1 from recsql.items i
                      where i.item_key = sc.item_key
                        and (p_category is null or i.category = p_category)
                        and (not p_in_stock_only or i.in_stock)))
          and sc.item_key not in (select f.item_key from fresh f)
        order by sc.score desc, sc.item_key
        limit p_k - (select count(*) from fresh)
    ), fill as (
        select st.item_key, st.popularity
        from recsql.item_stats st
        join recsql.items i on i.item_key = st.item_key
        where st.popularity > 0
          and i.hidden_at is null
          and (p_category is null or i.category = p_category)
          and (not p_in_stock_only or i.in_stock)
          and st.item_key <> all (p_excluded)
          and st.item_key not in (select item_key from personal)
          and st.item_key not in (select item_key from fresh)
        order by st.popularity desc, st.item_key
        limit p_k
    )
    select r.item_id, r.score, r.reason
    from (
        select i.item_id, p.score,
               coalesce('similar to ' || src.item_id, 'matches your taste') as reason,
               0 as grp, p.score as ord, p.item_key
        from personal p
        join recsql.items i on i.item_key = p.item_key
        left join lateral (
            select c.source_key from contributions c
            where c.item_key = p.item_key
            order by c.contribution desc, c.source_key
            limit 1
        ) top on true
        left join recsql.items src on src.item_key = top.source_key
        union all
        select i.item_id, f.score, 'new, matches your taste', 0, '-infinity'::double precision, f.item_key
        from fresh f join recsql.items i on i.item_key = f.item_key
        union all
        select i.item_id, 0::double precision, 'trending', 1, f.popularity::double precision, f.item_key
        from fill f join recsql.items i on i.item_key = f.item_key
    ) r
    order by r.grp, r.ord desc, r.item_key
    limit p_k
$$;

comment on function recsql._rank(integer[], double precision[], integer[], integer, text, boolean) is
    'Shared ranking of recommend() and session_recommend(): co-occurrence blended with embeddings, then trending fill';

do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        perform recsql._copy_state_functions(v_schema);
    end loop;
end
$$;

drop function recsql.fold_pairs(), recsql._drain_pair_queue(), recsql._merge_pair_delta(integer, bigint),
    recsql._pair_delta(integer, timestamptz, timestamptz), recsql._pairs_lock_key();

drop view recsql.fold_status;

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

comment on function recsql._fold_lock_key() is 'Advisory lock key held by whoever writes derived state';

drop table recsql.pair_queue;
