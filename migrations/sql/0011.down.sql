-- 0011 down: item_pairs' 0010 keys and the 0010 definitions of the same functions.
-- Frozen: never edit after release.
alter table recsql.item_pairs
    drop constraint item_pairs_pkey,
    add constraint item_pairs_pkey primary key (kind, item_a, item_b);
drop index recsql.item_pairs_b_idx;
create index item_pairs_b_idx on recsql.item_pairs (kind, item_b);

create or replace function recsql.events_before_insert() returns trigger
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

create or replace function recsql.events_after_insert() returns trigger
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_bad record;
    v_range record;
    v_schema text;
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

    select pg_current_xact_id() as xid, min(seq) as first_seq, max(seq) as last_seq, count(*) as n
    into v_range
    from new_events;
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

create or replace function recsql._fold_horizon() returns xid8
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

create or replace function recsql._batch_add_context() returns void
language plpgsql as $$
declare
    v_settings recsql.settings;
begin
    select * into v_settings from recsql.settings;

    insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq, ctx)
    with firsts as (
        -- Grouped by user id bytes (collate "C"): the same groups as any deterministic collation, at
        -- the cost of memcmp instead of strcoll.
        select distinct on (b.user_id collate "C") b.user_id, b.xid, b.seq
        from pg_temp.recsql_batch b
        where not b.ctx
        order by b.user_id collate "C", b.xid, b.seq
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

create or replace function recsql._merge_pair_delta(p_sign integer, p_deltas bigint) returns void
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
        order by d.kind, d.item_a, d.item_b
        on conflict (kind, item_a, item_b) do update set n = p.n + excluded.n;

        -- Distinct by hashing (group by), not by sorting every delta twice (union).
        insert into recsql.neighbor_dirty as x (kind, item_key)
        select u.kind, u.item_key
        from (select d.kind, d.item_a as item_key from pg_temp.recsql_pair_delta d
              union all
              select d.kind, d.item_b from pg_temp.recsql_pair_delta d) u
        group by 1, 2
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

    -- A bulk merge changes item_pairs faster than autovacuum re-samples it; fresh statistics keep
    -- the next merges and refreshes on good plans. Only once it changed by a fifth since its last
    -- analyze: re-sampling millions of pairs every chunk is not free.
    if p_deltas > 100000 and (select n_mod_since_analyze > 0.2 * greatest(n_live_tup, 1000)
                              from pg_stat_user_tables where relid = 'recsql.item_pairs'::regclass) then
        analyze recsql.item_pairs;
    end if;
end
$$;

drop function recsql._promise_no_events();
drop function recsql._no_events_lock_key();

-- Live model states: the same keys on their item_pairs, and their copies of _batch_add_context and
-- _merge_pair_delta.
do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        execute format('alter table %I.item_pairs drop constraint item_pairs_pkey, '
                       'add constraint item_pairs_pkey primary key (kind, item_a, item_b)', v_schema);
        execute format('drop index %I.item_pairs_b_idx', v_schema);
        execute format('create index item_pairs_b_idx on %I.item_pairs (kind, item_b)', v_schema);
        perform recsql._copy_state_functions(v_schema);
    end loop;
end
$$;
