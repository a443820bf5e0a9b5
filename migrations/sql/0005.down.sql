-- Undo 0005.

drop function recsql._maintain_states();

drop function recsql._swap_state(text);

drop function recsql.fold_states(integer);

drop function recsql.drop_model_state(text);

drop function recsql._create_state(text);

drop function recsql._state_schema(text);

drop function recsql._state_functions();

drop function recsql._state_tables();

drop procedure recsql.build_model_state(text);

create or replace function recsql.events_after_insert() returns trigger
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
        perform pg_notify('recsql_folded', v_n::text);
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
    return v_n;
end
$$;

comment on function recsql.flush() is
    'Folds committed events and refreshes the affected neighbour lists; the worker does this continuously';

create or replace function recsql.forget_user(p_user_id text) returns bigint
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_horizon xid8;
    v_cooc_horizon timestamptz;
    v_n bigint;
    v_ids text[];
begin
    if p_user_id is null then
        raise exception 'forget_user needs a user id' using errcode = '22004';
    end if;
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    -- Fold first so that every visible event of the user below the horizon is in derived state.
    perform recsql.flush();
    select * into v_settings from recsql.settings;
    select horizon, coalesce(cooc_horizon, '-infinity') into v_horizon, v_cooc_horizon from recsql.fold_state;
    -- The person is the user id and every anonymous id linked to it.
    v_ids := recsql._user_ids(p_user_id);

    perform recsql._batch_reset();
    insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
    select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
    from recsql.events e
    join recsql.items i on i.item_id = e.item_id
    where e.user_id = any (v_ids) and e.xid < v_horizon;

    perform recsql._apply_pairs(-1, v_cooc_horizon, 'infinity');

    update recsql.item_event_counts c
    set n = c.n - x.n, value_sum = c.value_sum - x.value_sum
    from (select item_key, event_type, sum(n) as n, sum(value_sum) as value_sum
          from recsql.user_item_events where user_id = any (v_ids)
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

    delete from recsql.user_item_events where user_id = any (v_ids);

    perform set_config('recsql.forgetting', 'on', true);
    delete from recsql.events where user_id = any (v_ids);
    get diagnostics v_n = row_count;
    perform set_config('recsql.forgetting', 'off', true);
    delete from recsql.user_aliases where user_id = p_user_id or alias_id = p_user_id;
    delete from recsql.recommendation_log where user_id = any (v_ids);
    -- No list may keep a trace of the user.
    perform recsql.refresh_neighbors();
    return v_n;
end
$$;

comment on function recsql.forget_user(text) is
    'Deletes the user''s events (and those of anonymous ids linked to it), their contribution to all derived '
    'state, the links and the lists served to them, in the caller''s transaction';

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
               greatest(2 * p_k, 20) as pool
        from recsql.settings
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
            array(select c.item_key from cooc c order by c.score desc, c.item_key limit (select pool from s))) x
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
        order by sc.score desc, sc.item_key
        limit p_k
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
        'embedding_weight', s.embedding_weight)
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
        embedding_weight = (p_params ->> 'embedding_weight')::double precision;
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
    v_state_changed := exists (
        select 1 from recsql.model_parameters m
        where m.shapes_state and (v_before -> m.key) is distinct from (v_params -> m.key));
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
    v_how := recsql.apply_params(v_model.params);
    delete from recsql.model_traffic;  -- a test compares candidates with the active model: it ends here
    update recsql.models set status = 'retired', retired_at = now() where status = 'active';
    update recsql.models set status = 'active', promoted_at = now(), retired_at = null where name = p_name;
    return v_how;
end
$$;

comment on function recsql.promote_model(text) is
    'Puts a model in force and makes it active in one transaction (rebuilding state its parameters shape)';

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
    select string_agg(m.key, ', ' order by m.key) into v_differs
    from recsql.model_parameters m
    where m.shapes_state and (v_model.params -> m.key) is distinct from (v_active -> m.key);
    if v_differs is not null then
        raise exception '% changes % (derived state), so it cannot be served beside the active model', p_model, v_differs
            using errcode = '22023',
                  hint = 'Evaluate it offline (recsql evaluate) and promote it; online tests cover query-time parameters.';
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

drop function recsql._forget_state(text[]);

drop function recsql._shaping_changes(jsonb, jsonb);

drop table recsql.model_states;

update recsql.models set params = params - 'new_item_slots' - 'new_item_window' - 'new_item_min_similarity';

delete from recsql.model_parameters where key in ('new_item_slots', 'new_item_window', 'new_item_min_similarity');

drop index recsql.items_created_idx;

alter table recsql.settings drop column new_item_slots, drop column new_item_window, drop column new_item_min_similarity;
