-- 0005: shadow state for model versions (build a candidate's derived state beside the active one,
-- fed by the same events, swapped in by promotion and kept for rollback), and new-item places in
-- personalised lists (cold start). Frozen: never edit after release.

alter table recsql.settings
    add column new_item_slots integer not null default 1
        constraint settings_new_item_slots_check check (new_item_slots between 0 and 10),
    add column new_item_window interval not null default '14 days'
        constraint settings_new_item_window_check check (new_item_window >= interval '0'),
    add column new_item_min_similarity double precision not null default 0.3
        constraint settings_new_item_min_similarity_check check (new_item_min_similarity between -1 and 1);

comment on column recsql.settings.new_item_slots is
    'Places of a personalised list (the last ones) open to new items nothing co-occurs with yet, ranked by embedding similarity';
comment on column recsql.settings.new_item_window is
    'Items created this recently, without a co-occurrence list, may take the new-item places';
comment on column recsql.settings.new_item_min_similarity is
    'A new item takes a place only when its embedding similarity to the user''s taste is at least this';

create index items_created_idx on recsql.items (created_at);

insert into recsql.model_parameters (key, kind, shapes_state, description) values
    ('new_item_slots', 'integer', false, 'last places of a list open to new items without co-occurrence (0..10)'),
    ('new_item_window', 'interval', false, 'how recently an item was added to count as new, e.g. "14 days"'),
    ('new_item_min_similarity', 'number', false, 'least embedding similarity to the taste for a new item (-1..1)');

-- Versions created before these parameters existed ran with their defaults.
update recsql.models
set params = params || '{"new_item_slots": 1, "new_item_window": "14 days", "new_item_min_similarity": 0.3}'::jsonb
where not params ? 'new_item_slots';

create table recsql.model_states (
    model text constraint model_states_pkey primary key
        constraint model_states_model_fkey references recsql.models (name) on update cascade,
    schema_name text not null constraint model_states_schema_name_key unique,
    weights jsonb not null,
    status text not null default 'building'
        constraint model_states_status_check check (status in ('building', 'live')),
    created_at timestamptz not null default now(),
    built_at timestamptz,
    build_seconds double precision,
    built_events bigint
);

comment on table recsql.model_states is
    'Shadow state of model versions other than the active one: their schema, event-type weights and build status';

create function recsql._forget_state(p_ids text[]) returns void
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

create function recsql._shaping_changes(p_from jsonb, p_to jsonb) returns text
language sql stable as $$
    select string_agg(m.key, ', ' order by m.key)
    from recsql.model_parameters m
    where m.shapes_state and (p_from -> m.key) is distinct from (p_to -> m.key)
$$;

comment on function recsql._shaping_changes(jsonb, jsonb) is
    'State-shaping parameters that differ between two params documents, or null';

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

comment on function recsql.events_after_insert() is
    'Rejects unknown types, future timestamps and out-of-range values for the whole statement; queues it for folding';

create or replace function recsql.fold() returns bigint
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

create or replace function recsql.flush() returns bigint
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

create or replace function recsql.forget_user(p_user_id text) returns bigint
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

create or replace function recsql.current_params() returns jsonb
language sql stable as $$
    select jsonb_build_object(
        'weights', (select jsonb_object_agg(t.name, t.weight order by t.name) from recsql.event_types t),
        'cooc_window', s.cooc_window,
        'purchase_window', s.purchase_window,
        'trending_half_life', s.trending_half_life::text,
        'min_support', s.min_support,
        'neighbors_per_item', s.neighbors_per_item,
        'similarity', s.similarity,
        'history_length', s.history_length,
        'history_half_life', s.history_half_life,
        'embedding_weight', s.embedding_weight,
        'new_item_slots', s.new_item_slots,
        'new_item_window', s.new_item_window::text,
        'new_item_min_similarity', s.new_item_min_similarity)
    from recsql.settings s
$$;

comment on function recsql.current_params() is 'The parameters in force (settings and event-type weights) as a params document';

create or replace function recsql._apply_params_to(p_params jsonb, p_keep boolean) returns void
language plpgsql as $$
begin
    update recsql.settings set
        cooc_window = (p_params ->> 'cooc_window')::integer,
        purchase_window = (p_params ->> 'purchase_window')::integer,
        trending_half_life = (p_params ->> 'trending_half_life')::interval,
        min_support = (p_params ->> 'min_support')::integer,
        neighbors_per_item = (p_params ->> 'neighbors_per_item')::integer,
        similarity = p_params ->> 'similarity',
        history_length = (p_params ->> 'history_length')::integer,
        history_half_life = (p_params ->> 'history_half_life')::double precision,
        embedding_weight = (p_params ->> 'embedding_weight')::double precision,
        new_item_slots = (p_params ->> 'new_item_slots')::integer,
        new_item_window = (p_params ->> 'new_item_window')::interval,
        new_item_min_similarity = (p_params ->> 'new_item_min_similarity')::double precision;
    update recsql.event_types t set weight = (w.value::text)::double precision
    from jsonb_each(p_params -> 'weights') w
    where t.name = w.key and t.weight is distinct from (w.value::text)::double precision;
    if not p_keep then
        raise exception using errcode = 'P0004', message = 'dry run';
    end if;
exception when assert_failure then
    return;  -- the dry run's own exit: every change above is undone
end
$$;

comment on function recsql._apply_params_to(jsonb, boolean) is
    'Writes parameters into settings and event_types (p_keep = false: check them against the constraints only)';

create or replace function recsql.apply_params(p_params jsonb) returns text
language plpgsql as $$
declare
    v_before jsonb := recsql.current_params();
    v_params jsonb := recsql.check_params(p_params, v_before);
    v_state_changed boolean;
begin
    v_state_changed := recsql._shaping_changes(v_before, v_params) is not null;
    perform recsql._apply_params_to(v_params, true);
    if v_state_changed then
        perform recsql.rebuild();
        return 'rebuilt';
    end if;
    return 'applied';
end
$$;

comment on function recsql.apply_params(jsonb) is
    'Puts parameters in force; rebuilds derived state when a state-shaping one changed. Returns applied or rebuilt';

create or replace function recsql.promote_model(p_name text) returns text
language plpgsql as $$
declare
    v_model recsql.models;
    v_active recsql.models;
    v_state recsql.model_states;
    v_how text;
begin
    -- One promotion at a time; readers are not blocked by this lock.
    lock table recsql.models in share row exclusive mode;
    select * into v_model from recsql.models where name = p_name;
    if not found then
        raise exception 'no model "%"', p_name using errcode = '42704',
            hint = 'recsql models list shows them';
    end if;
    if v_model.status = 'active' then
        return 'already active';
    end if;
    select * into v_state from recsql.model_states where model = p_name;
    if v_state.status = 'building' then
        raise exception 'the state of model "%" is still being built', p_name using errcode = '55000',
            hint = 'Promote it when recsql.build_model_state() has finished.';
    end if;
    delete from recsql.model_traffic;  -- a test compares candidates with the active model: it ends here
    select * into v_active from recsql.models where status = 'active';
    if v_state.schema_name is not null then
        -- The candidate's own state becomes the active one; the replaced state stays in the shadow
        -- schema, live, as the retired model's (a rollback swaps it back).
        perform recsql._swap_state(v_state.schema_name);
        perform recsql._apply_params_to(recsql.check_params(v_model.params), true);
        update recsql.model_states
        set model = v_active.name, weights = recsql.check_params(v_active.params) -> 'weights',
            built_at = now(), build_seconds = null, built_events = null
        where schema_name = v_state.schema_name;
        v_how := 'swapped';
    else
        v_how := recsql.apply_params(v_model.params);
    end if;
    update recsql.models set status = 'retired', retired_at = now() where status = 'active';
    update recsql.models set status = 'active', promoted_at = now(), retired_at = null where name = p_name;
    -- Only the model just replaced keeps a state for rollback: older retired states stop costing ingest.
    perform recsql.drop_model_state(st.model)
    from recsql.model_states st join recsql.models m on m.name = st.model
    where m.status = 'retired' and m.name <> v_active.name;
    return v_how;
end
$$;

comment on function recsql.promote_model(text) is
    'Puts a model in force and makes it active in one transaction (swapping in its shadow state, or rebuilding)';

create or replace function recsql.set_traffic(p_model text, p_share double precision) returns void
language plpgsql as $$
declare
    v_model recsql.models;
    v_active jsonb;
    v_differs text;
begin
    lock table recsql.model_traffic in share row exclusive mode;
    if p_share is null or p_share < 0 or p_share >= 1 then
        raise exception 'share must be at least 0 and below 1, got %', p_share using errcode = '22023';
    end if;
    if p_share = 0 then
        delete from recsql.model_traffic where model = p_model;
        return;
    end if;
    select * into v_model from recsql.models where name = p_model;
    if not found or v_model.status <> 'candidate' then
        raise exception 'only a candidate model can take traffic; % is %', p_model, coalesce(v_model.status, 'unknown')
            using errcode = '22023';
    end if;
    select params into v_active from recsql.models where status = 'active';
    v_differs := recsql._shaping_changes(v_active, v_model.params);
    if v_differs is not null
       and not exists (select 1 from recsql.model_states st where st.model = p_model and st.status = 'live') then
        raise exception '% changes % (derived state), so it needs its own state to be served beside the active model',
                p_model, v_differs
            using errcode = '22023',
                  hint = format('Build it first: CALL recsql.build_model_state(%L) (recsql models build %s).', p_model, p_model);
    end if;
    insert into recsql.model_traffic (model, share) values (p_model, p_share)
    on conflict (model) do update set share = excluded.share;
    if (select count(*) from recsql.model_traffic) > 2 then
        raise exception 'at most two candidates take traffic at a time' using errcode = '22023';
    end if;
    if (select sum(share) from recsql.model_traffic) >= 1 then
        raise exception 'candidate shares add up to %, leaving nothing for the active model',
            (select sum(share) from recsql.model_traffic) using errcode = '22023';
    end if;
end
$$;

comment on function recsql.set_traffic(text, double precision) is
    'Gives a candidate a share of users for an online test (0 ends it); at most two, shares below 1 in all';

-- The tables a shadow schema has its own copy of (and that promotion swaps), and the functions it
-- has its own copy of. Everything else (events, items, embeddings, keys, logs) is shared.
create function recsql._state_tables() returns text[]
language sql immutable parallel safe as $$
    select array['settings', 'fold_state', 'event_inbox', 'user_item_events', 'item_event_counts',
                 'item_stats', 'item_pairs', 'neighbor_lists', 'neighbor_dirty']
$$;

comment on function recsql._state_tables() is 'Tables each model state has its own copy of; promotion swaps them';

create function recsql._state_functions() returns text[]
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

-- The schema of a model's state: a stable name no model name can break.
create function recsql._state_schema(p_model text) returns text
language sql immutable parallel safe as $$
    select 'recsql_state_' || substr(md5(p_model), 1, 12)
$$;

comment on function recsql._state_schema(text) is 'Name of the shadow schema holding a model''s state';

-- Creates a model's shadow schema, empty and registered (events are queued for it from the
-- commit on); recsql.build_model_state() fills it.
create function recsql._create_state(p_model text) returns text
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

-- Builds a model's state from the event log, then keeps it live. A procedure: the schema is
-- created and registered in one transaction (live events queue for it from then on), and filled
-- from the log in a second, so the active model's folding never waits for the build.
create procedure recsql.build_model_state(p_model text)
language plpgsql as $$
declare
    v_schema text;
    v_started timestamptz;
    v_n bigint;
begin
    v_schema := recsql._create_state(p_model);
    commit;
    v_started := clock_timestamp();
    execute format('select %I.rebuild()', v_schema) into v_n;
    update recsql.model_states
    set status = 'live', built_at = now(),
        build_seconds = extract(epoch from clock_timestamp() - v_started), built_events = v_n
    where model = p_model;
    commit;
end
$$;

comment on procedure recsql.build_model_state(text) is
    'Builds a model''s shadow state from the event log (CALL it outside a transaction block); it stays live';

-- Removes a model's shadow state.
create function recsql.drop_model_state(p_model text) returns boolean
language plpgsql as $$
declare
    v_schema text;
begin
    delete from recsql.model_traffic t where t.model = p_model;
    delete from recsql.model_states where model = p_model returning schema_name into v_schema;
    if v_schema is null then
        return false;
    end if;
    execute format('drop schema %I cascade', v_schema);
    return true;
end
$$;

comment on function recsql.drop_model_state(text) is 'Drops a model''s shadow state (and ends its online test); false when it had none';

-- Folds every live shadow state a little, as the folder does for the active one; a state being
-- built (or folded by another session) is skipped. Returns the events folded.
create function recsql.fold_states(max_lists integer default null) returns bigint
language plpgsql as $$
declare
    v_state record;
    v_n bigint := 0;
    v_folded bigint;
    v_locked boolean;
begin
    for v_state in select schema_name from recsql.model_states where status = 'live' order by model loop
        execute format('select pg_try_advisory_xact_lock(%I._fold_lock_key())', v_state.schema_name) into v_locked;
        continue when not v_locked;
        execute format('select %I.fold()', v_state.schema_name) into v_folded;
        execute format('select %I.refresh_neighbors($1)', v_state.schema_name) using max_lists;
        v_n := v_n + v_folded;
    end loop;
    return v_n;
end
$$;

comment on function recsql.fold_states(integer) is
    'Folds each live shadow state and refreshes up to max_lists of its neighbour lists; returns the events folded';

-- recsql.maintain() for each live shadow state (expiry of old pair formations, popularity range).
create function recsql._maintain_states() returns void
language plpgsql as $$
declare
    v_state record;
    v_locked boolean;
begin
    for v_state in select schema_name from recsql.model_states where status = 'live' order by model loop
        execute format('select pg_try_advisory_xact_lock(%I._fold_lock_key())', v_state.schema_name) into v_locked;
        continue when not v_locked;
        execute format('select count(*) from %I.maintain()', v_state.schema_name);
    end loop;
end
$$;

comment on function recsql._maintain_states() is 'Runs maintain() in every live shadow state that is not busy';

-- Swaps the active state with a model's shadow state in the caller's transaction: the tables
-- change schemas (readers of the old ones wait for the commit, then read the new ones), views
-- over them are re-pointed, and the shadow schema keeps the replaced state for a rollback.
create function recsql._swap_state(p_schema text) returns void
language plpgsql
-- View definitions are read and re-created fully qualified.
set search_path = pg_catalog
as $$
declare
    v_table text;
    v_views text[][];
    v_view text[];
    v_keep text;
begin
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    execute format('select pg_advisory_xact_lock(%I._fold_lock_key())', p_schema);
    -- Both states fold everything committed, so the swap loses no queued work and the new state
    -- is as fresh as the old.
    perform recsql.fold();
    execute format('select %I.flush()', p_schema);
    -- Views bind to tables, not names: remember every view reading a swapped table.
    select coalesce(array_agg(array[format('%I.%I', vn.nspname, v.relname), pg_get_viewdef(v.oid)]), '{}')
    into v_views
    from (select distinct r.ev_class as oid
          from pg_depend d
          join pg_rewrite r on r.oid = d.objid
          where d.classid = 'pg_rewrite'::regclass
            and d.refclassid = 'pg_class'::regclass
            and d.refobjid in (select format('recsql.%I', t)::regclass from unnest(recsql._state_tables()) t)
            and r.ev_class not in (select format('recsql.%I', t)::regclass from unnest(recsql._state_tables()) t)) x
    join pg_class v on v.oid = x.oid and v.relkind = 'v'
    join pg_namespace vn on vn.oid = v.relnamespace;
    -- Settings that are not model parameters stay as the operator set them (the decay epoch goes
    -- with the popularity it is the reference of).
    select string_agg(format('%1$I = o.%1$I', a.attname), ', ') into v_keep
    from pg_attribute a
    where a.attrelid = 'recsql.settings'::regclass and a.attnum > 0 and not a.attisdropped
      and a.attname not in ('id', 'decay_epoch')
      and a.attname not in (select key from recsql.model_parameters);
    if v_keep is not null then
        execute format('update %I.settings n set %s from recsql.settings o', p_schema, v_keep);
    end if;
    execute 'create schema recsql_swap';
    foreach v_table in array recsql._state_tables() loop
        execute format('alter table recsql.%I set schema recsql_swap', v_table);
        execute format('alter table %I.%I set schema recsql', p_schema, v_table);
        execute format('alter table recsql_swap.%I set schema %I', v_table, p_schema);
    end loop;
    execute 'drop schema recsql_swap';
    foreach v_view slice 1 in array v_views loop
        execute format('create or replace view %s as %s', v_view[1], v_view[2]);
    end loop;
end
$$;

comment on function recsql._swap_state(text) is
    'Exchanges the active derived tables with those of a shadow schema, in the caller''s transaction';
