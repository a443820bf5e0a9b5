-- 0002: serving over HTTP: API keys, anonymous ids linked to users, the log of served lists and
-- attribution, hidden items. Frozen: never edit after release.

alter table recsql.items add column hidden_at timestamptz;
-- Small in practice; the queries anti-join it to drop hidden items.
create index items_hidden_idx on recsql.items (item_key) where hidden_at is not null;
comment on column recsql.items.hidden_at is 'Set when the item was removed from the shop: it is never recommended';

alter table recsql.events add column recommendation_id uuid;
create index events_recommendation_idx on recsql.events (recommendation_id) where recommendation_id is not null;
comment on column recsql.events.recommendation_id is
    'The served list (recsql.recommendation_log) this event responds to, for click and conversion attribution';


create table recsql.api_keys (
    key_id text constraint api_keys_pkey primary key
        constraint api_keys_key_id_check check (key_id ~ '^[a-z0-9]{8,32}$'),
    name text not null default ''
        constraint api_keys_name_check check (length(name) <= 200),
    scope text not null constraint api_keys_scope_check check (scope in ('track', 'read', 'admin')),
    secret_hash bytea not null constraint api_keys_secret_hash_check check (length(secret_hash) = 32),
    allowed_origins text[] not null default '{}',
    rate_limit integer constraint api_keys_rate_limit_check check (rate_limit > 0),
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);

comment on table recsql.api_keys is
    'HTTP API keys: only a SHA-256 of the secret is stored; scopes track < read < admin';
comment on column recsql.api_keys.allowed_origins is 'Browser origins a track key may be used from (CORS)';
comment on column recsql.api_keys.rate_limit is 'Requests per second per server process (null: the server default)';

create table recsql.user_aliases (
    alias_id text constraint user_aliases_pkey primary key
        constraint user_aliases_alias_id_check check (alias_id <> '' and length(alias_id) <= 256 and alias_id !~ '[[:cntrl:]]'),
    user_id text not null
        constraint user_aliases_user_id_check check (user_id <> '' and length(user_id) <= 256 and user_id !~ '[[:cntrl:]]'),
    linked_at timestamptz not null default now(),
    constraint user_aliases_distinct_check check (alias_id <> user_id)
);

create index user_aliases_user_idx on recsql.user_aliases (user_id);

comment on table recsql.user_aliases is
    'Anonymous ids linked to a signed-in user by recsql.identify(): their events count as the user''s';

create table recsql.recommendation_log (
    recommendation_id uuid constraint recommendation_log_pkey primary key,
    served_at timestamptz not null default now(),
    surface text not null constraint recommendation_log_surface_check
        check (surface in ('user', 'similar', 'bought_together', 'trending', 'session')),
    user_id text,
    anchor_item_ids text[] not null default '{}',
    item_ids text[] not null,
    scores real[] not null,
    model text,
    constraint recommendation_log_lengths_check check (cardinality(item_ids) = cardinality(scores))
);

create index recommendation_log_served_idx on recsql.recommendation_log (served_at);
create index recommendation_log_user_idx on recsql.recommendation_log (user_id) where user_id is not null;

comment on table recsql.recommendation_log is
    'Every list served over HTTP, items in position order; events carrying its id are attributed to it';
comment on column recsql.recommendation_log.anchor_item_ids is 'The item(s) the list was asked for (similar, bought together, session)';
comment on column recsql.recommendation_log.model is 'Model version that produced the list (null: the built-in model)';

drop function recsql.track(text, text, text, timestamptz, double precision, text, text, jsonb);

create function recsql.track(
    user_id text,
    item_id text,
    event_type text,
    ts timestamptz default now(),
    value double precision default null,
    event_id text default null,
    session_id text default null,
    properties jsonb default '{}',
    recommendation_id uuid default null
) returns table (id text, seq bigint, duplicate boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_event_id text := coalesce(track.event_id, recsql.new_event_id());
    v_seq bigint;
begin
    insert into recsql.events as e (event_id, user_id, item_id, event_type, value, ts, session_id, properties,
                                    recommendation_id)
    values (v_event_id, track.user_id, track.item_id, track.event_type, track.value,
            coalesce(track.ts, now()), track.session_id, coalesce(track.properties, '{}'), track.recommendation_id)
    on conflict (event_id) do nothing
    returning e.seq into v_seq;
    if v_seq is null then
        return query select v_event_id, (select x.seq from recsql.events x where x.event_id = v_event_id), true;
    else
        return query select v_event_id, v_seq, false;
    end if;
end
$$;


comment on function recsql.track(text, text, text, timestamptz, double precision, text, text, jsonb, uuid) is
    'Records one event idempotently (same event_id twice counts once); returns its id and whether it was a duplicate';

create function recsql._user_ids(p_user_id text) returns text[]
language sql stable parallel safe as $$
    select array[p_user_id] || coalesce(array(select a.alias_id from recsql.user_aliases a
                                              where a.user_id = p_user_id order by a.alias_id), '{}')
$$;


comment on function recsql._user_ids(text) is 'The user id and the anonymous ids linked to it by recsql.identify()';

create or replace function recsql._user_sources(p_user_id text)
returns table (item_key integer, item_id text, weight double precision, converted boolean)
language sql stable parallel safe as $$
    with s as (
        select * from recsql.settings
    ), recent as (
        select e.item_id, e.event_type, e.value,
               (row_number() over (order by e.xid desc, e.seq desc) - 1)::integer as rank
        from (
            -- One ordered index scan per id (the user and any linked anonymous ids), then merged.
            select e.item_id, e.event_type, e.value, e.xid, e.seq
            from unnest(recsql._user_ids(p_user_id)) as ids(id)
            cross join lateral (
                select x.item_id, x.event_type, x.value, x.xid, x.seq
                from recsql.events x
                where x.user_id = ids.id
                order by x.xid desc, x.seq desc
                limit (select history_length from s)
            ) e
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
    where x.user_id = any (recsql._user_ids(p_user_id)) and (p_seen or (p_purchased and t.is_conversion))
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
    where src.item_id = p_item_id and i.hidden_at is null
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
    where st.popularity > 0 and i.hidden_at is null
      and (trending.category is null or i.category = trending.category)
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

-- Serving over HTTP: linking anonymous ids to users, and reporting on the lists that were served.

-- Links an anonymous id to a signed-in user so its history counts for the user's recommendations.
create function recsql.identify(anonymous_id text, user_id text) returns text
language plpgsql as $$
#variable_conflict use_variable
declare
    v_user text;
begin
    if anonymous_id is null or user_id is null then
        raise exception 'identify needs an anonymous id and a user id' using errcode = '22004';
    end if;
    if anonymous_id = user_id then
        return user_id;  -- already the same person under the same id
    end if;
    -- Link to the person behind user_id, so links never chain.
    select a.user_id into v_user from recsql.user_aliases a where a.alias_id = identify.user_id;
    v_user := coalesce(v_user, user_id);
    if v_user = anonymous_id then
        return v_user;
    end if;
    -- Ids already linked to the anonymous id move with it.
    update recsql.user_aliases a set user_id = v_user, linked_at = now()
    where a.user_id = anonymous_id and a.alias_id <> v_user;
    delete from recsql.user_aliases a where a.user_id = anonymous_id;
    insert into recsql.user_aliases as a (alias_id, user_id) values (anonymous_id, v_user)
    on conflict (alias_id) do update set user_id = excluded.user_id, linked_at = now();
    return v_user;
end
$$;

comment on function recsql.identify(text, text) is
    'Links an anonymous id to a user: its events count as the user''s; returns the user id it was linked to';

-- Every event that carries the id of a served list, with the item's position in that list.
create view recsql.recommendation_events as
select l.recommendation_id,
       l.surface,
       l.model,
       l.served_at,
       e.user_id,
       e.item_id,
       e.event_type,
       t.is_conversion,
       array_position(l.item_ids, e.item_id) as position,
       coalesce(e.value, i.price) as revenue,
       e.ts
from recsql.events e
join recsql.recommendation_log l on l.recommendation_id = e.recommendation_id
join recsql.event_types t on t.name = e.event_type
left join recsql.items i on i.item_id = e.item_id;

comment on view recsql.recommendation_events is
    'Events attributed to a served list (position is 1-based, null when the item was not on it); '
    'revenue is the event value or else the item price';

-- Click-through and conversion per day, surface and model: what a dashboard plots.
create view recsql.recommendation_daily as
select (l.served_at at time zone 'UTC')::date as day,
       l.surface,
       coalesce(l.model, 'default') as model,
       count(*) as lists_served,
       count(*) filter (where a.clicks > 0) as lists_clicked,
       count(*) filter (where a.conversions > 0) as lists_converted,
       sum(a.clicks)::bigint as clicks,
       sum(a.conversions)::bigint as conversions,
       sum(a.revenue) as revenue,
       (count(*) filter (where a.clicks > 0))::double precision / count(*) as ctr,
       (count(*) filter (where a.conversions > 0))::double precision / count(*) as conversion_rate
from recsql.recommendation_log l
cross join lateral (
    select count(*) filter (where e.event_type = 'click') as clicks,
           count(*) filter (where e.is_conversion) as conversions,
           coalesce(sum(e.revenue) filter (where e.is_conversion), 0) as revenue
    from recsql.recommendation_events e
    where e.recommendation_id = l.recommendation_id
) a
group by 1, 2, 3;

comment on view recsql.recommendation_daily is
    'Per UTC day, surface and model: lists served, share clicked (ctr), share converted, revenue';
