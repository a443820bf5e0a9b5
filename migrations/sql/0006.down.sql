-- Undo 0006.

create or replace function recsql._apply_pairs(p_sign integer, p_from timestamptz, p_to timestamptz) returns void
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

create or replace function recsql.refresh_neighbors(max_items integer default null) returns integer
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

create or replace function recsql.mark_all_neighbors() returns bigint
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
    insert into recsql.neighbor_dirty (kind, item_key)
    select l.kind, l.item_key
    from recsql.neighbor_lists l
    where l.refreshed_at < now() - interval '1 day'
    on conflict (kind, item_key) do nothing;
    update recsql.fold_state set maintained_at = now();
    perform recsql._maintain_states();  -- main only

    return query select fs.cooc_horizon, (select count(*) from recsql.item_pairs)
                 from recsql.fold_state fs;
end
$$;

comment on function recsql.maintain() is
    'Expires pair formations older than settings.cooc_retention, keeps popularity in range, queues lists older than a day for refresh; run hourly';

create or replace function recsql._create_state(p_model text) returns text
language plpgsql as $$
declare
    v_model recsql.models;
    v_params jsonb;
    v_schema text := recsql._state_schema(p_model);
    v_table text;
    v_def record;
    v_names text;
    v_key text;
    v_fn record;
    v_body text;
begin
    select * into v_model from recsql.models where name = p_model;
    if not found then
        raise exception 'no model "%"', p_model using errcode = '42704', hint = 'recsql models list shows them';
    end if;
    if v_model.status = 'active' then
        raise exception 'model "%" is active: its state is recsql''s own', p_model using errcode = '22023';
    end if;
    if exists (select 1 from recsql.model_states where model = p_model) then
        raise exception 'model "%" already has its state (schema %)', p_model, v_schema using errcode = '42710',
            hint = 'recsql.drop_model_state() removes it.';
    end if;
    if (select count(*) from recsql.model_states) >= 3 then
        raise exception 'at most three model states besides the active one: each costs ingest time and storage'
            using errcode = '54000', hint = 'Drop one with recsql.drop_model_state(model).';
    end if;
    v_params := recsql.check_params(v_model.params);
    -- Events of statements that commit from now on are queued for the new state (the trigger reads
    -- this table); the lock waits for statements already inserting, so none is missed.
    lock table recsql.events in share mode;
    insert into recsql.model_states (model, schema_name, weights) values (p_model, v_schema, v_params -> 'weights');

    execute format('create schema %I', v_schema);
    execute format('comment on schema %I is %L', v_schema, format('recsql: derived state of model %s', p_model));
    foreach v_table in array recsql._state_tables() loop
        execute format('create table %I.%I (like recsql.%I including defaults including constraints'
                       ' including generated including storage including comments)', v_schema, v_table, v_table);
        -- Keys and indexes keep their names, so that a swapped-in table is indistinguishable.
        for v_def in
            select c.conname, pg_get_constraintdef(c.oid) as def
            from pg_constraint c
            where c.conrelid = format('recsql.%I', v_table)::regclass and c.contype in ('p', 'u')
        loop
            execute format('alter table %I.%I add constraint %I %s', v_schema, v_table, v_def.conname, v_def.def);
        end loop;
        for v_def in
            select pg_get_indexdef(i.indexrelid) as def
            from pg_index i
            where i.indrelid = format('recsql.%I', v_table)::regclass
              and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid)
        loop
            execute replace(v_def.def, format(' ON recsql.%s ', v_table),
                            format(' ON %I.%I ', v_schema, v_table));
        end loop;
    end loop;
    -- Settings: the active ones, then the model's parameters; the fold state: where the active
    -- state's pair expiry stands (the rebuild replays the same window of formations).
    execute format('insert into %I.settings select * from recsql.settings', v_schema);
    for v_key in select m.key from recsql.model_parameters m where m.key <> 'weights' loop
        execute format('update %I.settings set %I = ($1 ->> %L)::%s', v_schema, v_key, v_key,
                       (select format_type(a.atttypid, a.atttypmod) from pg_attribute a
                        where a.attrelid = 'recsql.settings'::regclass and a.attname = v_key))
        using v_params;
    end loop;
    execute format('insert into %I.fold_state (cooc_horizon) select cooc_horizon from recsql.fold_state', v_schema);
    -- Event types: the shared vocabulary with this state's weights.
    execute format(
        'create view %I.event_types as select %s from recsql.event_types t'
        ' cross join recsql.model_states ms where ms.schema_name = %L',
        v_schema,
        (select string_agg(case when a.attname = 'weight'
                                then 'coalesce((ms.weights ->> t.name)::double precision, t.weight) as weight'
                                else format('t.%I', a.attname) end, ', ' order by a.attnum)
         from pg_attribute a
         where a.attrelid = 'recsql.event_types'::regclass and a.attnum > 0 and not a.attisdropped),
        v_schema);
    execute format('create function %I._fold_lock_key() returns bigint language sql immutable parallel safe'
                   ' as %L', v_schema, format('select %s::bigint', hashtextextended(v_schema, 0)));
    -- Functions: recsql's own, with references to the state's tables and functions moved into the
    -- schema; lines marked "main only" (the loops over model states) are left out.
    v_names := array_to_string(recsql._state_tables() || array['event_types', '_fold_lock_key']
                               || recsql._state_functions(), '|');
    for v_fn in
        select p.oid from pg_proc p
        where p.pronamespace = 'recsql'::regnamespace and p.proname = any (recsql._state_functions())
    loop
        v_body := regexp_replace(pg_get_functiondef(v_fn.oid), '\mrecsql\.(' || v_names || ')\M',
                                 quote_ident(v_schema) || '.\1', 'g');
        v_body := regexp_replace(v_body, '\n[^\n]*-- main only[^\n]*', '', 'g');
        execute v_body;
    end loop;
    return v_schema;
end
$$;

comment on function recsql._create_state(text) is
    'Creates and registers a model''s empty shadow schema (tables, weights view, function copies)';

do $$
declare
    v_schema text;
begin
    for v_schema in select schema_name from recsql.model_states order by model loop
        perform recsql._copy_state_functions(v_schema);
        execute format('alter table %I.neighbor_dirty drop column partners', v_schema);
        execute format('alter table %I.neighbor_lists drop column users', v_schema);
    end loop;
end
$$;

drop function recsql._copy_state_functions(text);

comment on column recsql.neighbor_lists.refreshed_at is null;

alter table recsql.neighbor_dirty drop column partners;

alter table recsql.neighbor_lists drop column users;
