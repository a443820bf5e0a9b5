-- Undo 0002.

drop view recsql.recommendation_daily;
drop view recsql.recommendation_events;

drop function recsql.identify(text, text);

drop function recsql.track(text, text, text, timestamptz, double precision, text, text, jsonb, uuid);

create function recsql.track(
    user_id text,
    item_id text,
    event_type text,
    ts timestamptz default now(),
    value double precision default null,
    event_id text default null,
    session_id text default null,
    properties jsonb default '{}'
) returns table (id text, seq bigint, duplicate boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_event_id text := coalesce(track.event_id, recsql.new_event_id());
    v_seq bigint;
begin
    insert into recsql.events as e (event_id, user_id, item_id, event_type, value, ts, session_id, properties)
    values (v_event_id, track.user_id, track.item_id, track.event_type, track.value,
            coalesce(track.ts, now()), track.session_id, coalesce(track.properties, '{}'))
    on conflict (event_id) do nothing
    returning e.seq into v_seq;
    if v_seq is null then
        return query select v_event_id, (select x.seq from recsql.events x where x.event_id = v_event_id), true;
    else
        return query select v_event_id, v_seq, false;
    end if;
end
$$;


comment on function recsql.track(text, text, text, timestamptz, double precision, text, text, jsonb) is
    'Records one event idempotently (same event_id twice counts once); returns its id and whether it was a duplicate';

create or replace function recsql._user_sources(p_user_id text)
returns table (item_key integer, item_id text, weight double precision, converted boolean)
language sql stable parallel safe as $$
    with s as (
        select * from recsql.settings
    ), recent as (
        select e.item_id, e.event_type, e.value,
               (row_number() over (order by e.xid desc, e.seq desc) - 1)::integer as rank
        from (
            select e.item_id, e.event_type, e.value, e.xid, e.seq
            from recsql.events e
            where e.user_id = p_user_id
            order by e.xid desc, e.seq desc
            limit (select history_length from s)
        ) e
    ), per_type as (
        select r.item_id, r.event_type, count(*) as n, avg(r.value) as mean_value, min(r.rank) as rank
        from recent r
        group by r.item_id, r.event_type
    ), per_item as (
        select pt.item_id,
               sum(t.weight * ln(1 + pt.n) / ln(2)
                   * case when t.value_max is null then 1 else coalesce(pt.mean_value / t.value_max, 1) end) as strength,
               min(pt.rank) as rank,
               bool_or(t.is_conversion) as converted
        from per_type pt
        join recsql.event_types t on t.name = pt.event_type
        group by pt.item_id
    )
    select i.item_key,
           p.item_id,
           greatest(p.strength, 0) * power(2::double precision, -p.rank / s.history_half_life),
           p.converted
    from per_item p
    cross join s
    left join recsql.items i on i.item_id = p.item_id
$$;


comment on function recsql._user_sources(text) is
    'Weights of the items in the user''s recent history: damped per-type counts times recency';

create or replace function recsql._user_excluded(p_user_id text, p_purchased boolean, p_seen boolean)
returns table (item_key integer)
language sql stable parallel safe as $$
    select x.item_key
    from recsql.user_item_events x
    join recsql.event_types t on t.name = x.event_type
    where x.user_id = p_user_id and (p_seen or (p_purchased and t.is_conversion))
    union
    select s.item_key
    from recsql._user_sources(p_user_id) s
    where s.item_key is not null and (p_seen or (p_purchased and s.converted))
$$;


comment on function recsql._user_excluded(text, boolean, boolean) is
    'Items the user converted on (or interacted with), folded or still in flight';

create or replace function recsql._rank(p_sources integer[], p_weights double precision[], p_excluded integer[], p_k integer,
                             p_category text, p_in_stock_only boolean)
returns table (item_id text, score double precision, reason text)
language sql stable parallel safe as $$
    with contributions as materialized (
        select ps.item_key, ps.source_key, ps.contribution
        from recsql._pair_scores('v', p_sources, p_weights) ps
        where ps.item_key <> all (p_excluded)
    ), personal as (
        -- Rank on scores alone; the catalog is consulted only to filter, and for the k winners.
        select sc.item_key, sc.score
        from (select c.item_key, sum(c.contribution) as score from contributions c group by c.item_key) sc
        where (p_category is null and not p_in_stock_only)
           or exists (select 1 from recsql.items i
                      where i.item_key = sc.item_key
                        and (p_category is null or i.category = p_category)
                        and (not p_in_stock_only or i.in_stock))
        order by sc.score desc, sc.item_key
        limit p_k
    ), fill as (
        select st.item_key, st.popularity
        from recsql.item_stats st
        join recsql.items i on i.item_key = st.item_key
        where st.popularity > 0
          and (p_category is null or i.category = p_category)
          and (not p_in_stock_only or i.in_stock)
          and st.item_key <> all (p_excluded)
          and st.item_key not in (select item_key from personal)
        order by st.popularity desc, st.item_key
        limit p_k
    )
    select r.item_id, r.score, r.reason
    from (
        select i.item_id, p.score, 'similar to ' || src.item_id as reason, 0 as grp, p.score as ord, p.item_key
        from personal p
        join recsql.items i on i.item_key = p.item_key
        cross join lateral (
            select c.source_key from contributions c
            where c.item_key = p.item_key
            order by c.contribution desc, c.source_key
            limit 1
        ) top
        join recsql.items src on src.item_key = top.source_key
        union all
        select i.item_id, 0::double precision, 'trending', 1, f.popularity::double precision, f.item_key
        from fill f join recsql.items i on i.item_key = f.item_key
    ) r
    order by r.grp, r.ord desc, r.item_key
    limit p_k
$$;


comment on function recsql._rank(integer[], double precision[], integer[], integer, text, boolean) is
    'Shared ranking of recommend() and session_recommend(): co-occurrence scores, then trending fill';

create or replace function recsql._neighbors(p_kind "char", p_item_id text, p_k integer)
returns table (item_id text, score double precision, together integer)
language sql stable parallel safe as $$
    select i.item_id, u.score, u.together
    from recsql.items src
    join recsql.neighbor_lists l on l.kind = p_kind and l.item_key = src.item_key
    cross join lateral unnest(l.neighbors, l.scores, l.together) with ordinality as u(neighbor, score, together, pos)
    join recsql.items i on i.item_key = u.neighbor
    where src.item_id = p_item_id
    order by u.pos
    limit recsql._check_k(p_k)
$$;


comment on function recsql._neighbors("char", text, integer) is 'Top of an item''s neighbour list of one kind';

create or replace function recsql.trending(k integer default 10, category text default null)
returns table (item_id text, score double precision)
language sql stable as $$
    select i.item_id, recsql._trending_score(st.popularity)
    from recsql.item_stats st
    join recsql.items i on i.item_key = st.item_key
    where st.popularity > 0 and (trending.category is null or i.category = trending.category)
    order by st.popularity desc, st.item_key
    limit recsql._check_k(trending.k)
$$;


comment on function recsql.trending(integer, text) is 'Trending items (time-decayed popularity), optionally in one category';

create or replace function recsql.forget_user(p_user_id text) returns bigint
language plpgsql as $$
declare
    v_settings recsql.settings;
    v_horizon xid8;
    v_cooc_horizon timestamptz;
    v_n bigint;
begin
    if p_user_id is null then
        raise exception 'forget_user needs a user id' using errcode = '22004';
    end if;
    perform pg_advisory_xact_lock(recsql._fold_lock_key());
    -- Fold first so that every visible event of the user below the horizon is in derived state.
    perform recsql.flush();
    select * into v_settings from recsql.settings;
    select horizon, coalesce(cooc_horizon, '-infinity') into v_horizon, v_cooc_horizon from recsql.fold_state;

    perform recsql._batch_reset();
    insert into pg_temp.recsql_batch (user_id, item_id, item_key, event_type, value, ts, xid, seq)
    select e.user_id, e.item_id, i.item_key, e.event_type, e.value, e.ts, e.xid, e.seq
    from recsql.events e
    join recsql.items i on i.item_id = e.item_id
    where e.user_id = p_user_id and e.xid < v_horizon;

    perform recsql._apply_pairs(-1, v_cooc_horizon, 'infinity');

    update recsql.item_event_counts c
    set n = c.n - x.n, value_sum = c.value_sum - x.value_sum
    from (select item_key, event_type, sum(n) as n, sum(value_sum) as value_sum
          from recsql.user_item_events where user_id = p_user_id
          group by item_key, event_type) x
    where c.item_key = x.item_key and c.event_type = x.event_type;
    delete from recsql.item_event_counts where n <= 0;

    update recsql.item_stats s
    set n_users = s.n_users - 1,
        n_events = s.n_events - x.n_events,
        popularity = s.popularity - x.popularity
    from (select b.item_key, count(*) as n_events,
                 sum(recsql._popularity(t.weight, b.ts, v_settings.decay_epoch, v_settings.trending_half_life)) as popularity
          from pg_temp.recsql_batch b join recsql.event_types t on t.name = b.event_type
          group by b.item_key) x
    where s.item_key = x.item_key;
    delete from recsql.item_stats where n_events <= 0;

    delete from recsql.user_item_events where user_id = p_user_id;

    perform set_config('recsql.forgetting', 'on', true);
    delete from recsql.events where user_id = p_user_id;
    get diagnostics v_n = row_count;
    perform set_config('recsql.forgetting', 'off', true);
    -- No list may keep a trace of the user.
    perform recsql.refresh_neighbors();
    return v_n;
end
$$;


comment on function recsql.forget_user(text) is
    'Deletes the user''s events and their contribution to all derived state, in the caller''s transaction';

drop function recsql._user_ids(text);

drop table recsql.recommendation_log;
drop table recsql.user_aliases;
drop table recsql.api_keys;

alter table recsql.events drop column recommendation_id;
alter table recsql.items drop column hidden_at;
